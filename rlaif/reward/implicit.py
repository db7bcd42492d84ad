"""Implicit step rewards of a DPO model against its reference (Yuan et al. 2024, "Free Process Rewards
without Process Labels").

A model trained with DPO's objective defines the reward ``r(y) = beta * log(pi(y) / pi_ref(y))``,
which over the tokens of a response is a sum of per-token log-ratios. Yuan et al. read a process
reward off it: the reward of step k is the sum over the step's tokens,
``r_k = beta * sum_{t in step k} log(pi(y_t | y_<t) / pi_ref(y_t | y_<t))``, and the partial sums
``q_k = r_1 + ... + r_k`` are the implicit Q-values of the prefixes. ``beta`` is the DPO beta the
model was trained with.

A token belongs to the step whose text it starts in, or, for the whitespace between two steps,
to the step before (a step and the separator after it, as the PRM lays them out); the end token
of an answer that ended belongs to its last step. The log-probabilities come from the engines'
``response_logprobs`` (the in-process backends and the fake engine have it; a server does not).
As a bool label a step is correct when ``r_k > 0`` (the trained model raised its probability
above the reference's); its soft score is ``sigmoid(r_k)``.
"""
from __future__ import annotations

import math
import re
from typing import Sequence


def token_spans(engine, text: str) -> list[tuple[int, int]]:
    """Character span of every token of ``text`` as the engine scores it (``response_logprobs`` tokenises
    the text on its own): the engine's tokenizer's offsets, or whitespace-separated words for an engine
    without a tokenizer (the fake engine counts words)."""
    tok = getattr(engine, "tokenizer", None)
    if tok is None:
        return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return [tuple(x) for x in enc["offset_mapping"]]


def token_steps(tokens: Sequence[tuple[int, int]], steps: Sequence[tuple[int, int]], n_scores: int) -> list[int]:
    """The step each scored token belongs to: the last step starting at or before the token's first
    character (step 0 for anything before it). Scores beyond the tokens (the end token) go to the last step."""
    starts = [a for a, _ in steps]
    out = []
    for k in range(n_scores):
        if k >= len(tokens):
            out.append(len(steps) - 1)
            continue
        a = tokens[k][0]
        j = 0
        while j + 1 < len(starts) and starts[j + 1] <= a:
            j += 1
        out.append(j)
    return out


def step_rewards(policy_logps: Sequence[float], ref_logps: Sequence[float], owners: Sequence[int], n_steps: int,
                 beta: float) -> list[float]:
    """``r_k = beta * sum over the tokens t of step k of (log pi(t) - log pi_ref(t))``."""
    if len(policy_logps) != len(ref_logps) or len(owners) != len(policy_logps):
        raise ValueError("policy, reference and token owners must have one entry per token")
    out = [0.0] * n_steps
    for lp, lr, k in zip(policy_logps, ref_logps, owners):
        out[k] += beta * (lp - lr)
    return out


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
