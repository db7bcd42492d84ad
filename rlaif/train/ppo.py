"""PPO recipe: a policy against a reward model, with rollouts from vLLM in the same process.

Each iteration (Ouyang et al. 2022; Ziegler et al. 2019):

1. **rollout**: ``rollout_batch_size`` prompts, ``samples_per_prompt`` responses each,
   sampled by the in-process vLLM engine, which holds the current policy weights;
2. **scoring**: the reward function scores every response (minus ``missing_eos_penalty``
   for responses cut at the token limit); the trainer's policy, the frozen reference
   and the critic score every response token;
3. per-token rewards ``-beta * kl_t`` plus the score on the last token (with ``prm``, plus each step's
   PRM score on the token that ends the step: rlaif.train.process_rewards), GAE, whitening;
4. **update**: ``ppo_epochs`` passes of clipped policy and value losses over shuffled
   mini-batches of ``batch_size * grad_accum`` responses;
5. **sync**: the new policy weights are loaded into the running engine
   (``VLLMEngine.update_weights``: shared memory, no restart, no checkpoint on disk).

Counting: ``max_steps`` counts PPO iterations (when -1: ``epochs`` passes over the
prompts); ``save_every`` / ``eval_every`` / ``log_every`` count iterations too. One
iteration makes ``ppo_epochs * rollout_batch_size * samples_per_prompt /
(batch_size * grad_accum)`` optimiser steps, and the learning-rate schedule runs over
all of them. Everything random is a function of ``seed`` and the iteration (prompt
order, sampling seeds, mini-batch order), so a run resumed from a checkpoint repeats
the uninterrupted run.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlaif.reward.functions import load_reward_fn, score
from rlaif.reward.models import SequenceClassifierReward

from . import online, process_rewards, rollout
from .checkpoint import MetricsLog
from .common import (
    Dist, apply_lora, autocast_context, autocast_dtype, load_tokenizer, prepare_model, resolve_model_path, save_final,
    seed_everything, setup_device, unwrap,
)
from .config import load_config
from .online import (  # noqa: F401  (encode_prompts, load_prompts, prompt_indices, make_engine: PPO's names too)
    OnlineConfig, encode_prompts, load_prompts, make_engine, prompt_indices, total_iterations,
)
from .process_losses import step_token_rewards
from .rl_losses import (
    KL_ESTIMATORS, adaptive_kl_coef, gae, kl_estimate, length_limit_penalty, masked_mean, masked_whiten, policy_loss,
    token_rewards, value_loss,
)


@dataclass
class PPOConfig(OnlineConfig):
    name: str = "ppo"
    reward_model: str | None = None
    """Sequence-classification reward model (num_labels=1), e.g. <runs>/rm-demo/final."""
    reward_fn: str | None = None
    """A programmatic reward instead: "package.module:function", called as f(prompts, responses) -> (B,) scores."""
    reward_batch_size: int = 8
    """Responses per reward-model forward pass."""
    prm: str | None = None
    """A process reward model (rlaif train prm) as a dense reward: each step's score on the token that ends it."""
    prm_weight: float = 1.0
    """Weight of the PRM's step scores."""
    critic_model: str | None = None
    """Starting point of the critic (default: the policy; a fresh scalar head is added and zeroed).
    A reward model folder also works (InstructGPT) when it shares the policy's tokenizer."""
    critic_lr: float | None = None
    """Critic learning rate (default: lr)."""
    ppo_epochs: int = 1
    """Passes over each iteration's rollouts."""
    target_kl: float | None = None
    """Early stop: once a mini-batch's approximate KL to the rollout policy exceeds 1.5 x target_kl,
    that mini-batch is not applied and the iteration's remaining PPO epochs are skipped (the
    learning-rate schedule still advances as if they ran). None never stops early."""
    cliprange: float = 0.2
    """Policy ratio clip epsilon."""
    cliprange_value: float = 0.2
    """Value clip epsilon (in reward units)."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE lambda."""
    kl_coef: float = 0.05
    """KL penalty coefficient beta (its start value when adaptive_kl)."""
    kl_estimator: str = "k1"
    """Per-token KL estimate in the reward: "k1" (log-ratio), "k2" or "k3" (Schulman 2020)."""
    adaptive_kl: bool = False
    """Adapt beta towards kl_target (Ziegler et al. 2019); false keeps it fixed."""
    kl_target: float = 6.0
    """Target KL per response (nats) of the adaptive controller."""
    kl_horizon: float = 10000.0
    """Horizon of the adaptive controller, in responses."""
    whiten_rewards: bool = False
    """Rescale the per-token rewards of each iteration to unit variance (mean kept)."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean, unit variance per iteration."""
    missing_eos_penalty: float | None = None
    """Subtracted from the score of responses that hit max_new_tokens without an end token."""
    score_clip: float | None = None
    """Clip scores to [-score_clip, score_clip]."""
    save_critic: bool = False
    """Also save the critic to <run>/critic."""

    def __post_init__(self):
        super().__post_init__()
        if self.reward_model and self.reward_fn:
            raise ValueError("set reward_model or reward_fn, not both")
        if self.prm_weight < 0:
            raise ValueError("prm_weight must be >= 0")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ValueError("gamma and lam must lie in [0, 1]")
        if self.cliprange <= 0 or self.cliprange_value <= 0:
            raise ValueError("cliprange and cliprange_value must be > 0")
        if self.target_kl is not None and self.target_kl <= 0:
            raise ValueError("target_kl must be > 0 (or null)")
        if self.kl_coef < 0 or self.kl_target <= 0 or self.kl_horizon <= 0:
            raise ValueError("need kl_coef >= 0, kl_target > 0 and kl_horizon > 0")
        if min(self.ppo_epochs, self.reward_batch_size) < 1:
            raise ValueError("ppo_epochs and reward_batch_size must be >= 1")
        if self.rollouts % (self.batch_size * self.grad_accum):
            raise ValueError(
                f"rollout_batch_size * samples_per_prompt ({self.rollouts}) must be a multiple of the "
                f"mini-batch batch_size * grad_accum ({self.batch_size * self.grad_accum})"
            )
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            raise ValueError("missing_eos_penalty must be >= 0")
        if self.score_clip is not None and self.score_clip <= 0:
            raise ValueError("score_clip must be > 0")
        if self.critic_lr is not None and self.critic_lr <= 0:
            raise ValueError("critic_lr must be > 0")


