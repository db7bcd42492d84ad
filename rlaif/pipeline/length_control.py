"""Length-controlled labels (``--length-control``): remove the judge's preference for length.

As in length-controlled AlpacaEval (Dubois et al. 2024), the judge's preference is modelled
with a length term and the label keeps everything but that term. The model is of each
*comparison* (one principle's P(a) of one pair, both orders averaged where both were scored):

    logit P_k(a) = b0 + beta * d + r,     d = log((1 + chars of a) / (1 + chars of b))

where r is the comparison's content (what the judge sees besides length), taken to vary across
pairs independently of d with a logistic distribution of scale s. ``b0``, ``beta`` and ``s``
are fitted by maximum likelihood over the comparisons of the run's judged pairs
(:func:`fit_length_model`). The corrected comparison is ``P'_k = sigmoid(logit P_k - beta d)``
(and ``- b0`` with one order, where b0 is the position bias; with both orders b0 is a real
preference for one side and stays), and the corrected label is the mean of the corrected
comparisons, as the judge's own label is the mean of its comparisons: ``p_a = mean_k P'_k``
exactly. A comparison at the clip (P within 1e-6 of 0 or 1: log-odds +-13.8) says only that
the judge is certain; it is left out of the fit (a mass of them would stretch the fitted
scale until the fit is least squares again) and corrected like the others.

Why this likelihood and not a logistic regression on the soft labels (the fractional logit):
a logistic regression fits E[P(a) | d], and averaging sigmoid(beta d + r) over a content r that
varies flattens the curve, so its coefficient is smaller than beta, the more so the surer the
judge is about content (benchmarks/results/length-control.md: an injected beta of 1.5 comes
out near 0.9 with mixed content and at 0.1-0.4 with a confident judge), and the correction
would leave most of the length bias in the labels. This likelihood recovers beta itself
(consistent whenever r is independent of d and symmetric, logistic or not), and each
comparison's influence on it is bounded (``|tanh|`` at the fitted scale), unlike least squares'.

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
    scale: float | None = None
    """s: the fitted scale of the content log-odds."""
    comparisons: int = 0
    """Comparisons the fit used."""
    clipped: int = 0
    """Comparisons left out of the fit: at the clip (P within 1e-6 of 0 or 1), the judge certain."""
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
        return {"applied": self.applied, "n": self.n, "comparisons": self.comparisons, "clipped": self.clipped, "coef": self.coef,
                "intercept": self.intercept, "with_intercept": self.with_intercept, "stderr": self.stderr, "z": self.z,
                "scale": self.scale, "r2": self.r2, "reason": self.reason, "caution": self.caution, "method": METHOD}


CLIP = log_odds(1.0)
"""The largest log-odds a label can have (P clipped at 1 - 1e-6)."""


def _log_f(u: np.ndarray) -> np.ndarray:
    """log density of the standard logistic distribution, log sigmoid(u) + log sigmoid(-u)."""
    a = np.abs(u)
    return -a - 2.0 * np.log1p(np.exp(-a))


def _ml_fit(y: np.ndarray, d: np.ndarray, start: np.ndarray) -> np.ndarray | None:
    """Maximum likelihood of ``y = b0 + beta d + s e``, e standard logistic, by Newton's method in
    (a0, a1, tau) = (b0 / s, beta / s, 1 / s), where the log-likelihood
    ``n log tau + sum log f(tau y - a0 - a1 d)`` is concave (f is log-concave), so the maximum
    is unique and Newton with step halving reaches it. None if it runs away (no finite maximum)."""
    n = y.size
    x = np.stack([-np.ones_like(d), -d, y], axis=1)          # du / d(a0, a1, tau), u = tau y - a0 - a1 d
    theta = start.astype(np.float64)

    def loglik(t):
        return n * math.log(t[2]) + float(_log_f(x @ t).sum())

    ll = loglik(theta)
    for _ in range(300):
        sig = 1.0 / (1.0 + np.exp(-(x @ theta)))
        grad = x.T @ (1.0 - 2.0 * sig) + np.array([0.0, 0.0, n / theta[2]])
        hess = -(x * (2.0 * sig * (1.0 - sig))[:, None]).T @ x - np.diag([0.0, 0.0, n / theta[2] ** 2])
        try:
            step = np.linalg.solve(hess, -grad)
        except np.linalg.LinAlgError:
            return None
        t = 1.0
        while t > 1e-10:
            new = theta + t * step
            if new[2] > 0 and (new_ll := loglik(new)) >= ll - 1e-12:
                break
            t *= 0.5
        else:
            return theta
        theta, ll = new, new_ll
        if theta[2] > 1e12:
            return None
        if np.max(np.abs(t * step)) < 1e-11 * (1.0 + np.max(np.abs(theta))):
            return theta
    return theta


def _cluster_stderr(y: np.ndarray, d: np.ndarray, clusters: np.ndarray, theta: np.ndarray) -> float:
    """Sandwich standard error of beta = a1 / tau, the score summed over each pair's comparisons
    (CR1: times G / (G - 1) for G pairs), by the delta method. It does not rely on the logistic
    model being right."""
    x = np.stack([-np.ones_like(d), -d, y], axis=1)
    sig = 1.0 / (1.0 + np.exp(-(x @ theta)))
    scores = x * (1.0 - 2.0 * sig)[:, None] + np.array([0.0, 0.0, 1.0 / theta[2]])
    hess = -(x * (2.0 * sig * (1.0 - sig))[:, None]).T @ x - np.diag([0.0, 0.0, y.size / theta[2] ** 2])
    _, inverse = np.unique(clusters, return_inverse=True)
    groups = int(inverse.max()) + 1
    per = np.zeros((groups, 3))
    np.add.at(per, inverse, scores)
    bread = np.linalg.inv(hess)
    cov = bread @ (per.T @ per * (groups / (groups - 1))) @ bread
    grad = np.array([0.0, 1.0 / theta[2], -theta[1] / theta[2] ** 2])    # of beta = a1 / tau
    return float(math.sqrt(max(grad @ cov @ grad, 0.0)))


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
    # a comparison at the clip (P within 1e-6 of 0 or 1) says the judge is certain, whatever the
    # length: its log-odds are not the judge's measure of the pair, so it is left out of the fit
    # (and still corrected); kept, a mass of them would inflate the fitted scale
    keep = [i for i, y in enumerate(log_odds_) if abs(y) < CLIP - 1e-9]
    clipped = m - len(keep)
    y = np.asarray([log_odds_[i] for i in keep], dtype=np.float64)
    d = np.asarray([features[i] for i in keep], dtype=np.float64)
    clusters = [clusters[i] for i in keep]
    m = len(keep)
    n = len(set(clusters))
    if n < MIN_PAIRS:
        return LengthFit(False, n, comparisons=m, clipped=clipped,
                         reason=f"too few judged pairs to fit ({n} < {MIN_PAIRS}" + (f", {clipped} comparisons at the clip left out)" if clipped else ")"))
    spread, md = float(d.std()), float(d.mean())
    if spread < MIN_SPREAD:
        return LengthFit(False, n, comparisons=m, clipped=clipped,
                         reason=f"the length ratio barely varies across pairs (sd {spread:.3f} < {MIN_SPREAD})")
    caution = None
    if abs(md) > spread:
        side = "a" if md > 0 else "b"
        caution = (f"response {side} is the longer one in most pairs (mean log length ratio {md:+.2f}, sd {spread:.2f}), "
                   f"so length is confounded with the a/b side: a real preference for the longer side may be removed too")
    x = np.stack([np.ones_like(d), d], axis=1)
    (b0, beta), *_ = np.linalg.lstsq(x, y, rcond=None)      # least squares: where the likelihood's search starts
    resid = y - b0 - beta * d
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if float(np.abs(resid).max()) <= 1e-9 * (1.0 + float(np.abs(y).max())):
        # the judge's log-odds are exactly linear in the length ratio: nothing else to separate
        applied = abs(beta) > 1e-12
        return LengthFit(applied, n, float(beta), float(b0), remove_intercept, 0.0, None, 0.0, m, clipped, 1.0 if ss_tot > 0 else None,
                         reason=None if applied else "the judge's log-odds do not depend on length at all",
                         caution=caution if applied else None)
    s0 = float(resid.std()) * math.sqrt(3.0) / math.pi
    theta = _ml_fit(y, d, np.array([b0 / s0, beta / s0, 1.0 / s0]))
    if theta is None:
        return LengthFit(False, n, comparisons=m, clipped=clipped, reason="the likelihood has no maximum; the labels are the judge's own")
    b0, beta = float(theta[0] / theta[2]), float(theta[1] / theta[2])
    se = _cluster_stderr(y, d, np.asarray(clusters), theta)
    r2 = 1.0 - float(((y - b0 - beta * d) ** 2).sum()) / ss_tot if ss_tot > 0 else None
    z = beta / se if se > 0 else None
    applied = z is None or abs(z) >= Z_MIN
    reason = None if applied else (f"the length coefficient {beta:+.2f} +- {se:.2f} is not distinguishable from zero "
                                   f"(z {z:+.2f}, |z| < {Z_MIN})")
    return LengthFit(applied, n, beta, b0, remove_intercept, se, z, float(1.0 / theta[2]), m, clipped, r2, reason,
                     caution if applied else None)


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
