"""What the online trainers share (PPO, online DPO, GRPO): prompts, the rollout engine, the
policy and its frozen reference, token log-probs, resume, the iteration loop.

An online trainer samples from the *current* policy through the in-process vLLM engine
(``engine.sample_tokens``: token ids plus the sampler's log-probs, one seeded request per
response), scores what it sampled, takes optimiser steps, and pushes the new weights back
into the engine (``rollout.sync_weights``). Everything random is a function of ``seed`` and
the iteration (prompt order, sampling seeds, mini-batch order, the judge's principles), so a
run resumed from a checkpoint repeats the uninterrupted run.
"""
from __future__ import annotations

import functools
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import rollout
from .checkpoint import MetricsLog, list_checkpoints, load_checkpoint, save_checkpoint
from .common import (
    Dist, apply_lora, load_pretrained, lr_factor, prepare_model, resolve_model_path, unwrap,
    warn_if_config_changed,
)
from .config import TrainConfig, save_config
from rlaif.engine.config import EngineConfig


def rollout_engine() -> EngineConfig:
    """The online trainers' engine defaults: 1 GiB of KV cache, sleep mode during updates (GPU hosts)."""
    return EngineConfig(kv_cache_gib=1.0, sleep_mode=True)


@dataclass
class OnlineConfig(TrainConfig):
    """Settings every online trainer shares."""

    lr: float = 1e-6
    eval_fraction: float = 0.0
    """Fraction of prompts held out (PPO logs their mean score; online DPO and GRPO probe on them)."""
    ref_model: str | None = None
    """Frozen reference for the KL (default: the starting policy)."""
    rollout_batch_size: int = 16
    """Prompts per iteration."""
    samples_per_prompt: int = 1
    """Responses sampled per prompt."""
    max_new_tokens: int = 64
    """Most tokens per response (and at most max_length minus the prompt)."""
    temperature: float = 1.0
    """Sampling temperature; the trainer divides its logits by it too, so the ratios stay exact."""
    engine: EngineConfig = field(default_factory=rollout_engine)
    """The rollout engine (:class:`rlaif.engine.config.EngineConfig`; here by default 1 GiB of KV cache,
    ``sleep_mode`` on, ``max_model_len`` = ``max_length``). Only the in-process vLLM backend: its
    weights are replaced in place after every update, which a server, plain transformers or the fake
    engine cannot do."""

    def __post_init__(self):
        super().__post_init__()
        if self.engine.backend != "vllm":
            raise ValueError(f"engine.backend={self.engine.backend!r}: the online trainers (ppo, online-dpo, grpo) sample "
                             "with the in-process vLLM engine only (its weights are replaced after every update); "
                             "use engine.backend=vllm")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if min(self.rollout_batch_size, self.samples_per_prompt, self.max_new_tokens) < 1:
            raise ValueError("rollout_batch_size, samples_per_prompt and max_new_tokens must be >= 1")

    @property
    def rollouts(self) -> int:
        """Responses per iteration."""
        return self.rollout_batch_size * self.samples_per_prompt


# ------------------------------------------------------------------- set-up
def seed(*parts) -> int:
    from rlaif.seeds import derive_seed

    return derive_seed(*parts)


