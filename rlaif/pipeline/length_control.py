"""Length-controlled labels (``--length-control``): remove the judge's preference for length.

As in length-controlled AlpacaEval (Dubois et al. 2024), the judge's preference is modelled
with a length term and the label keeps everything but that term. The model is of each
*comparison* (one principle's P(a) of one pair, both orders averaged where both were scored):

    logit P_k(a) = b0 + beta * d + r,     d = log((1 + chars of a) / (1 + chars of b))

where r is the comparison's content (what the judge sees besides length), taken to vary across
pairs independently of d with a standard logistic distribution; equivalently, the length-free
probability sigmoid(r) is uniform on (0, 1) over the pairs, the least informative assumption
about a probability. ``beta`` and ``b0`` are fitted by maximum likelihood over every comparison
of the run's judged pairs (:func:`fit_length_model`). The likelihood's score equations say what
the fit achieves: the corrected probabilities ``sigmoid(logit P_k - b0 - beta d)`` average one
half and do not follow d (``sum d (sigmoid(.) - 1/2) = 0``). The corrected comparison is
``P'_k = sigmoid(logit P_k - beta d)`` (and ``- b0`` with one order, where b0 is the position
bias; with both orders b0 is a real preference for one side and stays), and the corrected label
is the mean of the corrected comparisons, as the judge's own label is the mean of its
comparisons: ``p_a = mean_k P'_k`` exactly.

Why this likelihood and not a logistic regression on the soft labels (the fractional logit):
a logistic regression fits E[P(a) | d], and averaging sigmoid(beta d + r) over a content r that
varies flattens the curve, so its coefficient is smaller than beta, the more so the surer the
judge is about content (benchmarks/results/length-control.md: an injected beta of 1.5 comes
out near 0.9 with a mixed content spread and near 0.15 with a confident judge), and the
correction would leave most of the length bias in the labels. This likelihood recovers beta
itself, and each comparison's influence on it is bounded (``|2 sigmoid(.) - 1| < 1``), so
log-odds clipped at +-13.8 cannot dominate the fit as they dominate least squares.

The correction is applied only when the length coefficient is distinguishable from zero:
``|beta| / se(beta) >= 1.96``, with a sandwich standard error clustered by pair (the
comparisons of one pair share its content). A judge with no measurable length preference keeps
its labels; the z is recorded and printed either way.

Assumptions, and when it cannot work:

* Across the run's pairs the true quality difference is uncorrelated with the length
  difference (a length-balanced set). Where better answers really are longer (revisions that
  add what was missing), the fit takes that real preference for a length bias and removes it:
  length and content are then collinear and cannot be told apart from the judge's labels alone.
* The bias is linear in the log length ratio, the same for every pair and principle.
* It needs pairs and length variation: with fewer than ``MIN_PAIRS`` judged pairs, or a log
  length ratio that barely varies (standard deviation under ``MIN_SPREAD``), the labels are
  left as the judge gave them and the reason is recorded.
* When one side is longer in most pairs (the mean log length ratio is larger than its standard
  deviation, as when every revision is longer than its initial response), a preference for that
  side and a preference for length are told apart only by how the ratio varies (with both
  orders the fit's intercept keeps the side preference in the label): a caution is recorded.

Labels are final only once every pair is scored: chunks store the judge's raw labels, and the
fit and correction are applied when the run's outputs are built, so chunked, resumed and
re-finalised runs give the same result as one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from rlaif.pipeline.diagnostics import length_feature, log_odds, sigmoid

MIN_PAIRS = 20
MIN_SPREAD = 0.05
Z_MIN = 1.96
"""The correction is applied only when |beta| / se(beta) reaches this (a two-sided 5% test)."""
METHOD = "ml-logistic-residuals/z1.96"
"""Names the fit in a run's ``finalise`` record, so that a folder finalised by another method is rebuilt."""


