"""Length-controlled labels (``--length-control``): remove the judge's preference for length.

In the spirit of length-controlled AlpacaEval (Dubois et al. 2024), over the judged pairs of
a run the judge's log-odds are modelled as

    logit P(a) = beta * d + [b0] + r,        d = log((1 + chars of a) / (1 + chars of b))

a logistic model of P(a) whose coefficients are fitted by least squares on the log-odds
(the maximum-likelihood fit when r is Gaussian on the logit scale). ``beta * d`` is the part
of the judge's preference that the length difference explains; the residual ``r`` is kept as
the label: ``p_a = sigmoid(logit P(a) - beta * d - b0)``, and each principle's probability
is shifted by the same log-odds. The intercept ``b0`` is fitted only when one order was
scored, where it absorbs the position bias; with both orders the position has cancelled and
the pair's a/b orientation can carry content (in revision mode a is the initial response), so
the fit goes through the origin.

Assumptions, and when it cannot work:

* Across the run's pairs, the true quality difference is uncorrelated with the length
  difference (a length-balanced set). Where better answers really are longer (revisions
  that add what was missing), the fit takes that real preference for a length bias and
  removes it: length and content are then collinear and cannot be told apart from the
  judge's labels alone.
* The bias is linear in the log length ratio, the same for every pair.
* It needs pairs and length variation: with fewer than ``MIN_PAIRS`` judged pairs, or a
  log length ratio that barely varies (standard deviation under ``MIN_SPREAD``: every
  pair has about the same length ratio, so length is confounded with whatever the pairs
  share), the labels are left as the judge gave them and the reason is recorded.
* When one side is longer in most pairs (the mean log length ratio is larger than its
  standard deviation, as when every revision is longer than its initial response), length
  is confounded with the pairs' a/b orientation: the correction is applied, and a caution
  is recorded and printed.

Labels are final only once every pair is scored: chunks store the judge's raw labels, and the
fit and correction are applied when the run's outputs are built, so chunked, resumed and
re-finalised runs give the same result as one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

from rlaif.pipeline.diagnostics import length_feature, log_odds, sigmoid

MIN_PAIRS = 20
MIN_SPREAD = 0.05


@dataclass(frozen=True)
class LengthFit:
    """The fitted length model of one run (coefficients in log-odds)."""

    applied: bool
    n: int
    coef: float = 0.0
    """beta: log-odds per unit of log length ratio (a positive value favours the longer response)."""
    intercept: float = 0.0
    """b0 (single order only): the position's log-odds."""
    with_intercept: bool = False
    stderr: float | None = None
    """Standard error of beta."""
    r2: float | None = None
    """Share of the variance of the judge's log-odds that the model explains."""
    reason: str | None = None
    """Why it was not applied."""
    caution: str | None = None
    """Applied, but length is confounded with the pairs' a/b orientation (see the module docstring)."""

    def offset(self, d: float) -> float:
        return self.coef * d + (self.intercept if self.with_intercept else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "n": self.n, "coef": self.coef, "intercept": self.intercept,
                "with_intercept": self.with_intercept, "stderr": self.stderr, "r2": self.r2, "reason": self.reason,
                "caution": self.caution}


def fit_length_model(log_odds_: Sequence[float], features: Sequence[float], intercept: bool) -> LengthFit:
    """Least-squares fit of the log-odds on the length feature (and an intercept if asked).

    Args:
        log_odds_: ``(n,)`` the judge's logit P(a) per pair.
        features: ``(n,)`` the length feature d per pair (:func:`rlaif.pipeline.diagnostics.length_feature`).
        intercept: fit b0 too (single-order labels).
    """
    n = len(log_odds_)
    if n != len(features):
        raise ValueError(f"fit_length_model needs equal lengths, got {n} and {len(features)}")
    if n < MIN_PAIRS:
        return LengthFit(False, n, reason=f"too few judged pairs to fit ({n} < {MIN_PAIRS})")
    mx = sum(features) / n
    my = sum(log_odds_) / n
    sxx_c = sum((x - mx) ** 2 for x in features)
    spread = math.sqrt(sxx_c / n)
    if spread < MIN_SPREAD:
        return LengthFit(False, n, reason=f"the length ratio barely varies across pairs (sd {spread:.3f} < {MIN_SPREAD})")
    if intercept:
        # beta = S_xy / S_xx about the means; b0 = mean(l) - beta * mean(d)
        beta = sum((x - mx) * (y - my) for x, y in zip(features, log_odds_)) / sxx_c
        b0 = my - beta * mx
        sxx, dof = sxx_c, n - 2
    else:
        # through the origin: beta = sum(d l) / sum(d^2)
        sxx = sum(x * x for x in features)
        beta = sum(x * y for x, y in zip(features, log_odds_)) / sxx
        b0, dof = 0.0, n - 1
    resid = [y - beta * x - b0 for x, y in zip(features, log_odds_)]
    ss_res = sum(e * e for e in resid)
    ss_tot = sum((y - my) ** 2 for y in log_odds_)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else None
    stderr = math.sqrt(ss_res / dof / sxx) if dof > 0 else None
    caution = None
    if abs(mx) > spread:
        side = "a" if mx > 0 else "b"
        caution = (f"response {side} is the longer one in most pairs (mean log length ratio {mx:+.2f}, sd {spread:.2f}), "
                   f"so length is confounded with the a/b side: a real preference for that side is removed too")
    return LengthFit(True, n, beta, b0, intercept, stderr, r2, caution=caution)


def apply_length_control(pairs: Sequence[Any], labels: Sequence[Any], both_orders: bool, tie_band: float) -> tuple[list[Any], LengthFit]:
    """Fit over the judged pairs and return the corrected labels (others unchanged) and the fit.

    A corrected label keeps the judge's P(a) in ``judge_p_a`` and the removed log-odds in
    ``length_offset``, carries the flag "length-controlled", and has its tie, Likert and
    margin recomputed from the corrected probability. A pair the judge called a tie stays a
    tie (its offset is 0): the correction removes a length effect, it does not create a
    preference where the judge had none.
    """
    from rlaif.pipeline.judge import likert, margin

    judged = [i for i, l in enumerate(labels) if l.error is None and "identical" not in l.flags]
    feats = {i: length_feature(pairs[i].response_a, pairs[i].response_b) for i in judged}
    fit = fit_length_model([log_odds(labels[i].p_a) for i in judged], [feats[i] for i in judged], intercept=not both_orders)
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
        p = sigmoid(log_odds(lab.p_a) - shift)
        per = {k: sigmoid(log_odds(v) - shift) for k, v in lab.per_principle.items()}
        flags = {f for f in lab.flags if f != "tie"} | {"length-controlled"}
        if abs(p - 0.5) <= tie_band:
            flags.add("tie")
        out[i] = replace(lab, p_a=p, per_principle=per, likert=likert(p), margin=margin(p), flags=tuple(sorted(flags)),
                         judge_p_a=lab.p_a, length_offset=shift)
    return out, fit
