"""GRPO: group-relative policy optimisation (Shao et al. 2024, DeepSeekMath sec. 4), no critic.

Each iteration:

1. **sample**: ``rollout_batch_size`` prompts, a group of ``samples_per_prompt`` (G >= 2) responses
   each, from the in-process vLLM engine that holds the current policy;
2. **reward**: a weighted sum of
   * ``judge_weight`` x the response's mean win probability against the other members of its group
     under the constitution judge (pairs ``judge_pairs``: ``all`` or ``circular``; both orders, an
     ensemble of principles; a tie counts 1/2; :mod:`rlaif.train.feedback`),
   * ``reward_model_weight`` x a trained reward model's score (``reward_model``),
   * ``reward_fn_weight`` x a Python function's (``reward_fn: module:function``, verifiable rewards),
   minus ``missing_eos_penalty`` for responses cut at the token limit;
3. **advantages** within each group (:func:`rlaif.train.rl_losses.group_advantages`): reward minus the
   group mean (``baseline: mean``) or the leave-one-out mean (``rloo``), *not* divided by the group's
   standard deviation unless ``scale_rewards`` (Dr. GRPO's advantage, Liu et al. 2025: the division
   turns a judge's noise around 1/2 into advantages of about +-1, full-size gradients on no signal);
   every token of a response gets its response's advantage;
4. **update**: ``grpo_epochs`` passes over shuffled mini-batches of ``batch_size x grad_accum``
   responses: PPO's clipped ratio loss plus ``kl_coef`` x the k3 KL to the frozen reference, summed
   over the mini-batch's response tokens and divided by their count (DAPO's token-level aggregation,
   Yu et al. 2025, TRL's ``loss_type="dapo"``; GRPO averages each response first, and Dr. GRPO divides
   by a constant, the batch size times the maximum response length);
5. **sync**: the new weights go into the engine.

Metrics, checkpoints and exact resume work as for PPO (:mod:`rlaif.train.online`). ``max_steps``
counts iterations.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from . import judged as jd
from . import online, rollout
from .common import resolve_model_path
from .config import load_config
from .feedback import pairings, win_rates
from .rl_losses import (
    GROUP_BASELINES, group_advantages, kl_estimate, kl_penalty_loss, length_limit_penalty, policy_loss,
)


@dataclass
class GRPOConfig(jd.JudgedConfig):
    name: str = "grpo"
    rollout_batch_size: int = 8
    samples_per_prompt: int = 4
    """Responses per group (G >= 2)."""
    judge_weight: float = 1.0
    """Weight of the judge's mean win probability in the reward (0 = no judge)."""
    judge_pairs: str = "circular"
    """Pairs judged in a group: "all" (G(G-1)/2) or "circular" (G: each response against the next)."""
    reward_model: str | None = None
    """A sequence-classification reward model (num_labels=1), e.g. <runs>/rm-demo/final."""
    reward_model_weight: float = 1.0
    """Weight of the reward model's score."""
    reward_batch_size: int = 8
    """Responses per reward-model forward pass."""
    reward_fn: str | None = None
    """A programmatic reward "package.module:function", called as f(prompts, responses) -> (B,) scores."""
    reward_fn_weight: float = 1.0
    """Weight of reward_fn's score."""
    missing_eos_penalty: float | None = None
    """Subtracted from the reward of responses that hit max_new_tokens without an end token."""
    baseline: str = "mean"
    """"mean" (GRPO: the group mean) or "rloo" (the mean of the other responses of the group)."""
    scale_rewards: bool = False
    """Divide the advantages by the group's reward standard deviation (GRPO, Shao et al. 2024). Off by
    default (Dr. GRPO, Liu et al. 2025): with it, rewards that differ only by the judge's noise get
    advantages of about +-1."""
    kl_coef: float = 0.04
    """Weight beta of the k3 KL to the reference in the loss."""
    cliprange: float = 0.2
    """Ratio clip epsilon."""
    grpo_epochs: int = 1
    """Passes over each iteration's responses (with 1 and one mini-batch, the ratio is 1)."""

    def __post_init__(self):
        super().__post_init__()
        if self.samples_per_prompt < 2:
            raise ValueError("GRPO compares responses within a group: samples_per_prompt must be >= 2")
        if self.baseline not in GROUP_BASELINES:
            raise ValueError(f"baseline must be one of {GROUP_BASELINES}")
        pairings(2, self.judge_pairs)  # checks the name
        if min(self.judge_weight, self.reward_model_weight, self.reward_fn_weight) < 0:
            raise ValueError("judge_weight, reward_model_weight and reward_fn_weight must be >= 0")
        if not (self.judge_weight > 0 or self.reward_model or self.reward_fn):
            raise ValueError("GRPO needs a reward: judge_weight > 0, reward_model or reward_fn")
        if self.kl_coef < 0 or self.cliprange <= 0 or self.grpo_epochs < 1 or self.reward_batch_size < 1:
            raise ValueError("need kl_coef >= 0, cliprange > 0, grpo_epochs >= 1 and reward_batch_size >= 1")
        if self.rollouts % (self.batch_size * self.grad_accum):
            raise ValueError(f"rollout_batch_size * samples_per_prompt ({self.rollouts}) must be a multiple of the "
                             f"mini-batch batch_size * grad_accum ({self.batch_size * self.grad_accum})")
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            raise ValueError("missing_eos_penalty must be >= 0")


