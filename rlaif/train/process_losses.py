"""Process supervision as pure tensor functions: the PRM's step loss, and step scores as dense rewards.

* :func:`step_classification_loss`: the two-label step classifier of ``rlaif train prm`` against
  hard (0/1) or soft (share of correct Monte-Carlo continuations, Math-Shepherd's "soft estimation")
  targets at the labelled step positions.
* :func:`step_token_rewards`: each step's score placed on the token that ends the step (Math-Shepherd
  sec. 3.4, step-by-step PPO: "the reward model assigns a reward at the end of each step").
* :func:`process_advantages`: GRPO with process supervision (DeepSeekMath, Shao et al. 2024,
  sec. 4.1.3): step rewards normalised by the mean and standard deviation of all step rewards of the
  group, and each token's advantage the sum of the normalised rewards of the steps that end at or
  after it.
"""
from __future__ import annotations

import torch

Metrics = dict[str, torch.Tensor]


def step_classification_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                             normalizer: float | int | torch.Tensor | None = None) -> tuple[torch.Tensor, Metrics]:
    """Cross-entropy of the step classifier at the labelled positions.

    With ``q = softmax(logits)[..., 1]`` (P(step correct)) and target ``t`` (1/0 hard, or a share in
    [0, 1] soft) the loss per step is ``-[t log q + (1 - t) log(1 - q)]``; the sum over labelled
    positions is divided by ``normalizer`` (default: their number). Hard targets give TRL's PRM loss
    (cross-entropy over the two labels at the separator tokens).

    Args:
        logits: ``(B, L, 2)``; targets: ``(B, L)`` (any value where unlabelled); mask: ``(B, L)``, 1 at labelled positions.
    Returns:
        loss and metrics: ``step_accuracy`` (``q > 0.5`` agrees with ``t > 0.5``) and ``mean_prob`` (mean q).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    m = mask.to(logp.dtype)
    t = targets.to(logp.dtype).clamp(0.0, 1.0) * m
    per = -(t * logp[..., 1] + (1.0 - t) * logp[..., 0]) * m
    n = m.sum().clamp(min=1.0) if normalizer is None else normalizer
    q = logp[..., 1].detach().exp()
    count = m.sum().clamp(min=1.0)
    acc = (((q > 0.5) == (t > 0.5)).to(m.dtype) * m).sum() / count
    return per.sum() / n, {"step_accuracy": acc, "mean_prob": (q * m).sum() / count}


def step_token_rewards(step_rewards: torch.Tensor, step_pos: torch.Tensor, step_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Step rewards laid on the tokens that end their steps: ``r_t = sum of the rewards of the steps ending at t``.

    Args:
        step_rewards, step_pos (token index, long), step_mask: ``(B, S)``; ``length``: T.
    Returns:
        ``(B, T)``, zero on every token that ends no step.
    """
    out = torch.zeros(step_rewards.shape[0], length, dtype=torch.float32, device=step_rewards.device)
    m = step_mask.to(torch.float32)
    pos = step_pos.long().clamp(0, max(length - 1, 0))
    return out.scatter_add(1, pos, step_rewards.to(torch.float32) * m)


def process_advantages(step_rewards: torch.Tensor, step_pos: torch.Tensor, step_mask: torch.Tensor, group: int,
                       mask: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantages under process supervision (Shao et al. 2024, sec. 4.1.3).

    For a group of ``G`` outputs, ``R`` holds every step reward of every output. Each is normalised,
    ``r~ = (r - mean(R)) / (std(R) + eps)`` (std Bessel-corrected, as :func:`rlaif.train.rl_losses.group_advantages`
    does for outcome rewards), and token ``t`` of output ``i`` gets ``A_{i,t} = sum over the steps j of
    output i with index(j) >= t of r~_i^{index(j)}``, where ``index(j)`` is the token that ends step j.

    Args:
        step_rewards, step_pos, step_mask: ``(B, S)`` with ``B = n_groups * G``, a group's outputs in
            consecutive rows; mask: ``(B, T)`` response mask.
    Returns:
        ``(B, T)`` token advantages (0 on padding; 0 for a group with a single step reward).
    """
    B, S = step_rewards.shape
    if B % group:
        raise ValueError(f"{B} outputs do not make groups of {group}")
    r = step_rewards.to(torch.float32).view(-1, group * S)
    m = step_mask.to(torch.float32).view(-1, group * S)
    n = m.sum(-1, keepdim=True)
    mean = (r * m).sum(-1, keepdim=True) / n.clamp(min=1.0)
    var = (((r - mean) * m) ** 2).sum(-1, keepdim=True) / (n - 1).clamp(min=1.0)
    norm = torch.where(n > 1, (r - mean) / (var.sqrt() + eps), torch.zeros_like(r)) * m
    dense = step_token_rewards(norm.view(B, S), step_pos, step_mask, mask.shape[1])
    # A_t = sum_{t' >= t} dense_t': a reversed cumulative sum along the response
    return torch.flip(torch.cumsum(torch.flip(dense, [1]), 1), [1]) * mask.to(torch.float32)
