"""Programmatic rewards: ``module:function(prompts, responses) -> (B,) scores``, loaded by name,
and the checked call that every consumer of a reward makes (best-of-N, eval, PPO, GRPO, search)."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

Messages = list[dict[str, Any]]
RewardFn = Callable[[Sequence[Messages], Sequence[str]], Any]
"""``reward_fn(prompts, responses)``: one score per response (a tensor or a sequence of floats)."""


def load_reward_fn(spec: str) -> RewardFn:
    """Import ``"package.module:function"``: ``function(prompts, responses) -> (B,) scores``."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"reward_fn {spec!r} must look like 'package.module:function'")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise ValueError(f"reward_fn {spec!r} is not callable")
    return fn


def score(reward_fn: RewardFn, prompts: Sequence[Messages], responses: Sequence[str]):
    """Call ``reward_fn`` and check it returned one finite float per response: ``(B,)`` float32 tensor."""
    import torch

    out = torch.as_tensor(reward_fn(prompts, responses), dtype=torch.float32).reshape(-1).cpu()
    if out.shape[0] != len(responses):
        raise ValueError(f"the reward function returned {out.shape[0]} scores for {len(responses)} responses")
    if not torch.isfinite(out).all():
        raise ValueError("the reward function returned a non-finite score")
    return out