def setup(cfg: GRPOConfig, engine=None, judge=None, reward_fn=None) -> jd.JudgedSession:
    """See :func:`rlaif.train.judged.setup`; ``reward_fn`` (a callable) overrides ``cfg.reward_fn``."""
    per_iter = cfg.grpo_epochs * (cfg.rollouts // (cfg.batch_size * cfg.grad_accum))
    s = jd.setup(cfg, "GRPO", per_iter, engine=engine, judge=judge, need_judge=cfg.judge_weight > 0)
    try:
        if reward_fn is not None or cfg.reward_fn:
            s.extra["reward_fn"] = reward_fn or rollout.load_reward_fn(cfg.reward_fn)
        if cfg.reward_model:
            s.extra["reward_model"] = rollout.SequenceClassifierReward(
                resolve_model_path(cfg.reward_model), s.dist.device, cfg.reward_batch_size, cfg.max_length,
                cfg.trust_remote_code)
    except BaseException:
        jd.cleanup(s)
        raise
    return s


def rewards(s: jd.JudgedSession, it: int, recs, samples) -> tuple[torch.Tensor, dict[str, float], list]:
    """Each response's reward ``(N,)``, the metrics of its parts, and the judged pairs per group."""
    cfg, G = s.cfg, s.cfg.samples_per_prompt
    texts = [x.text for x in samples]
    prompts = [list(r.messages) for r in recs]
    total = torch.zeros(len(texts))
    m: dict[str, float] = {}
    judged: list = []
    if cfg.judge_weight > 0:
        t0 = time.perf_counter()
        judged, jm = jd.judge_step(s, it, recs, texts, cfg.judge_pairs)
        wins = torch.tensor([w for g, group in enumerate(judged) for w in win_rates(G, group)])
        total += cfg.judge_weight * wins
        m.update(jm)
        m["reward/judge"] = online.mean(wins)
        m["time/judge_s"] = time.perf_counter() - t0
    for key, weight in (("reward_model", cfg.reward_model_weight), ("reward_fn", cfg.reward_fn_weight)):
        if key in s.extra:
            part = rollout.score(s.extra[key], prompts, texts)
            total += weight * part
            m[f"reward/{key}"] = online.mean(part)
    if cfg.missing_eos_penalty is not None:
        total = length_limit_penalty(total, torch.tensor([x.ended for x in samples]), cfg.missing_eos_penalty)
    return total, m, judged


def update(s: jd.JudgedSession, batch, old_logp, ref_logp, advantages, it: int) -> dict[str, float]:
    """``grpo_epochs`` passes of the clipped ratio loss plus the KL penalty over shuffled mini-batches."""
    cfg, dev = s.cfg, s.dist.device
    B = batch["input_ids"].shape[0]
    mb = cfg.batch_size * cfg.grad_accum
    mask = batch["response_mask"]
    adv = advantages[:, None] * mask
    g = torch.Generator().manual_seed(online.seed(cfg.seed, "grpo-minibatches", it))
    sums: dict[str, float] = defaultdict(float)
    tokens, steps = 0.0, 0
    s.policy.train()
    for _ in range(cfg.grpo_epochs):
        perm = torch.randperm(B, generator=g)
        for lo in range(0, B, mb):
            mb_idx = perm[lo : lo + mb]
            normalizer = float(mask[mb_idx].sum().clamp(min=1.0))
            for mi in range(0, len(mb_idx), cfg.batch_size):
                idx = mb_idx[mi : mi + cfg.batch_size]
                sub = {k: v.to(dev) for k, v in rollout.select(batch, idx).items()}
                r, m = sub["response_ids"].shape[1], sub["response_mask"]
                part = lambda t: t[idx, :r].to(dev)  # noqa: E731
                with s.autocast():
                    logp, _ = rollout.response_logps(s.policy, sub, cfg.temperature)
                    pl, pm = policy_loss(logp, part(old_logp), part(adv), m, cfg.cliprange, normalizer)
                    kl, km = kl_penalty_loss(logp, part(ref_logp), m, normalizer)
                    loss = pl + cfg.kl_coef * kl
                loss.backward()
                n = float(m.sum())
                tokens += n
                sums["loss"] += float(loss.detach())
                for k, val in {**pm, **km}.items():
                    sums[f"policy/{k}"] += float(val) * n
            norm = online.step_policy(s)
            if norm is not None:
                sums["grad_norm"] += norm
            s.scheduler.step()
            steps += 1
    out = {k: v / steps if k in ("loss", "grad_norm") else v / max(tokens, 1.0) for k, v in sums.items()}
    out["lr"] = s.optimizer.param_groups[0]["lr"]
    return out


def iteration(s: jd.JudgedSession, it: int) -> dict[str, float]:
    """Sample, reward, advantages, update and sync for iteration ``it``; returns its metrics."""
    cfg, G = s.cfg, s.cfg.samples_per_prompt
    t0 = time.perf_counter()
    recs, samples = online.sample(s, it, "grpo")
    t_sample = time.perf_counter()
    reward, m, judged = rewards(s, it, recs, samples)
    t_reward = time.perf_counter()
    adv = group_advantages(reward.view(-1, G), cfg.baseline, cfg.scale_rewards).reshape(-1)
    batch = rollout.collate(samples, s.tokenizer.pad_token_id)
    tok = online.score_tokens(s, batch, cfg.temperature)
    t_score = time.perf_counter()
    up, update_s, sync_s = online.update_and_sync(s, lambda: update(s, batch, tok["old_logp"], tok["ref_logp"], adv, it))
    m.update(up)
    t_end = time.perf_counter()
    jd.commit_pairs(s, it, judged, set(), recs)
    kl = kl_estimate(tok["old_logp"], tok["ref_logp"], "k3") * batch["response_mask"]
    grouped = reward.view(-1, G)
    judge_s = m.pop("time/judge_s", 0.0)
    m.update({
        "reward": online.mean(reward), "reward_std": online.mean(grouped.std(-1)),
        "advantage_abs": online.mean(adv.abs()), "kl": online.mean(kl.sum(-1)), **online.sample_metrics(batch, tok),
        "time/sample_s": t_sample - t0, "time/judge_s": judge_s, "time/reward_s": t_reward - t_sample - judge_s,
        "time/score_s": t_score - t_reward, "time/update_s": update_s, "time/sync_s": sync_s, "time/iteration_s": t_end - t0,
        "judge/time_share": judge_s / (t_end - t0),
    })
    return {f"train/{k}": v for k, v in m.items()}


def train(s: jd.JudgedSession) -> dict[str, float]:
    return online.train_loop(s, iteration, jd.probe, postfix=("train/reward", "train/kl"))


save, cleanup = jd.save, jd.cleanup


def main(config_path: str | None, overrides: list[str] | None = None) -> int:
    cfg = load_config(GRPOConfig, config_path, overrides)
    return jd.main(cfg, setup, train, ("train/reward", "train/kl", "train/judge/tie_rate", "probe/win_rate"))

