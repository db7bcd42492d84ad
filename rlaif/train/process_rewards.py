"""A process reward model as the online trainers' dense reward (``prm:`` in PPO and GRPO).

The sampled responses are cut into steps by the PRM's own splitter, every step is scored
(:meth:`rlaif.reward.prm.ProcessRewardModel.step_scores`), and each score is placed on the policy
token on which its step ends (:func:`rlaif.reward.prm.token_positions`). PPO adds them, times
``prm_weight``, to its per-token rewards (Math-Shepherd's step-by-step PPO: a reward at the end of
every step, :func:`rlaif.train.process_losses.step_token_rewards`); GRPO turns them into per-token
advantages (DeepSeekMath's process supervision, :func:`rlaif.train.process_losses.process_advantages`).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from rlaif.engine.base import TokenSample
from rlaif.reward.prm import ProcessRewardModel, token_positions


def load_prm(path: str, device, batch_size: int, max_length: int, trust_remote_code: bool) -> ProcessRewardModel:
    from .common import resolve_model_path

    return ProcessRewardModel(resolve_model_path(path), str(device), batch_size, max_length, trust_remote_code=trust_remote_code)


def step_layout(prm, tokenizer, prompts: Sequence[Any], samples: Sequence[TokenSample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every response's step scores, the token each step ends on, and which entries are steps: ``(B, S)`` each."""
    scored = prm.step_scores(prompts, [x.text for x in samples])
    width = max(1, max(len(sc) for sc in scored))
    rewards, pos, mask = torch.zeros(len(samples), width), torch.zeros(len(samples), width, dtype=torch.long), torch.zeros(len(samples), width)
    for b, (sample, sc) in enumerate(zip(samples, scored)):
        if not sc or not sample.response_ids:
            continue
        ends = token_positions(tokenizer, sample.response_ids, [end for _, (_, end) in sc])
        rewards[b, : len(sc)] = torch.tensor([p for p, _ in sc])
        pos[b, : len(sc)] = torch.tensor(ends)
        mask[b, : len(sc)] = 1.0
    return rewards, pos, mask


def step_metrics(rewards: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    n = float(mask.sum())
    return {"reward/prm_step": float((rewards * mask).sum()) / max(n, 1.0), "reward/prm_steps_per_response": n / max(1, mask.shape[0])}