def no_dropout(model):
    """Dropout makes the trainer's log-probs differ from the sampler's; online training runs without it."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def encode_prompts(records, tok, cfg: OnlineConfig) -> tuple[list, list[list[int]]]:
    """Chat-templated prompt ids (with the assistant generation prompt), truncated or dropped."""
    keep, ids = [], []
    for rec in records:
        text = tok.apply_chat_template(list(rec.messages), tokenize=False, add_generation_prompt=True)
        p = list(tok(text, add_special_tokens=False)["input_ids"])
        if len(p) > cfg.max_prompt_length:
            if cfg.truncation == "drop":
                continue
            p = p[-cfg.max_prompt_length:]
        keep.append(rec)
        ids.append(p)
    return keep, ids


def load_prompts(cfg: OnlineConfig, tok):
    """Training and held-out prompts (records and token ids)."""
    from rlaif.data.prompts import read_prompts

    records = read_prompts(cfg.data)
    ev = read_prompts(cfg.eval_data) if cfg.eval_data else []
    if not cfg.eval_data and cfg.eval_fraction > 0:
        order = list(range(len(records)))
        random.Random(cfg.seed).shuffle(order)
        n_eval = max(1, round(cfg.eval_fraction * len(records)))
        held = set(order[:n_eval])
        ev = [r for i, r in enumerate(records) if i in held]
        records = [r for i, r in enumerate(records) if i not in held]
    train, train_ids = encode_prompts(records, tok, cfg)
    ev, ev_ids = encode_prompts(ev, tok, cfg)
    if not train:
        raise ValueError(f"no prompts left in {cfg.data} (check max_prompt_length / truncation)")
    return train, train_ids, ev, ev_ids


def load_policy_and_reference(cfg: OnlineConfig, path: str, d: Dist):
    """The trainable policy and the frozen reference (None with LoRA and no ``ref_model``: the
    reference is then the policy with its adapters switched off, no second copy)."""
    from transformers import AutoModelForCausalLM

    policy = prepare_model(no_dropout(apply_lora(load_pretrained(AutoModelForCausalLM, path, cfg), cfg, "CAUSAL_LM")), cfg, d)
    ref = None
    if cfg.ref_model or not cfg.lora.enabled:
        ref_path = resolve_model_path(cfg.ref_model) if cfg.ref_model else path
        ref = no_dropout(load_pretrained(AutoModelForCausalLM, ref_path, cfg)).to(d.device).eval().requires_grad_(False)
    return policy, ref


def single_process(d: Dist, what: str) -> None:
    if d.world > 1:
        raise ValueError(f"{what} runs in a single process (the vLLM engine lives in it); start it without torchrun")


def build_optimizer(groups: list[tuple[Any, float]], cfg: TrainConfig, total_steps: int):
    """AdamW over (model, lr) groups, no decay on biases and norms; one schedule over ``total_steps``."""
    param_groups = []
    for model, lr in groups:
        params = [p for p in model.parameters() if p.requires_grad]
        for ps, wd in (([p for p in params if p.ndim >= 2], cfg.weight_decay), ([p for p in params if p.ndim < 2], 0.0)):
            if ps:
                param_groups.append({"params": ps, "weight_decay": wd, "lr": lr})
    opt = torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.adam_betas, fused=True)
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, total_steps, warmup, cfg.lr_schedule, cfg.min_lr_ratio)
    )
    return opt, sched


def total_iterations(cfg: OnlineConfig, n_prompts: int) -> int:
    return cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * math.ceil(n_prompts / cfg.rollout_batch_size)


def make_engine(cfg: OnlineConfig, path: str):
    """The rollout engine, from the same factory as ``rlaif generate``'s (``rlaif.engine.create_engine``)."""
    from rlaif.engine import create_engine

    e = cfg.engine
    return create_engine(path, e, seed=cfg.seed, show_progress=False, max_model_len=e.max_model_len or cfg.max_length,
                         trust_remote_code=cfg.trust_remote_code or e.trust_remote_code)


def resume_or_start(s, position: dict[str, Any]) -> None:
    """Load the latest checkpoint (``cfg.resume``) into ``s.models``, ``s.optimizer``, ``s.scheduler``
    and ``s.position`` (starting from ``position``), or start fresh; write config.yaml; open the log."""
    cfg = s.cfg
    ckpt = None
    if cfg.resume not in (False, None, "false", "no"):
        ckpt = Path(cfg.resume) if cfg.resume != "auto" else (list_checkpoints(s.run_dir) or [None])[-1]
    s.position = dict(position)
    if ckpt is not None:
        warn_if_config_changed(cfg, s.run_dir)
        s.position.update(load_checkpoint(ckpt, s.models, s.optimizer, s.scheduler))
    else:  # a fresh start must never resume later from an older run's checkpoints
        shutil.rmtree(s.run_dir / "checkpoints", ignore_errors=True)
    save_config(cfg, s.run_dir)
    s.log = MetricsLog(s.run_dir, cfg.tensorboard, resume_step=s.position["step"])


def checkpoint(s) -> Path:
    return save_checkpoint(s.run_dir, s.models, s.optimizer, s.scheduler, dict(s.position), s.cfg.keep_checkpoints)


