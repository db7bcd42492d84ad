"""The numbers of ``rlaif eval``, as pure functions over per-prompt values.

Every interval is a 95% percentile bootstrap over *prompts*: the prompts are resampled with
replacement ``n_boot`` times (a seeded generator, so the same run gives the same interval)
and the statistic's 2.5% and 97.5% quantiles over the resamples are the interval. A paired
comparison (policy minus baseline on the same prompts) resamples the prompts once for both.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

LEVEL = 0.95
N_BOOT = 2000
WIN_SCORE = {"policy": 1.0, "tie": 0.5, "baseline": 0.0}
"""A prompt's contribution to the win rate: a tie (the judge named no side) counts half."""


def bootstrap_mean(values: Sequence[float], seed: int, n_boot: int = N_BOOT, level: float = LEVEL) -> dict[str, Any]:
    """Mean of ``values`` (one per prompt) with its percentile-bootstrap interval.

    Returns ``{"n", "mean", "lo", "hi"}``; with no values every number is None, with one value
    the interval is that value.
    """
    x = np.asarray(list(values), dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "lo": None, "hi": None}
    if not np.all(np.isfinite(x)):
        raise ValueError("bootstrap_mean: values must be finite")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // n)  # resamples per block: bounded memory for long runs
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        means[start : start + k] = x[rng.integers(0, n, size=(k, n))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return {"n": n, "mean": float(x.mean()), "lo": float(lo), "hi": float(hi)}


def paired_difference(a: Sequence[float], b: Sequence[float], seed: int, n_boot: int = N_BOOT) -> dict[str, Any]:
    """mean(a - b) over prompts that have both values, with the bootstrap interval of the paired
    difference (the same prompts resampled for both)."""
    if len(a) != len(b):
        raise ValueError("paired_difference needs one value of each per prompt")
    return bootstrap_mean([x - y for x, y in zip(a, b)], seed, n_boot)


def win_score(winner: str) -> float:
    return WIN_SCORE[winner]


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
    estimates the prompt-averaged KL in nats per answer, with a bootstrap interval over prompts.
    Single answers can have negative log-ratios; the mean is unbiased (Schulman's k1).
    Also returned: the mean per token (total log-ratio / total tokens).
    """
    if len(policy_logprobs) != len(baseline_logprobs):
        raise ValueError("kl_estimate needs both models' log-probs of the same answers")
    ratios, tokens = [], 0
    for p, q in zip(policy_logprobs, baseline_logprobs):
        if len(p) != len(q):
            raise ValueError("kl_estimate: the two models scored different numbers of tokens for one answer")
        ratios.append(math.fsum(p) - math.fsum(q))
        tokens += len(p)
    out = bootstrap_mean(ratios, seed, n_boot)
    out["per_token"] = math.fsum(ratios) / tokens if tokens else None
    out["tokens"] = tokens
    return out


def rates_by(groups: Mapping[str, Sequence[float]], seed_of, n_boot: int = N_BOOT) -> dict[str, dict[str, Any]]:
    """:func:`bootstrap_mean` per group (``seed_of(group)`` seeds each), in sorted group order."""
    return {g: bootstrap_mean(v, seed_of(g), n_boot) for g, v in sorted(groups.items())}
