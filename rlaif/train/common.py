"""Pieces every recipe shares: model set-up, optimiser and schedule, the step loop.

A recipe (``sft.py``, ``rm.py``, ``dpo.py``) builds a :class:`Session`, hands
:func:`fit` a :class:`LoopSpec` (how to collate, count and score a batch), and saves
the final model. The loop owns gradient accumulation, clipping, bf16 autocast,
logging, evaluation, checkpoints and exact resume; the recipe owns the maths.
Loading, wrapping and saving the model live in :mod:`rlaif.train.model_setup` (the recipes
import them from here too).
"""
from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoint import MetricsLog, list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig, save_config
from .batches import length_grouped_batches
from .distributed import layout, resume_position
from .model_setup import (  # noqa: F401  (the recipes import the model set-up from here)
    Dist, apply_lora, autocast_context, autocast_dtype, is_fsdp, load_pretrained, load_tokenizer, prepare_model,
    resolve_model_path, save_dtype, save_final, setup_device, unwrap, wrap_parallel,
)


# --------------------------------------------------------- optimiser / schedule
def lr_factor(step: int, total: int, warmup: int, kind: str, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier before optimiser step ``step`` (0-based).

    Linear warm-up ``(step + 1) / (warmup + 1)`` (never zero, so no step is wasted),
    then ``constant``, ``linear`` or half-``cosine`` decay from 1 to ``min_ratio``
    at ``step = total``.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model, cfg: TrainConfig, total_steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases and norms are not decayed
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.adam_betas,
        # one fused kernel for all parameters (CPU and CUDA); sharded (DTensor) parameters
        # use the multi-tensor path
        **({"fused": True} if not any(hasattr(p, "device_mesh") for p in params) else {"foreach": True}),
    )
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup, cfg.lr_schedule, cfg.min_lr_ratio)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ----------------------------------------------------------------- the loop
@dataclass
class LoopSpec:
    """What a recipe tells the loop.

    ``loss_fn(session, batch, normalizer) -> (loss, metrics)`` where the loss is
    already divided by ``normalizer`` (the step's total of ``count(batch)``);
    ``count(batch)`` is the unit the loss averages over (pairs, or trained tokens).
    """

    collate: Callable[[list[dict]], dict[str, torch.Tensor]]
    length: Callable[[dict], int]
    count: Callable[[dict[str, torch.Tensor]], int]
    loss_fn: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class Session:
    cfg: TrainConfig
    model: Any
    tokenizer: Any
    train: list[dict]
    eval: list[dict]
    dist: Dist
    amp: torch.dtype | None
    optimizer: Any = None
    scheduler: Any = None
    position: dict[str, int] = field(default_factory=lambda: {"step": 0, "epoch": 0, "micro": 0})
    total_steps: int = 0
    log: MetricsLog | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    def autocast(self):
        return autocast_context(self.dist, self.amp)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.dist.device) for k, v in batch.items()}


def micro_batches(s: Session, spec: LoopSpec, epoch: int) -> list[list[dict]]:
    """This process's micro-batches for ``epoch`` (a pure function of seed and epoch)."""
    lengths = [spec.length(e) for e in s.train]
    idx = length_grouped_batches(lengths, s.cfg.batch_size, s.cfg.seed, epoch, s.cfg.length_grouping)
    if s.dist.world > 1:  # every process gets the same number of batches
        idx = idx[: len(idx) - len(idx) % s.dist.world][s.dist.rank :: s.dist.world]
    return [[s.train[i] for i in b] for b in idx]


def steps_per_epoch(s: Session, spec: LoopSpec) -> int:
    n_micro = math.ceil(len(s.train) / s.cfg.batch_size) // s.dist.world
    return max(1, math.ceil(n_micro / s.cfg.grad_accum))


def init_session(s: Session, spec: LoopSpec) -> Session:
    """Optimiser, schedule, config file, metric log, and resume from a checkpoint."""
    cfg = s.cfg
    per_epoch = steps_per_epoch(s, spec)
    s.total_steps = per_epoch * cfg.epochs if cfg.max_steps < 0 else min(cfg.max_steps, per_epoch * cfg.epochs)
    s.optimizer, s.scheduler = build_optimizer(s.model, cfg, s.total_steps)
    s.extra["layout"] = layout(s.dist.world, cfg.batch_size, cfg.grad_accum, per_epoch, s.total_steps)
    ckpt = None
    if cfg.resume not in (False, None, "false", "no"):
        ckpt = Path(cfg.resume) if cfg.resume != "auto" else (list_checkpoints(s.run_dir) or [None])[-1]
    if ckpt is not None:
        warn_if_config_changed(cfg, s.run_dir)
        moved = resume_position(ckpt, s.extra["layout"])  # another number of processes: checked first, on every process
        s.position = load_checkpoint(ckpt, unwrap(s.model), s.optimizer, s.scheduler)
        if moved is not None:
            s.position = moved
    else:
        if s.dist.rank == 0:  # a fresh start must never resume later from an older run's checkpoints
            shutil.rmtree(s.run_dir / "checkpoints", ignore_errors=True)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
    if s.dist.rank == 0:
        save_config(cfg, s.run_dir)
    s.log = MetricsLog(s.run_dir, cfg.tensorboard, enabled=s.dist.rank == 0, resume_step=s.position["step"])
    return s