# ------------------------------------------------------------------ one iteration
@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed_: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"{seed_}:ppo:{epoch}").shuffle(order)
    return tuple(order)


def prompt_indices(n: int, size: int, seed: int, iteration: int) -> list[int]:
    """Prompts of ``iteration``: the next ``size`` of a reshuffled-every-epoch order (a pure function)."""
    return [_permutation(n, seed, k // n)[k % n] for k in range(iteration * size, (iteration + 1) * size)]


def sample(s, iteration: int, tag: str):
    """Roll out iteration ``iteration``: ``samples_per_prompt`` responses to each of its prompts,
    grouped by prompt (responses of one prompt are adjacent). Returns (records, samples)."""
    cfg = s.cfg
    idx = prompt_indices(len(s.prompts), cfg.rollout_batch_size, cfg.seed, iteration)
    recs = [s.prompts[i] for i in idx for _ in range(cfg.samples_per_prompt)]
    ids = [s.prompt_ids[i] for i in idx for _ in range(cfg.samples_per_prompt)]
    seeds = [seed(cfg.seed, tag, iteration, s.prompts[i].id, j) for i in idx for j in range(cfg.samples_per_prompt)]
    return recs, s.engine.sample_tokens(ids, seeds, cfg.max_new_tokens, cfg.temperature)


def reference_context(s):
    """Context in which the policy scores as the reference: LoRA without a ``ref_model`` switches
    the adapters off; otherwise nothing to do (``s.ref`` is the reference)."""
    import contextlib

    if s.ref is not None:
        return contextlib.nullcontext()
    return unwrap(s.policy).disable_adapter()


@torch.no_grad()
def score_tokens(s, batch: dict[str, torch.Tensor], temperature: float, critic=None) -> dict[str, torch.Tensor]:
    """Per response token, ``(B, R)``: the policy's log-probs (``old_logp``) and entropies, the
    reference's log-probs (``ref_logp``), both at ``temperature``, and the critic's values when one is given."""
    B, R = batch["response_ids"].shape
    keys = ("old_logp", "entropy", "ref_logp") + (("values",) if critic is not None else ())
    out = {k: torch.zeros(B, R) for k in keys}
    s.policy.eval()
    if critic is not None:
        critic.eval()
    for start in range(0, B, s.cfg.batch_size):
        idx = torch.arange(start, min(B, start + s.cfg.batch_size))
        sub = {k: v.to(s.dist.device) for k, v in rollout.select(batch, idx).items()}
        r = sub["response_ids"].shape[1]
        with s.autocast():
            got = dict(zip(("old_logp", "entropy"), rollout.response_logps(s.policy, sub, temperature, with_entropy=True)))
            with reference_context(s):
                got["ref_logp"], _ = rollout.response_logps(s.ref if s.ref is not None else s.policy, sub, temperature)
            if critic is not None:
                got["values"] = rollout.response_values(critic, sub)
        for k, t in got.items():
            out[k][idx, :r] = t.float().cpu()
    m = batch["response_mask"]
    return {k: v * m for k, v in out.items()}


def sync_weights(s) -> float:
    """Load the policy's weights into the running engine; returns seconds."""
    return rollout.sync_weights(s.engine, unwrap(s.policy))


def sleep_engine(s) -> bool:
    """Put the engine to sleep for the update where vLLM supports it; returns whether it slept."""
    return bool(s.cfg.engine.sleep_mode and hasattr(s.engine, "sleep") and s.engine.sleep())


def update_and_sync(s, update: Callable[[], dict[str, float]]) -> tuple[dict[str, float], float, float]:
    """Run ``update`` with the engine asleep where vLLM supports it (weights offloaded, KV cache freed),
    wake it and load the new weights into it; (the update's metrics, its seconds, the sync's seconds)."""
    import time

    t0 = time.perf_counter()
    asleep = sleep_engine(s)
    m = update()
    update_s = time.perf_counter() - t0
    if asleep:
        s.engine.wake_up()
    return m, update_s, sync_weights(s)


def step_policy(s) -> float | None:
    """Clip the policy's gradient norm (when ``max_grad_norm`` > 0), take the optimiser step and clear the
    gradients; the norm before clipping, or None without clipping."""
    norm = None
    if s.cfg.max_grad_norm > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(s.policy.parameters(), s.cfg.max_grad_norm))
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    return norm


def sample_metrics(batch: dict[str, torch.Tensor], tok: dict[str, torch.Tensor]) -> dict[str, float]:
    """What every online trainer logs of its samples: entropy, length, truncation, the sampler-trainer gap."""
    from .rl_losses import masked_mean

    mask = batch["response_mask"]
    return {"entropy": float(masked_mean(tok["entropy"], mask)), "response_length": mean(batch["length"]),
            "truncated": mean((~batch["ended"]).float()), **logprob_gap(batch, tok["old_logp"])}


def mean(x: torch.Tensor) -> float:
    return float(x.float().mean()) if x.numel() else 0.0


def logprob_gap(batch: dict[str, torch.Tensor], old_logp: torch.Tensor) -> dict[str, float]:
    """How far the sampler's log-probs lie from the trainer's (the weight sync's check)."""
    from .rl_losses import masked_mean

    mask = batch["response_mask"]
    gap = (batch["engine_logp"] - old_logp).abs() * mask
    return {"rollout/logprob_gap_mean": float(masked_mean(gap, mask)), "rollout/logprob_gap_max": float(gap.max())}


# ------------------------------------------------------------------ the loop
def train_loop(s, iteration: Callable[[Any, int], dict[str, float]], evaluate: Callable[[Any, int], dict[str, float]],
               postfix: tuple[str, ...] = ()) -> dict[str, float]:
    """Run ``iteration(s, it)`` up to ``s.total_steps``, logging, evaluating every ``eval_every`` and
    checkpointing every ``save_every`` iterations; returns the last iteration's and the final eval metrics."""
    from tqdm.auto import tqdm

    cfg, pos = s.cfg, s.position
    bar = tqdm(total=s.total_steps, initial=pos["step"], desc=cfg.name, dynamic_ncols=True)
    last: dict[str, float] = {}
    if pos.pop("probe_due", False):  # the evaluation a stopped run owed (its judge was gone)
        s.log.log(pos["step"], stopping(s, bar, evaluate, pos["step"], due=True))
    while pos["step"] < s.total_steps:
        last = stopping(s, bar, iteration, pos["step"])
        pos["step"] += 1
        step = pos["step"]
        if step % cfg.log_every == 0 or step == s.total_steps:
            s.log.log(step, last)
        bar.update(1)
        bar.set_postfix({k.rsplit("/", 1)[-1]: f"{last[k]:.3f}" for k in postfix if k in last})
        if cfg.eval_every and step % cfg.eval_every == 0 and step < s.total_steps:
            s.log.log(step, stopping(s, bar, evaluate, step, due=True))
        if cfg.save_every and step % cfg.save_every == 0 and step < s.total_steps:
            checkpoint(s)
    final_eval = stopping(s, bar, evaluate, pos["step"])
    bar.close()
    if final_eval:
        s.log.log(pos["step"], final_eval)
    checkpoint(s)
    return {**last, **final_eval}


def stopping(s, bar, work: Callable[[Any, int], dict[str, float]], step: int, due: bool = False) -> dict[str, float]:
    """``work(s, step)``; when its judge is gone (:class:`rlaif.engine.failures.ServerGone`), checkpoint
    the last finished iteration (the RNG as it was before ``work``) and stop. ``due``: an evaluation the
    resumed run owes first (a stopped final evaluation needs no mark: a resumed run at the end evaluates)."""
    from rlaif.engine.failures import ServerGone

    from .checkpoint import rng_state, set_rng_state

    before = rng_state()
    try:
        return work(s, step)
    except ServerGone as exc:
        bar.close()
        set_rng_state(before)
        if due:
            s.position["probe_due"] = True
        path = checkpoint(s)
        raise ServerGone(f"{exc}; the run is checkpointed at iteration {s.position['step']} ({path.name})") from exc


def close(s) -> None:
    """Close the metric log and the engines the session started (not ones handed to it)."""
    if s.log is not None:
        s.log.close()
    if getattr(s, "owns_engine", False) and s.engine is not None:
        s.engine.close()
        s.engine = None