@dataclass(frozen=True)
class LengthFit:
    """The fitted length model of one run (coefficients in log-odds)."""

    applied: bool
    n: int
    """Judged pairs."""
    coef: float = 0.0
    """beta: log-odds per unit of log length ratio (a positive value favours the longer response)."""
    intercept: float = 0.0
    """b0: the mean content log-odds of a over b (one order: with the position bias in it)."""
    with_intercept: bool = False
    """The correction removes b0 too (one order only: there it is the position bias)."""
    stderr: float | None = None
    """Standard error of beta (sandwich, clustered by pair); 0 when the log-odds are exactly linear in d."""
    z: float | None = None
    """beta / stderr (None when stderr is 0)."""
    comparisons: int = 0
    r2: float | None = None
    """Share of the variance of the judge's log-odds that ``b0 + beta d`` explains (descriptive)."""
    reason: str | None = None
    """Why it was not applied."""
    caution: str | None = None
    """Applied, but length is confounded with the pairs' a/b orientation (see the module docstring)."""

    @property
    def fitted(self) -> bool:
        """The model was fitted (it may still not be applied, for want of a significant beta)."""
        return self.stderr is not None

    def offset(self, d: float) -> float:
        return self.coef * d + (self.intercept if self.with_intercept else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "n": self.n, "comparisons": self.comparisons, "coef": self.coef,
                "intercept": self.intercept, "with_intercept": self.with_intercept, "stderr": self.stderr, "z": self.z,
                "r2": self.r2, "reason": self.reason, "caution": self.caution, "method": METHOD}


def _log_f(u: np.ndarray) -> np.ndarray:
    """log density of the standard logistic distribution, log sigmoid(u) + log sigmoid(-u)."""
    a = np.abs(u)
    return -a - 2.0 * np.log1p(np.exp(-a))


