"""The 95% intervals of ``rlaif eval`` (rlaif/pipeline/intervals.py, eval_stats.py), each checked
without its own code: exact coverage by summing binomial and multinomial probabilities over
every outcome, closed forms and textbook values, exact enumeration of the bootstrap, and
seeded simulations for what cannot be enumerated."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from rlaif.pipeline.eval_stats import bounded_mean, mean, paired_difference, rate, win_rate
from rlaif.pipeline.intervals import beta_ppf, betainc, betting_interval, bootstrap_t, clopper_pearson


def binom_pmf(k: int, n: int, p: float) -> float:
    return math.comb(n, k) * p**k * (1 - p) ** (n - k)


def trinomial_outcomes(n: int):
    return [(i, j, n - i - j) for i in range(n + 1) for j in range(n + 1 - i)]


def trinomial_pmf(counts, probs) -> float:
    n = sum(counts)
    out = math.factorial(n)
    for c, p in zip(counts, probs):
        if c and p == 0:
            return 0.0
        out *= p**c / math.factorial(c)
    return out


GRID = [(a, b) for a in (0.0, 0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98) for b in (0.0, 0.02, 0.2, 0.5, 0.9) if a + b <= 1.0]
"""(P(top value), P(middle value)) of three-point distributions, edges included."""


# ------------------------------------------------------------------ the incomplete beta function


def test_betainc_against_binomial_sums_and_closed_forms():
    # I_p(k, n - k + 1) = P(Binomial(n, p) >= k): an identity checked with plain binomial sums
    for n in (1, 5, 8, 20, 100):
        for k in range(1, n + 1, max(1, n // 7)):
            for p in (0.001, 0.02, 0.3, 0.5, 0.77, 0.98):
                tail = math.fsum(binom_pmf(j, n, p) for j in range(k, n + 1))
                assert betainc(k, n - k + 1, p) == pytest.approx(tail, rel=1e-9, abs=1e-14)
    for x in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert betainc(1, 1, x) == pytest.approx(x, abs=1e-14)
        assert betainc(3.5, 1, x) == pytest.approx(x**3.5, abs=1e-14)
        assert betainc(2.5, 4.0, x) == pytest.approx(1 - betainc(4.0, 2.5, 1 - x), abs=1e-13)
    # a fractional case against Simpson's rule on the beta density
    a, b, x = 2.5, 3.5, 0.37
    grid = np.linspace(0.0, x, 20001)
    dens = grid ** (a - 1) * (1 - grid) ** (b - 1) * math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b))
    simpson = (x / 20000 / 3) * (dens[0] + dens[-1] + 4 * dens[1:-1:2].sum() + 2 * dens[2:-1:2].sum())
    assert betainc(a, b, x) == pytest.approx(simpson, rel=1e-8)
    assert betainc(a, b, beta_ppf(0.025, a, b)) == pytest.approx(0.025, abs=1e-11)


# ------------------------------------------------------------------ rates: Clopper-Pearson


def test_clopper_pearson_closed_forms_and_textbook_values():
    # all successes / none: the bounds have closed forms (a/2)^(1/n)
    assert clopper_pearson(8, 8) == pytest.approx({"n": 8, "mean": 1.0, "lo": 0.025 ** (1 / 8), "hi": 1.0}, abs=1e-10)
    assert clopper_pearson(0, 3) == pytest.approx({"n": 3, "mean": 0.0, "lo": 0.0, "hi": 1 - 0.025 ** (1 / 3)}, abs=1e-10)
    assert clopper_pearson(8, 8)["lo"] == pytest.approx(0.6306, abs=1e-4)    # the 8 of 8: never [100%, 100%]
    assert clopper_pearson(0, 3)["hi"] == pytest.approx(0.7076, abs=1e-4)
    # Clopper and Pearson's tables / any statistics package: 2 of 10 -> [0.0252, 0.5561]
    ci = clopper_pearson(2, 10)
    assert (round(ci["lo"], 4), round(ci["hi"], 4)) == (0.0252, 0.5561)
    assert rate([True] * 8) == clopper_pearson(8, 8) and rate([]) == {"n": 0, "mean": None, "lo": None, "hi": None}
    with pytest.raises(ValueError):
        clopper_pearson(4, 3)


@pytest.mark.parametrize("n", [5, 8, 20, 100])
def test_clopper_pearson_coverage_is_at_least_95_percent(n):
    """Exact coverage: the probability, summed over every count k, that the interval of k holds
    the true rate. At least 95% at every n and rate (Wilson, for contrast, is not)."""
    cis = [clopper_pearson(k, n) for k in range(n + 1)]
    z = 1.959963984540054
    for p in (0.02, 0.5, 0.98):
        cover = math.fsum(binom_pmf(k, n, p) for k, ci in enumerate(cis) if ci["lo"] <= p <= ci["hi"])
        assert cover >= 0.95, (n, p, cover)
        wilson = 0.0
        for k in range(n + 1):
            ph = k / n
            mid, half = (ph + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / (1 + z * z / n)
            wilson += binom_pmf(k, n, p) * (mid - half <= p <= mid + half)
        if (n, p) == (8, 0.02):
            assert wilson < 0.86  # why the rates do not use Wilson's interval


# ------------------------------------------------------------------ win rates: ties count half


@pytest.mark.parametrize("n", [5, 8, 20])
def test_win_rate_exact_coverage_over_every_win_tie_loss_outcome(n):
    """Every (wins, ties, losses) outcome of n prompts, weighted by its multinomial probability:
    the interval of wins + ties/2 holds the true win rate P(win) + P(tie)/2 at least 95% of the
    time, for distributions from no ties to mostly ties."""
    outcomes = trinomial_outcomes(n)
    cis = {o: win_rate([1.0] * o[0] + [0.5] * o[1] + [0.0] * o[2]) for o in outcomes}
    for pw, pt in GRID:
        mu = pw + pt / 2
        cover = math.fsum(trinomial_pmf(o, (pw, pt, 1 - pw - pt)) for o in outcomes if cis[o]["lo"] - 1e-12 <= mu <= cis[o]["hi"] + 1e-12)
        assert cover >= 0.95, (n, pw, pt, cover)
    # no ties: exactly the rates' interval
    assert cis[(n - 2, 0, 2)] == clopper_pearson(n - 2, n)
    with pytest.raises(ValueError, match="0, 0.5 or 1"):
        win_rate([0.7])


# ------------------------------------------------------------------ bounded means: betting


@pytest.mark.parametrize("n", [5, 8, 20])
def test_betting_interval_exact_coverage_on_paired_differences(n):
    """The paired difference of two rates: each prompt gives -1, 0 or 1. Every outcome of n
    prompts (the interval depends only on the counts), weighted by its probability: coverage
    of the true mean difference at least 95%."""
    outcomes = trinomial_outcomes(n)
    cis = {o: paired_difference([1.0] * o[0] + [0.0] * o[1] + [0.0] * o[2], [0.0] * o[0] + [0.0] * o[1] + [1.0] * o[2],
                                seed=3, bounds=(0.0, 1.0)) for o in outcomes}
    for p_up, p_same in GRID:
        mu = p_up - (1 - p_up - p_same)
        cover = math.fsum(trinomial_pmf(o, (p_up, p_same, 1 - p_up - p_same)) for o in outcomes
                          if cis[o]["lo"] - 1e-12 <= mu <= cis[o]["hi"] + 1e-12)
        assert cover >= 0.95, (n, p_up, p_same, cover)


def test_betting_interval_covers_continuous_values_by_simulation():
    """Values anywhere in [0, 1] (a soft win rate): seeded draws from a U-shaped, a concentrated
    and a skewed distribution at 8 and 30 prompts; the interval holds the true mean in at least
    93% of 150 draws (its guarantee is 95%; the margin is the simulation's own error)."""
    rng = np.random.default_rng(0)
    dists = {"beta(0.5, 0.5)": (lambda k: rng.beta(0.5, 0.5, k), 0.5),
             "near one half": (lambda k: np.clip(rng.normal(0.497, 0.01, k), 0, 1), 0.497),
             "beta(5, 1)": (lambda k: rng.beta(5, 1, k), 5 / 6)}
    for name, (draw, mu) in dists.items():
        for n in (8, 30):
            covered = 0
            for r in range(150):
                ci = bounded_mean(draw(n), 0.0, 1.0, seed=r)
                covered += ci["lo"] <= mu <= ci["hi"]
            assert covered / 150 >= 0.93, (name, n, covered)


def test_betting_interval_is_never_a_point_and_ignores_the_order():
    ci = betting_interval([0.5] * 8)
    assert ci["lo"] < 0.5 < ci["hi"]
    ci = betting_interval([1.0] * 8)
    assert ci["lo"] < 0.7 and ci["hi"] == 1.0
    x = list(np.random.default_rng(1).random(25))
    assert betting_interval(x, seed=4) == betting_interval(sorted(x), seed=4) == betting_interval(x[::-1], seed=4)
    assert betting_interval([0.0, 2.0, 1.0], low=0.0, high=2.0)["mean"] == 1.0
    assert betting_interval([]) == {"n": 0, "mean": None, "lo": None, "hi": None}
    with pytest.raises(ValueError):
        betting_interval([1.5])


# ------------------------------------------------------------------ unbounded means: bootstrap-t


def test_bootstrap_t_matches_the_exact_bootstrap_distribution():
    """For 5 values every resample can be enumerated (5^5 equally likely); the sampled interval
    must sit on the exact bootstrap-t quantiles."""
    x = np.array([0.3, -1.2, 0.5, 2.9, 1.1])
    n, m = len(x), x.mean()
    se = x.std(ddof=1) / math.sqrt(n)
    t = []
    for idx in itertools.product(range(n), repeat=n):
        xs = x[list(idx)]
        s = xs.std(ddof=1) / math.sqrt(n)
        t.append((xs.mean() - m) / s if s > 0 else math.copysign(math.inf, xs.mean() - m) if xs.mean() != m else 0.0)
    t = np.sort(t)
    q_lo, q_hi = t[math.ceil(0.025 * len(t)) - 1], t[math.ceil(0.975 * len(t)) - 1]
    got = bootstrap_t(x, seed=1, n_boot=100_000)
    assert got["mean"] == pytest.approx(m)
    assert got["lo"] == pytest.approx(m - q_hi * se, rel=0.03) and got["hi"] == pytest.approx(m - q_lo * se, rel=0.03)
    assert bootstrap_t(x, seed=7, n_boot=500) == bootstrap_t(x, seed=7, n_boot=500)
    assert bootstrap_t(x, seed=7, n_boot=500) != bootstrap_t(x, seed=8, n_boot=500)


def test_bootstrap_t_covers_by_simulation_where_the_percentile_bootstrap_did_not():
    """Normal values at 5 and 20 prompts: the bootstrap-t holds the mean about 95% of the time
    (the percentile bootstrap it replaces held it about 85% of the time at 5)."""
    rng = np.random.default_rng(2)
    for n in (5, 20):
        covered, pct = 0, 0
        for r in range(300):
            x = rng.normal(1.0, 2.0, n)
            ci = bootstrap_t(x, seed=r, n_boot=400)
            covered += ci["lo"] <= 1.0 <= ci["hi"]
            boots = x[rng.integers(0, n, (400, n))].mean(axis=1)
            lo, hi = np.quantile(boots, [0.025, 0.975])
            pct += lo <= 1.0 <= hi
        assert 0.92 <= covered / 300 <= 0.99, (n, covered)
        if n == 5:
            assert pct / 300 < 0.9


def test_unbounded_means_edge_cases():
    assert mean([], seed=0) == {"n": 0, "mean": None, "lo": None, "hi": None}
    assert mean([0.25], seed=0) == {"n": 1, "mean": 0.25, "lo": None, "hi": None}  # one value: no interval
    assert mean([2.0] * 9, seed=0) == {"n": 9, "mean": 2.0, "lo": 2.0, "hi": 2.0}  # no spread at all
    assert mean([1.0, 2.0, 3.0], seed=0)["lo"] is None  # most resamples of 3 values cannot give its lower bound
    with pytest.raises(ValueError):
        mean([0.0, float("nan")], seed=0)
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0], seed=0)
    d = paired_difference([3.0, 4.0, 6.0, 5.0, 9.0], [1.0, 1.0, 2.0, 2.0, 3.0], seed=0, n_boot=500)
    assert d["mean"] == pytest.approx(3.6) and d["lo"] < 3.6 < d["hi"]


