"""95% intervals for ``rlaif eval``, one method per kind of number (pure functions, numpy only).

* **Rates** (a share of yes/no verdicts, e.g. harmless): the Clopper-Pearson interval
  (Clopper and Pearson 1934), the inversion of the two one-sided binomial tests:
  ``lo = Beta(a/2; k, n-k+1)``, ``hi = Beta(1-a/2; k+1, n-k)``. Its coverage is at least 95%
  for every true rate and every n (it is "exact": conservative by construction); at 8 of 8 it
  is [63.1%, 100%], never a point.
* **Win rates** (1 for a win, 0 for a loss, 1/2 for a tie): the Clopper-Pearson interval at
  the count of wins plus half the ties. Without ties it is the interval above; a tie is the
  average of a win and a loss, which makes the count less spread than a binomial one, and
  the exact coverage over every (win, tie, loss) outcome stays at or above 95% (enumerated in
  the tests at n = 5, 8, 20 and in benchmarks/results/eval-intervals.md at n = 100).
* **Means of values in a known range** (the soft win rate P(policy better), in [0, 1]; the
  paired difference of two rates, in [-1, 1]): the betting interval
  of Waudby-Smith and Ramdas (2024, "Estimating means of bounded random variables by
  betting", JRSS-B; hedged capital with the predictable plug-in bets of their sec. 4 and 5).
  For a candidate mean m the capital ``K+(m) = prod_i (1 + l_i (x_i - m))`` is a
  nonnegative martingale when m is the true mean, so by Markov's inequality
  ``P(K+(mu) >= 2/a) <= a/2``: the lower bound is the smallest m the bets do not reject, the
  upper bound likewise with ``1 - l_i (x_i - m)``. The guarantee holds for *every*
  distribution on the range at every n (ties, many values at one point, n = 5), which no
  bootstrap and no normal approximation gives. The bets depend on the order of the values;
  here the capital is averaged over ``N_ORDERS`` seeded random orders of the sorted values (for
  prompts drawn independently, a random order of the sorted values is distributed as the sample
  itself, and an average of such capitals is still one, so the guarantee stands), which makes
  the interval a function of the values alone, not of the prompts' order. Why not
  Clopper-Pearson here too: these values concentrate (a weak judge's P near 1/2; most prompts
  get the same verdict from both models, a difference of 0), and the bets grow with that
  concentration, where an interval with a binomial's variance stays as wide as for 0/1 values.
* **Means of unbounded values** (reward scores and their paired difference, the KL
  log-ratios): the bootstrap-t (studentized bootstrap; Efron and Tibshirani 1993, ch. 12.5):
  the prompts are resampled ``n_boot`` times and ``t* = (mean* - mean) / se*`` gives the
  quantiles, ``[mean - t*_{97.5%} se, mean - t*_{2.5%} se]``. No method can guarantee
  coverage for unbounded values at a fixed n (Bahadur and Savage 1956); among the usual ones
  this one corrects for skewness (a KL log-ratio is right-skewed) and, unlike the percentile
  bootstrap, widens at small n (measured in benchmarks/results/eval-intervals.md).

For the judge's tests and audit (:mod:`rlaif.pipeline.audit`): :func:`mean_interval`, the mean of
paired differences d_i (one per item: the judge's log-odds with a probe minus without it, on the
same item) with Student's t interval ``mean +- t_{1 - a/2, n - 1} * sd / sqrt(n)``. Pairing removes
what items share, so only the probe's effect and the judge's noise are left in d_i; its coverage
on judge-like data is checked by simulation in tests/test_audit.py. Pass rates use the Wilson
interval of :mod:`rlaif.stats_intervals`.

The beta quantiles come from a regularised incomplete beta function (continued fraction,
``math.lgamma``) and bisection, so nothing beyond numpy is needed.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

LEVEL = 0.95
N_ORDERS = 16
"""Seeded random orders the betting capital is averaged over."""
BET_TRUNCATION = 0.75
"""c in the bets' cap ``c / m`` (``c / (1 - m)``): never bet more than 75% of the capital."""


def _empty(n: int = 0, mean: float | None = None) -> dict[str, Any]:
    return {"n": n, "mean": mean, "lo": None, "hi": None}


# ------------------------------------------------------------------ Clopper-Pearson


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (a, b > 0, 0 <= x <= 1)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # the continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry otherwise
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """The q-quantile of Beta(a, b): the x with I_x(a, b) = q, by bisection (to about 1e-12)."""
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return 0.5 * (lo + hi)