def _ml_fit(y: np.ndarray, x: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Maximum likelihood of ``y = x @ theta + r``, r standard logistic, by Newton's method with step
    halving; the log-likelihood ``sum log f(y - x @ theta)`` is concave (f is log-concave), so the
    maximum is unique. ``x``: ``(n, 2)`` rows (1, d)."""
    theta = start.astype(np.float64)
    ll = float(_log_f(y - x @ theta).sum())
    for _ in range(200):
        sig = 1.0 / (1.0 + np.exp(-(y - x @ theta)))
        grad = x.T @ (2.0 * sig - 1.0)                       # d/dtheta of sum log f(u), u = y - x theta
        hess = -(x * (2.0 * sig * (1.0 - sig))[:, None]).T @ x
        step = np.linalg.solve(hess, -grad)
        t = 1.0
        while t > 1e-10:
            new = theta + t * step
            if (new_ll := float(_log_f(y - x @ new).sum())) >= ll - 1e-12:
                break
            t *= 0.5
        else:
            break
        theta, ll = new, new_ll
        if np.max(np.abs(t * step)) < 1e-12 * (1.0 + np.max(np.abs(theta))):
            break
    return theta


def _cluster_stderr(y: np.ndarray, x: np.ndarray, clusters: np.ndarray, theta: np.ndarray) -> float:
    """Sandwich standard error of beta, the score summed over each pair's comparisons (CR1: times
    G / (G - 1) for G pairs). It does not rely on the logistic model being right."""
    sig = 1.0 / (1.0 + np.exp(-(y - x @ theta)))
    scores = x * (2.0 * sig - 1.0)[:, None]
    hess = -(x * (2.0 * sig * (1.0 - sig))[:, None]).T @ x
    _, inverse = np.unique(clusters, return_inverse=True)
    groups = int(inverse.max()) + 1
    per = np.zeros((groups, x.shape[1]))
    np.add.at(per, inverse, scores)
    bread = np.linalg.inv(hess)
    cov = bread @ (per.T @ per * (groups / (groups - 1))) @ bread
    return float(math.sqrt(max(cov[1, 1], 0.0)))


def fit_length_model(log_odds_: Sequence[float], features: Sequence[float], remove_intercept: bool,
                     clusters: Sequence[Any] | None = None) -> LengthFit:
    """Maximum-likelihood fit of the comparisons' log-odds on the length feature (module docstring).

    Args:
        log_odds_: ``(n,)`` the judge's logit P(a) per comparison.
        features: ``(n,)`` the length feature d of each comparison's pair
            (:func:`rlaif.pipeline.diagnostics.length_feature`).
        remove_intercept: the correction removes b0 too (single-order labels).
        clusters: ``(n,)`` the pair of each comparison (default: one pair per comparison).
    """
    m = len(log_odds_)
    if m != len(features):
        raise ValueError(f"fit_length_model needs equal lengths, got {m} and {len(features)}")
    clusters = list(range(m)) if clusters is None else list(clusters)
    if len(clusters) != m:
        raise ValueError("fit_length_model needs one cluster per comparison")
    n = len(set(clusters))
    if n < MIN_PAIRS:
        return LengthFit(False, n, comparisons=m, reason=f"too few judged pairs to fit ({n} < {MIN_PAIRS})")
    y, d = np.asarray(log_odds_, dtype=np.float64), np.asarray(features, dtype=np.float64)
    spread, md = float(d.std()), float(d.mean())
    if spread < MIN_SPREAD:
        return LengthFit(False, n, comparisons=m,
                         reason=f"the length ratio barely varies across pairs (sd {spread:.3f} < {MIN_SPREAD})")
    caution = None
    if abs(md) > spread:
        side = "a" if md > 0 else "b"
        caution = (f"response {side} is the longer one in most pairs (mean log length ratio {md:+.2f}, sd {spread:.2f}), "
                   f"so length is confounded with the a/b side: a real preference for the longer side may be removed too")
    x = np.stack([np.ones_like(d), d], axis=1)
    start, *_ = np.linalg.lstsq(x, y, rcond=None)           # least squares: where Newton starts
    theta = _ml_fit(y, x, start)
    b0, beta = float(theta[0]), float(theta[1])
    se = _cluster_stderr(y, x, np.asarray(clusters), theta)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - x @ theta) ** 2).sum()) / ss_tot if ss_tot > 0 else None
    if se <= 1e-12 * (1.0 + abs(beta)):
        # the judge's log-odds are exactly linear in the length ratio: nothing else to separate
        applied = abs(beta) > 1e-12
        return LengthFit(applied, n, beta, b0, remove_intercept, 0.0, None, m, r2,
                         reason=None if applied else "the judge's log-odds do not depend on length at all",
                         caution=caution if applied else None)
    z = beta / se
    applied = abs(z) >= Z_MIN
    reason = None if applied else (f"the length coefficient {beta:+.2f} +- {se:.2f} is not distinguishable from zero "
                                   f"(z {z:+.2f}, |z| < {Z_MIN})")
    return LengthFit(applied, n, beta, b0, remove_intercept, se, z, m, r2, reason, caution if applied else None)


def apply_length_control(pairs: Sequence[Any], labels: Sequence[Any], both_orders: bool, tie_band: float) -> tuple[list[Any], LengthFit]:
    """Fit over the judged pairs' comparisons and return the corrected labels (others unchanged) and the fit.

    A corrected label has each principle's probability corrected in log-odds and ``p_a`` their
    mean; it keeps the judge's P(a) in ``judge_p_a`` and ``logit(judge_p_a) - logit(p_a)`` in
    ``length_offset``, carries the flag "length-controlled", and has its tie, Likert and margin
    recomputed from the corrected probability. A pair the judge called a tie stays a tie (its
    offset is 0): the correction removes a length effect, it does not create a preference where
    the judge had none.
    """
    from rlaif.pipeline.judge import likert, margin

    judged = [i for i, l in enumerate(labels) if l.error is None and "identical" not in l.flags]
    feats = {i: length_feature(pairs[i].response_a, pairs[i].response_b) for i in judged}
    ys, ds, cl = [], [], []
    for i in judged:
        for p in (labels[i].per_principle or {"": labels[i].p_a}).values():
            ys.append(log_odds(p))
            ds.append(feats[i])
            cl.append(i)
    fit = fit_length_model(ys, ds, remove_intercept=not both_orders, clusters=cl)
    if not fit.applied:
        return list(labels), fit
    out = list(labels)
    for i in judged:
        lab = labels[i]
        if "tie" in lab.flags:
            # The judge itself could not tell the two apart: removing a length effect from
            # "no preference" would invent one (always for the shorter response), so a
            # judge's tie stays a tie.
            out[i] = replace(lab, flags=tuple(sorted(set(lab.flags) | {"length-controlled"})), judge_p_a=lab.p_a, length_offset=0.0)
            continue
        shift = fit.offset(feats[i])
        per = {k: sigmoid(log_odds(v) - shift) for k, v in lab.per_principle.items()}
        p = sum(per.values()) / len(per) if per else sigmoid(log_odds(lab.p_a) - shift)
        flags = {f for f in lab.flags if f != "tie"} | {"length-controlled"}
        if abs(p - 0.5) <= tie_band:
            flags.add("tie")
        out[i] = replace(lab, p_a=p, per_principle=per, likert=likert(p), margin=margin(p), flags=tuple(sorted(flags)),
                         judge_p_a=lab.p_a, length_offset=log_odds(lab.p_a) - log_odds(p))
    return out, fit