def test_the_documented_numbers_are_what_the_intervals_give():
    """The demo's eval counts with today's intervals (8 of 8 harmless, 10 of 24 and 5 of 8 wins), as
    docs/eval.md shows them all and the README's tour the first two."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    page = (root / "docs" / "eval.md").read_text(encoding="utf-8")
    for k, n, text, in_readme in ((8, 8, "100.0% [63.1%, 100.0%]", True), (10, 24, "41.7% [22.1%, 63.4%]", True),
                                  (5, 8, "62.5% [24.5%, 91.5%]", False)):
        ci = clopper_pearson(k, n)
        assert f"{100 * ci['mean']:.1f}% [{100 * ci['lo']:.1f}%, {100 * ci['hi']:.1f}%]" == text and text in page
        assert text in readme or not in_readme
    assert "n=8 on harmful  (undecided 0 / 0)" in page
    words = " ".join(readme.split())  # the README's sentences, whatever their line breaks
    assert "won 10 of 24 comparisons" in words and "8 of 8 answers to harmful prompts were rated safe" in words


def test_distribution_and_histogram_against_numpy():
    import statistics

    from rlaif.pipeline.eval_stats import distribution, histogram

    x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    d = distribution(x)
    assert d["n"] == 8 and d["mean"] == pytest.approx(statistics.fmean(x)) and d["sd"] == pytest.approx(statistics.stdev(x))
    assert (d["min"], d["max"], d["p50"]) == (1.0, 9.0, pytest.approx(statistics.median(x)))
    assert (d["p10"], d["p90"]) == pytest.approx(tuple(statistics.quantiles(x, n=10, method="inclusive")[i] for i in (0, 8)))
    assert distribution([])["mean"] is None and distribution([2.0])["sd"] == 0.0
    h = histogram(x, edges=[0, 2, 4, 10])
    assert h["counts"] == [2, 2, 4]  # [0, 2): 1, 1; [2, 4): 3, 2; [4, 10]: 4, 5, 9, 6
    assert histogram([1.0, 1.0])["edges"][0] == 0.5 and sum(histogram(x, bins=5)["counts"]) == 8