_RUN_LENGTH_KEYS = {"name", "runs_dir", "resume", "epochs", "max_steps", "save_every", "eval_every", "log_every", "keep_checkpoints"}


def warn_if_config_changed(cfg: TrainConfig, run_dir: Path) -> None:
    import yaml

    from rlaif.data import textio

    from .config import to_dict

    path = run_dir / "config.yaml"
    if not path.exists():
        return
    old, new = yaml.safe_load(textio.read_text(path)) or {}, yaml.safe_load(yaml.safe_dump(to_dict(cfg)))
    changed = sorted(k for k in set(old) | set(new) if k not in _RUN_LENGTH_KEYS and old.get(k) != new.get(k))
    if changed:
        print(f"[rlaif.train] warning: resuming {run_dir} with changed settings {changed}")


def _reduce(x: float) -> float:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([float(x)], device="cuda" if torch.cuda.is_available() else "cpu")
        dist.all_reduce(t)
        return float(t)
    return float(x)


def run_step(s: Session, spec: LoopSpec, group: list[list[dict]]) -> dict[str, float]:
    """One optimiser step over a group of micro-batches; returns step metrics."""
    batches = [s.to_device(spec.collate(b)) for b in group]
    counts = [spec.count(b) for b in batches]
    normalizer = _reduce(sum(counts))
    sums: dict[str, float] = {}
    total_loss, tokens = 0.0, 0
    s.model.train()
    for i, (b, n) in enumerate(zip(batches, counts)):
        sync = i == len(batches) - 1 or not hasattr(s.model, "no_sync")
        ctx = contextlib.nullcontext() if sync else s.model.no_sync()
        with ctx:
            with s.autocast():
                loss, metrics = spec.loss_fn(s, b, normalizer)
            # DDP and FSDP average gradients over processes, while the loss is already
            # divided by the global count: scale back so the step sees the global mean.
            (loss * s.dist.world).backward()
        total_loss += float(loss.detach())
        tokens += int(b["attention_mask"].sum())
        for k, v in metrics.items():  # weight micro-batch means by their share of the step
            sums[k] = sums.get(k, 0.0) + float(v) * n
    out = {"loss": _reduce(total_loss)}
    if s.cfg.max_grad_norm > 0:
        out["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(s.model.parameters(), s.cfg.max_grad_norm))
    out["lr"] = s.optimizer.param_groups[0]["lr"]
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    out.update({k: _reduce(v) / max(normalizer, 1) for k, v in sums.items()})
    out["tokens"] = tokens
    return out


@torch.no_grad()
def evaluate(s: Session, spec: LoopSpec) -> dict[str, float]:
    """Mean loss and metrics over the eval set, weighted by each batch's count."""
    if not s.eval:
        return {}
    s.model.eval()
    order = sorted(range(len(s.eval)), key=lambda i: spec.length(s.eval[i]))
    sums: dict[str, float] = {}
    total = 0
    for start in range(0, len(order), s.cfg.batch_size):
        b = s.to_device(spec.collate([s.eval[i] for i in order[start : start + s.cfg.batch_size]]))
        n = spec.count(b)
        with s.autocast():
            loss, metrics = spec.loss_fn(s, b, n)
        for k, v in {"loss": loss, **metrics}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        total += n
    return {f"eval/{k}": v / max(total, 1) for k, v in sums.items()}


def fit(s: Session, spec: LoopSpec, on_step: Callable[[dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train to ``s.total_steps``; returns the last training and eval metrics."""
    from tqdm.auto import tqdm

    cfg, pos = s.cfg, s.position
    per_epoch = steps_per_epoch(s, spec)
    bar = tqdm(total=s.total_steps, initial=pos["step"], disable=s.dist.rank != 0, desc=cfg.name, dynamic_ncols=True)
    last: dict[str, float] = {}
    while pos["step"] < s.total_steps:
        batches = micro_batches(s, spec, pos["epoch"])
        groups = [batches[i : i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)][:per_epoch]
        for g_idx in range(pos["micro"] // cfg.grad_accum, len(groups)):
            if pos["step"] >= s.total_steps:
                break
            t0 = time.perf_counter()
            m = run_step(s, spec, groups[g_idx])
            m["tokens_per_s"] = _reduce(m.pop("tokens")) / max(time.perf_counter() - t0, 1e-9)
            pos.update(step=pos["step"] + 1, micro=(g_idx + 1) * cfg.grad_accum)
            last = {f"train/{k}": v for k, v in m.items()}
            if on_step is not None:
                on_step(last)
            if pos["step"] % cfg.log_every == 0 or pos["step"] == s.total_steps:
                s.log.log(pos["step"], {**last, "epoch": pos["epoch"]})
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.4f}")
            if cfg.eval_every and pos["step"] % cfg.eval_every == 0 and pos["step"] < s.total_steps:
                s.log.log(pos["step"], evaluate(s, spec))
            if cfg.save_every and pos["step"] % cfg.save_every == 0 and pos["step"] < s.total_steps:
                checkpoint(s)
        else:
            pos.update(epoch=pos["epoch"] + 1, micro=0)
    bar.close()
    final_eval = evaluate(s, spec)
    if final_eval:
        s.log.log(pos["step"], final_eval)
    checkpoint(s)
    return {**last, **final_eval}


def checkpoint(s: Session) -> Path:
    """Called on every process: sharded weights are gathered collectively."""
    return save_checkpoint(s.run_dir, unwrap(s.model), s.optimizer, s.scheduler, dict(s.position), s.cfg.keep_checkpoints,
                           s.dist.rank, layout=s.extra.get("layout"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def load_splits(cfg: TrainConfig, tok, kind: str, rank: int = 0) -> tuple[list[dict], list[dict]]:
    """Tokenised train and eval examples for ``kind`` ("sft" or "preference")."""
    from .data import Truncation, load_rows, split_eval, tokenize_preferences, tokenize_sft

    policy = Truncation(cfg.max_length, cfg.max_prompt_length, cfg.truncation)
    tokenize = tokenize_sft if kind == "sft" else tokenize_preferences
    train, stats = tokenize(load_rows(cfg.data, kind), tok, policy)
    if cfg.eval_data:
        ev, ev_stats = tokenize(load_rows(cfg.eval_data, kind), tok, policy)
    else:
        train, ev = split_eval(train, cfg.eval_fraction, cfg.seed)
    if not train:
        raise ValueError(f"no training examples left in {cfg.data} (check max_length / truncation)")
    for i, e in enumerate(train):
        e["index"] = i
    for i, e in enumerate(ev):
        e["index"] = i
    if rank == 0:
        print(
            f"[rlaif.train] {cfg.data}: {stats['rows']} rows, {stats['truncated']} truncated, "
            f"{stats['dropped']} dropped; {len(train)} train / {len(ev)} eval examples"
        )
    return train, ev


def preference_data_report(s: Session) -> dict[str, float]:
    """Completion lengths of chosen vs rejected over the training pairs (``data/...``): printed,
    and logged to ``metrics.jsonl`` at step 0 of a fresh run. Returns the summary."""
    from .batches import describe_lengths, length_summary

    summary = length_summary(s.train)
    if s.dist.rank == 0:
        print(f"[rlaif.train] training pairs: {describe_lengths(summary)}")
    out = {f"data/{k}": v for k, v in summary.items()}
    if s.position["step"] == 0 and s.log is not None:
        s.log.log(0, out)
    return out


def fit_preferences(s: Session, spec: LoopSpec) -> dict[str, float]:
    """The training loop of the pairwise recipes (reward model, DPO family), after the report of
    chosen vs rejected lengths; the metrics of both."""
    return {**preference_data_report(s), **fit(s, spec)}


def recipe_main(cfg: TrainConfig, setup, train, save, what: str) -> int:
    """The ``main`` of an offline recipe (SFT, RM, DPO): set up, train, save the final model, clean
    up, and say (rank 0) where ``what`` went, the last metrics and, for pairs, their lengths."""
    from .batches import describe_lengths

    s, spec = setup(cfg)
    metrics = train(s, spec)
    out = save(s)
    cleanup(s)
    if s.dist.rank == 0:
        print(f"[rlaif.train] {what} saved to {out}; " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        data = {k.removeprefix("data/"): v for k, v in metrics.items() if k.startswith("data/")}
        if data:
            print(f"[rlaif.train] training pairs: {describe_lengths(data)}")
    return 0


def cleanup(s: Session) -> None:
    """Close the metric log and, under torchrun, the process group."""
    if s.log is not None:
        s.log.close()
    if s.dist.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
