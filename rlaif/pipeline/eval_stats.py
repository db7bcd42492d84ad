"""The numbers of ``rlaif eval``, as pure functions over per-prompt values.

Every interval is a 95% interval over *prompts*, by the method that suits the number
(:mod:`rlaif.pipeline.intervals` says why each, and the tests check each one's coverage):

* a rate (a share of yes/no verdicts): Clopper-Pearson, :func:`rate`;
* a win rate (a tie counts half): Clopper-Pearson at wins plus half the ties, :func:`win_rate`;
* the mean of values in a known range (the soft win rate; the paired difference of two
  rates): the betting interval, :func:`bounded_mean`;
* the mean of unbounded values (reward scores, the KL log-ratios): the bootstrap-t,
  :func:`mean`, whose ``n_boot`` resamples (``rlaif eval --bootstrap``) are drawn with a seeded
  generator, so the same run gives the same interval.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from rlaif.pipeline.intervals import LEVEL, betting_interval, bootstrap_t, clopper_pearson

N_BOOT = 2000
WIN_SCORE = {"policy": 1.0, "tie": 0.5, "baseline": 0.0}
"""A prompt's contribution to the win rate: a tie (the judge named no side) counts half."""
METHODS = {
    "rates": "Clopper-Pearson (exact)",
    "win_rates": "Clopper-Pearson at wins + ties/2",
    "bounded_means": "betting (Waudby-Smith & Ramdas 2024)",
    "unbounded_means": "bootstrap-t",
}
"""The interval of each kind of number, as ``eval.json`` records it."""


def rate(verdicts: Sequence[bool], level: float = LEVEL) -> dict[str, Any]:
    """Share of True among ``verdicts`` (one per prompt) with its Clopper-Pearson interval.

    Returns ``{"n", "mean", "lo", "hi"}`` (None but n when there are none)."""
    return clopper_pearson(sum(bool(v) for v in verdicts), len(verdicts), level)


def win_rate(scores: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """Mean of win scores (1 win, 1/2 tie, 0 loss; :data:`WIN_SCORE`) with the Clopper-Pearson
    interval at wins + ties / 2 (see :mod:`rlaif.pipeline.intervals`)."""
    x = [float(s) for s in scores]
    if any(s not in (0.0, 0.5, 1.0) for s in x):
        raise ValueError("win_rate: every score must be 0, 0.5 or 1")
    return clopper_pearson(math.fsum(x), len(x), level)


def bounded_mean(values: Sequence[float], low: float, high: float, seed: int, level: float = LEVEL) -> dict[str, Any]:
    """Mean of values known to lie in [low, high] with its betting interval (``seed``: the random
    orders the bets are averaged over)."""
    return betting_interval(values, low, high, seed, level)


def mean(values: Sequence[float], seed: int, n_boot: int = N_BOOT, level: float = LEVEL) -> dict[str, Any]:
    """Mean of unbounded values (one per prompt) with its bootstrap-t interval."""
    return bootstrap_t(values, seed, n_boot, level)


def paired_difference(a: Sequence[float], b: Sequence[float], seed: int, n_boot: int = N_BOOT,
                      bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """mean(a - b) over prompts that have both values (the same prompts for both).

    With ``bounds`` (low, high) of each value the difference lies in [low - high, high - low]
    and gets the betting interval (for two rates, each prompt's difference is -1, 0 or 1);
    without, the bootstrap-t of the per-prompt differences.
    """
    if len(a) != len(b):
        raise ValueError("paired_difference needs one value of each per prompt")
    diffs = [x - y for x, y in zip(a, b)]
    if bounds is None:
        return mean(diffs, seed, n_boot)
    low, high = bounds
    return bounded_mean(diffs, low - high, high - low, seed)


def distribution(values: Iterable[float]) -> dict[str, Any]:
    """n, mean, standard deviation, min, 10th/50th/90th percentile and max (None when empty)."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "mean": None, "sd": None, "min": None, "p10": None, "p50": None, "p90": None, "max": None}
    p10, p50, p90 = np.quantile(x, [0.1, 0.5, 0.9])
    return {"n": int(x.size), "mean": float(x.mean()), "sd": float(x.std(ddof=1)) if x.size > 1 else 0.0,
            "min": float(x.min()), "p10": float(p10), "p50": float(p50), "p90": float(p90), "max": float(x.max())}


def histogram(values: Sequence[float], bins: int = 20, edges: Sequence[float] | None = None) -> dict[str, list[float]]:
    """Counts over ``edges`` (default: ``bins`` equal bins over the values' range)."""
    x = np.asarray(list(values), dtype=np.float64)
    if edges is None:
        if x.size == 0:
            return {"edges": [], "counts": []}
        lo, hi = float(x.min()), float(x.max())
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
    counts, e = np.histogram(x, bins=np.asarray(edges, dtype=np.float64))
    return {"edges": [float(v) for v in e], "counts": [int(c) for c in counts]}


def kl_estimate(policy_logprobs: Sequence[Sequence[float]], baseline_logprobs: Sequence[Sequence[float]], seed: int,
                n_boot: int = N_BOOT) -> dict[str, Any]:
    """Monte Carlo estimate of KL(policy || baseline) from the policy's own answers.

    For an answer y sampled from the policy, ``log pi(y|x) - log pi_ref(y|x)`` (the sum of the
    per-token log-ratios) has expectation KL(pi(.|x) || pi_ref(.|x)); its mean over prompts
    estimates the prompt-averaged KL in nats per answer, with a bootstrap-t interval over
    prompts. Single answers can have negative log-ratios; the mean is unbiased (Schulman's k1)
    only when y was sampled from pi itself: at temperature 1 and top-p 1 (see
    :func:`sampling_bias`). Also returned: the mean per token (total log-ratio / total tokens).
    """
    if len(policy_logprobs) != len(baseline_logprobs):
        raise ValueError("kl_estimate needs both models' log-probs of the same answers")
    ratios, tokens = [], 0
    for p, q in zip(policy_logprobs, baseline_logprobs):
        if len(p) != len(q):
            raise ValueError("kl_estimate: the two models scored different numbers of tokens for one answer")
        ratios.append(math.fsum(p) - math.fsum(q))
        tokens += len(p)
    out = mean(ratios, seed, n_boot)
    out["per_token"] = math.fsum(ratios) / tokens if tokens else None
    out["tokens"] = tokens
    return out


def sampling_bias(temperature: float, top_p: float) -> str | None:
    """Why the KL estimate is biased at these sampling settings (None at temperature 1, top-p 1).

    The estimate averages log pi(y) - log pi_ref(y) over answers y; it is KL(pi || pi_ref) only
    when y is drawn from pi. At another temperature or with top-p the answers come from a
    reshaped distribution, and the average is neither that KL nor the reshaped one's.
    """
    if temperature == 1.0 and top_p == 1.0:
        return None
    return (f"answers sampled at temperature {temperature:g}, top-p {top_p:g}: the KL estimate assumes temperature 1 "
            f"and top-p 1 and is biased here")