def clopper_pearson(k: float, n: int, level: float = LEVEL) -> dict[str, Any]:
    """Share ``k / n`` of yes verdicts with its Clopper-Pearson interval.

    ``k`` may be fractional (a win rate's tie counts as half a win): the beta quantiles are
    then taken at the fractional count (see :func:`rlaif.pipeline.eval_stats.win_rate`).
    Returns ``{"n", "mean", "lo", "hi"}``; with n = 0 every number is None.
    """
    if not 0 <= k <= n:
        raise ValueError(f"clopper_pearson needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return _empty()
    a = 1.0 - level
    lo = 0.0 if k == 0 else beta_ppf(a / 2, k, n - k + 1)
    hi = 1.0 if k == n else beta_ppf(1 - a / 2, k + 1, n - k)
    return {"n": n, "mean": k / n, "lo": lo, "hi": hi}


# ------------------------------------------------------------------ betting (bounded means)


def _bets(x: np.ndarray, n: int, level: float) -> np.ndarray:
    """The predictable plug-in bets |l_i| of Waudby-Smith and Ramdas (2024, eq. 26 with their
    fixed-n choice): ``sqrt(2 log(2/a) / (n var_{i-1}))``, with running estimates that start
    at mean 1/2 and variance 1/4 and use only the values before i. ``x``: ``(orders, n)``."""
    csum = np.cumsum(x, axis=1)
    t = np.arange(1, n + 1)
    mu = (0.5 + csum) / (t + 1)                       # mu_t, from x_1..x_t
    var = (0.25 + np.cumsum((x - mu) ** 2, axis=1)) / (t + 1)
    prev = np.concatenate([np.full((x.shape[0], 1), 0.25), var[:, :-1]], axis=1)   # var_{i-1}
    return np.sqrt(2.0 * math.log(2.0 / (1.0 - level)) / (n * prev))


def _log_capital(x: np.ndarray, bets: np.ndarray, m: float, sign: int) -> float:
    """log of the capital averaged over the orders: ``mean_k prod_i (1 + sign l_i (x_i - m))``,
    with each bet capped at ``c / m`` (sign +1) or ``c / (1 - m)`` (sign -1) so that no factor
    can reach 0."""
    cap = BET_TRUNCATION / max(m if sign > 0 else 1.0 - m, 1e-12)
    lam = np.minimum(bets, cap)
    logk = np.log1p(sign * lam * (x - m)).sum(axis=1)
    top = logk.max()
    return float(top + math.log(np.exp(logk - top).mean()))


def betting_interval(values: Sequence[float], low: float = 0.0, high: float = 1.0, seed: int = 0,
                     level: float = LEVEL) -> dict[str, Any]:
    """Mean of ``values`` (each in [low, high]) with its betting interval (see the module docstring).

    Returns ``{"n", "mean", "lo", "hi"}``; with no values every number is None.
    """
    x = np.asarray(list(values), dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return _empty()
    if not np.all(np.isfinite(x)):
        raise ValueError("betting_interval: values must be finite")
    if high <= low or x.min() < low - 1e-12 or x.max() > high + 1e-12:
        raise ValueError(f"betting_interval: values must lie in [{low}, {high}]")
    z = np.clip((x - low) / (high - low), 0.0, 1.0)
    mean = float(z.mean())
    rng = np.random.default_rng(seed)
    z = np.sort(z)[np.argsort(rng.random((N_ORDERS, n)), axis=1)]   # random orders of the sorted values
    bets = _bets(z, n, level)
    threshold = math.log(2.0 / (1.0 - level))       # each side at a/2: reject m when capital >= 2/a

    def bound(sign: int) -> float:
        # K+(m) does not rise with m and K+(1) <= 1, K-(m) does not fall and K-(0) <= 1: bisect
        # for the end of the set of m that the bets do not reject
        rejected, kept = (0.0, 1.0) if sign > 0 else (1.0, 0.0)
        if _log_capital(z, bets, rejected, sign) < threshold:
            return rejected
        for _ in range(50):
            mid = 0.5 * (rejected + kept)
            if _log_capital(z, bets, mid, sign) >= threshold:
                rejected = mid
            else:
                kept = mid
        return kept

    lo, hi = bound(+1), bound(-1)
    scale = high - low
    return {"n": n, "mean": float(x.mean()), "lo": low + scale * lo, "hi": low + scale * hi}


# ------------------------------------------------------------------ bootstrap-t (unbounded means)


def bootstrap_t(values: Sequence[float], seed: int, n_boot: int = 2000, level: float = LEVEL) -> dict[str, Any]:
    """Mean of ``values`` (one per prompt) with its bootstrap-t interval.

    Returns ``{"n", "mean", "lo", "hi"}``. With fewer than 2 values there is no interval (None);
    values that do not vary give the point [mean, mean]; a bound that most resamples cannot
    give (more than the tail's share of them have no spread, as with 2 or 3 values) is None.
    """
    x = np.asarray(list(values), dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return _empty()
    if not np.all(np.isfinite(x)):
        raise ValueError("bootstrap_t: values must be finite")
    mean = float(x.mean())
    if n == 1:
        return _empty(1, mean)
    se = float(x.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        return {"n": n, "mean": mean, "lo": mean, "hi": mean}
    rng = np.random.default_rng(seed)
    t = np.empty(n_boot)
    step = max(1, 2_000_000 // n)  # resamples per block: bounded memory for long runs
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        xs = x[rng.integers(0, n, size=(k, n))]
        m, s = xs.mean(axis=1), xs.std(axis=1, ddof=1) / math.sqrt(n)
        with np.errstate(divide="ignore", invalid="ignore"):
            # a resample without spread: t* is +-inf (0 when its mean is the sample's)
            t[start : start + k] = np.where(s > 0, (m - mean) / np.where(s > 0, s, 1.0), np.sign(m - mean) * np.inf)
    tail = (1.0 - level) / 2.0
    t = np.nan_to_num(t, nan=0.0, posinf=np.inf, neginf=-np.inf)
    q_lo, q_hi = np.quantile(t, [tail, 1.0 - tail], method="inverted_cdf")
    lo = mean - q_hi * se if np.isfinite(q_hi) else None
    hi = mean - q_lo * se if np.isfinite(q_lo) else None
    return {"n": n, "mean": mean, "lo": None if lo is None else float(lo), "hi": None if hi is None else float(hi)}


# ------------------------------------------------------------------ Student's t (the judge audit)


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom: 1 - I_{df / (df + t^2)}(df / 2, 1 / 2) / 2 for t >= 0."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on :func:`t_cdf`, to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def mean_interval(xs: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """Mean of ``xs`` with Student's t interval: ``{"n", "mean", "sd", "lo", "hi"}``.

    With one value the interval is unknown (None); with values that are all equal it is that
    value (sd 0).
    """
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "lo": None, "hi": None}
    mean = math.fsum(xs) / n
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "lo": None, "hi": None}
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half}