@dataclass
class PPOSession:
    cfg: PPOConfig
    policy: Any
    critic: Any
    ref: Any
    tokenizer: Any
    engine: Any
    reward_fn: Any
    prompts: list  # PromptRecord
    prompt_ids: list[list[int]]
    eval_prompts: list
    eval_ids: list[list[int]]
    dist: Dist
    amp: torch.dtype | None
    owns_engine: bool = True
    models: Any = None  # ModuleDict(policy, critic): what checkpoints hold
    optimizer: Any = None
    scheduler: Any = None
    position: dict[str, Any] = field(default_factory=lambda: {"step": 0, "kl_coef": 0.0})
    total_steps: int = 0
    log: MetricsLog | None = None
    prm: Any = None  # a process reward model (dense step rewards), or None

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    def autocast(self):
        return autocast_context(self.dist, self.amp)


# ------------------------------------------------------------------- set-up
def _load_critic(path: str, cfg: PPOConfig, pad_id: int):
    from transformers import AutoModelForTokenClassification

    critic, info = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=1, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code, output_loading_info=True,
    )
    head = getattr(critic, "score", None) or getattr(critic, "classifier", None)
    if head is not None and any(k.startswith(("score.", "classifier.")) for k in info.get("missing_keys", [])):
        with torch.no_grad():  # a fresh head predicts 0 everywhere rather than noise
            for p in head.parameters():
                p.zero_()
    critic.config.pad_token_id = pad_id
    return critic


def setup(cfg: PPOConfig, engine=None, reward_fn=None) -> PPOSession:
    """Models, prompts, reward, engine, optimiser; resume from a checkpoint; sync the engine.

    ``engine`` (a running ``VLLMEngine`` of the same architecture and tokenizer) and
    ``reward_fn`` (a callable) override what the config names; a passed engine is not closed
    by :func:`cleanup`.
    """
    d = setup_device(cfg)
    online.single_process(d, "PPO")
    seed_everything(cfg.seed)
    path = resolve_model_path(cfg.model)
    tok = load_tokenizer(path, cfg.trust_remote_code)
    train_p, train_ids, ev_p, ev_ids = load_prompts(cfg, tok)
    # With LoRA, policy and critic train adapters (the critic's score head in full), the reference
    # is the policy with its adapters switched off (no copy), and the engine gets merged weights.
    policy, ref = online.load_policy_and_reference(cfg, path, d)
    critic_path = resolve_model_path(cfg.critic_model) if cfg.critic_model else path
    critic = prepare_model(online.no_dropout(apply_lora(_load_critic(critic_path, cfg, tok.pad_token_id), cfg, "SEQ_CLS")), cfg, d)
    if reward_fn is None:
        if cfg.reward_fn:
            reward_fn = load_reward_fn(cfg.reward_fn)
        elif cfg.reward_model:
            reward_fn = SequenceClassifierReward(
                resolve_model_path(cfg.reward_model), d.device, cfg.reward_batch_size, cfg.max_length, cfg.trust_remote_code)
        elif not cfg.prm:
            raise ValueError("PPO needs a reward: set reward_model (a folder), reward_fn (module:function) or prm (a folder)")
    owns = engine is None
    s = PPOSession(cfg, policy, critic, ref, tok, engine, reward_fn, train_p, train_ids, ev_p, ev_ids, d,
                   autocast_dtype(cfg, d.device), owns_engine=owns)
    if cfg.prm:
        s.prm = process_rewards.load_prm(cfg.prm, d.device, cfg.reward_batch_size, cfg.max_length, cfg.trust_remote_code)
    s.models = torch.nn.ModuleDict({"policy": unwrap(policy), "critic": unwrap(critic)})
    updates_per_iter = cfg.ppo_epochs * (cfg.rollouts // (cfg.batch_size * cfg.grad_accum))
    s.total_steps = total_iterations(cfg, len(train_p))
    s.optimizer, s.scheduler = online.build_optimizer(
        [(policy, cfg.lr), (critic, cfg.critic_lr or cfg.lr)], cfg, s.total_steps * updates_per_iter)
    online.resume_or_start(s, {"step": 0, "kl_coef": cfg.kl_coef})
    if owns:
        s.engine = make_engine(cfg, path)
    online.sync_weights(s)  # the engine always serves the trainer's weights, resumed ones included
    return s


# ------------------------------------------------------------------ one iteration
def score_tokens(s: PPOSession, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Policy log-probs and entropies, reference log-probs and values of every response token, ``(B, R)``."""
    return online.score_tokens(s, batch, s.cfg.temperature, critic=s.critic)


def update(s: PPOSession, batch, old_logp, old_values, advantages, returns, iteration: int) -> dict[str, float]:
    """``ppo_epochs`` passes of clipped policy + value losses over shuffled mini-batches."""
    cfg, dev = s.cfg, s.dist.device
    B = batch["input_ids"].shape[0]
    mb = cfg.batch_size * cfg.grad_accum
    mask = batch["response_mask"]
    g = torch.Generator().manual_seed(online.seed(cfg.seed, "ppo-minibatches", iteration))
    sums: dict[str, float] = defaultdict(float)
    tokens, steps = 0.0, 0
    s.policy.train(), s.critic.train()
    planned = cfg.ppo_epochs * math.ceil(B / mb)
    stopped = False
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(B, generator=g)
        for lo in range(0, B, mb):
            mb_idx = perm[lo : lo + mb]
            normalizer = float(mask[mb_idx].sum().clamp(min=1.0))
            mb_sums: dict[str, float] = defaultdict(float)
            mb_tokens = 0.0
            for mi in range(0, len(mb_idx), cfg.batch_size):
                idx = mb_idx[mi : mi + cfg.batch_size]
                sub = {k: v.to(dev) for k, v in rollout.select(batch, idx).items()}
                r = sub["response_ids"].shape[1]
                m = sub["response_mask"]
                part = lambda t: t[idx, :r].to(dev)  # noqa: E731
                with s.autocast():
                    logp, _ = rollout.response_logps(s.policy, sub, cfg.temperature)
                    pl, pm = policy_loss(logp, part(old_logp), part(advantages), m, cfg.cliprange, normalizer)
                    v = rollout.response_values(s.critic, sub)
                    vl, vm = value_loss(v, part(old_values), part(returns), m, cfg.cliprange_value, normalizer)
                (pl + vl).backward()  # separate models: each loss reaches only its own
                n = float(m.sum())
                mb_tokens += n
                mb_sums["policy/loss"] += float(pl.detach())
                mb_sums["value/loss"] += float(vl.detach())
                for pre, d in (("policy/", pm), ("value/", vm)):
                    for k, val in d.items():
                        mb_sums[pre + k] += float(val) * n
            if cfg.target_kl is not None and mb_sums["policy/approx_kl"] / max(mb_tokens, 1.0) > 1.5 * cfg.target_kl:
                # this mini-batch already drifted too far from the rollout policy: drop it and stop
                s.optimizer.zero_grad(set_to_none=True)
                stopped = True
                break
            for k, val in mb_sums.items():
                sums[k] += val
            tokens += mb_tokens
            if cfg.max_grad_norm > 0:
                sums["policy/grad_norm"] += float(torch.nn.utils.clip_grad_norm_(s.policy.parameters(), cfg.max_grad_norm))
                sums["value/grad_norm"] += float(torch.nn.utils.clip_grad_norm_(s.critic.parameters(), cfg.max_grad_norm))
            s.optimizer.step()
            s.scheduler.step()
            s.optimizer.zero_grad(set_to_none=True)
            steps += 1
        if stopped:
            break
    for _ in range(planned - steps):  # keep the schedule a function of the iteration
        s.scheduler.step()
    per_step = ("policy/loss", "value/loss", "policy/grad_norm", "value/grad_norm")
    out = {k: v / max(steps, 1) if k in per_step else v / max(tokens, 1.0) for k, v in sums.items()}
    out["policy/update_steps"] = float(steps)
    out["policy/early_stop"] = float(stopped)
    out["lr"] = s.optimizer.param_groups[0]["lr"]
    return out


def iteration(s: PPOSession, it: int) -> dict[str, float]:
    """Rollout, scoring, advantages, update and weight sync of iteration ``it``; returns its metrics."""
    cfg = s.cfg
    t0 = time.perf_counter()
    # -- rollout
    recs, samples = online.sample(s, it, "ppo")
    t_roll = time.perf_counter()
    # -- scoring
    prompts = [list(r.messages) for r in recs]
    scores = score(s.reward_fn, prompts, [x.text for x in samples]) if s.reward_fn is not None else torch.zeros(len(samples))
    steps = process_rewards.step_layout(s.prm, s.tokenizer, prompts, samples) if s.prm is not None else None
    batch = rollout.collate(samples, s.tokenizer.pad_token_id)
    tok = score_tokens(s, batch)
    t_score = time.perf_counter()
    # -- rewards and advantages
    mask = batch["response_mask"]
    raw = scores
    if cfg.score_clip is not None:
        scores = scores.clamp(-cfg.score_clip, cfg.score_clip)
    if cfg.missing_eos_penalty is not None:
        scores = length_limit_penalty(scores, batch["ended"], cfg.missing_eos_penalty)
    kl = kl_estimate(tok["old_logp"], tok["ref_logp"], cfg.kl_estimator) * mask
    beta = float(s.position["kl_coef"])
    rewards = token_rewards(scores, kl, mask, beta)
    if steps is not None:  # the PRM's step scores on the tokens that end the steps (Math-Shepherd sec. 3.4)
        rewards = rewards + cfg.prm_weight * step_token_rewards(*steps, rewards.shape[1]) * mask
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    adv, returns = gae(rewards, tok["values"], mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        adv = masked_whiten(adv, mask)
    # -- update (the engine sleeps through it where vLLM supports that: weights offloaded, KV cache freed)
    m, update_s, sync_s = online.update_and_sync(s, lambda: update(s, batch, tok["old_logp"], tok["values"], adv, returns, it))
    t_end = time.perf_counter()
    seq_kl = kl.sum(-1)
    if cfg.adaptive_kl:
        s.position["kl_coef"] = adaptive_kl_coef(beta, float(seq_kl.mean()), cfg.kl_target, cfg.kl_horizon, len(samples))
    n_tokens = int(batch["length"].sum())
    k1 = kl_estimate(tok["old_logp"], tok["ref_logp"], "k1") * mask
    k3 = kl_estimate(tok["old_logp"], tok["ref_logp"], "k3") * mask
    m.update({
        "score": online.mean(raw), "score_std": float(raw.std()) if raw.numel() > 1 else 0.0,
        "reward": online.mean((rewards * mask).sum(-1)), "kl": online.mean(seq_kl), "kl_k1": online.mean(k1.sum(-1)),
        "kl_k3": online.mean(k3.sum(-1)), "kl_coef": beta, "non_score_reward": -beta * online.mean(seq_kl),
        **online.sample_metrics(batch, tok), "values": float(masked_mean(tok["values"], mask)),
        "returns": float(masked_mean(returns, mask)),
        "rollout/tokens_per_s": n_tokens / max(t_roll - t0, 1e-9),
        "time/rollout_s": t_roll - t0, "time/score_s": t_score - t_roll, "time/update_s": update_s,
        "time/sync_s": sync_s, "time/iteration_s": t_end - t0,
        **(process_rewards.step_metrics(steps[0], steps[2]) if steps is not None else {}),
    })
    return {f"train/{k}": v for k, v in m.items()}


@torch.no_grad()
def evaluate(s: PPOSession, it: int) -> dict[str, float]:
    """Mean score of one sampled response per held-out prompt."""
    if not s.eval_prompts:
        return {}
    seeds = [online.seed(s.cfg.seed, "ppo-eval", it, r.id) for r in s.eval_prompts]
    samples = s.engine.sample_tokens(s.eval_ids, seeds, s.cfg.max_new_tokens, s.cfg.temperature)
    prompts = [list(r.messages) for r in s.eval_prompts]
    scores = score(s.reward_fn if s.reward_fn is not None else s.prm, prompts, [x.text for x in samples])
    return {
        "eval/score": online.mean(scores),
        "eval/response_length": sum(len(x.response_ids) for x in samples) / len(samples),
        "eval/truncated": sum(not x.ended for x in samples) / len(samples),
    }


# ------------------------------------------------------------------ the loop
def train(s: PPOSession) -> dict[str, float]:
    """Run iterations up to ``s.total_steps``; returns the last iteration's and the final eval metrics."""
    return online.train_loop(s, iteration, evaluate, postfix=("train/score", "train/kl"))


def save(s: PPOSession) -> Path:
    if s.cfg.save_critic:
        save_final(s.critic, s.tokenizer, s.run_dir / "critic", s.cfg)
    return save_final(s.policy, s.tokenizer, s.run_dir / "final", s.cfg)


def cleanup(s: PPOSession) -> None:
    online.close(s)


def main(config_path: str | None, overrides: list[str] | None = None) -> int:
    cfg = load_config(PPOConfig, config_path, overrides)
    s = setup(cfg)
    try:
        metrics = train(s)
        out = save(s)
    finally:
        cleanup(s)
    keys = ("train/score", "train/kl", "train/entropy", "eval/score")
    print(f"[rlaif.train] policy saved to {out}; " + ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics))
    return 0
