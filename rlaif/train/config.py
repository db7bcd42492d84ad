"""Typed trainer configs, loaded from one YAML file plus ``key=value`` overrides.

Every field has a comment saying what it does; ``__post_init__`` rejects bad values
when the config is built, so a typo fails before any model is loaded. The resolved
config is written to ``<run>/config.yaml``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlaif.settings import apply_overrides, build, read_yaml


@dataclass
class LoraSettings:
    enabled: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """LoRA scaling numerator (update scaled by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: Any = "all-linear"
    """Module names (list) or "all-linear"."""
    merge_on_save: bool = True
    """Save the final model with adapters merged (loads in transformers and vLLM as is)."""

    def __post_init__(self):
        if self.r <= 0 or self.alpha <= 0:
            raise ValueError("lora.r and lora.alpha must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("lora.dropout must lie in [0, 1)")


@dataclass
class TrainConfig:
    """Settings shared by every recipe."""

    data: str = ""
    """Training data: an rlaif run folder, a saved dataset folder, or a .jsonl/.json/.parquet file."""
    model: str = "default"
    """Model folder, or "default" for rlaif's embedded default model."""
    name: str = "train"
    """Run name: outputs go to <runs_dir>/<name>/."""
    runs_dir: str = "runs"
    """Parent folder of run folders."""
    eval_data: str | None = None
    """Separate evaluation data; when unset, eval_fraction of the prompts is held out."""
    eval_fraction: float = 0.05
    """Fraction of prompts held out for evaluation when eval_data is unset (0 = no eval)."""
    seed: int = 0
    """Seeds model init of new heads, data order and dropout."""
    epochs: int = 1
    """Passes over the training data (max_steps, when positive, stops earlier)."""
    max_steps: int = -1
    """Stop after this many optimiser steps (-1 = run all epochs)."""
    batch_size: int = 4
    """Examples per micro-batch (per process)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    lr: float = 1e-5
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    lr_schedule: str = "cosine"
    """After warm-up: "cosine", "linear" or "constant"."""
    warmup_ratio: float = 0.05
    """Warm-up as a fraction of the total steps (ignored when warmup_steps > 0)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr, for cosine and linear decay."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm (0 = off)."""
    max_length: int = 1024
    """Longest prompt + completion in tokens."""
    max_prompt_length: int = 512
    """Longest prompt in tokens (keeps its last tokens)."""
    truncation: str = "truncate"
    """"truncate" cuts over-long examples, "drop" skips them."""
    length_grouping: int = 32
    """Batch examples of similar length within windows of this many batches (1 = off)."""
    precision: str = "auto"
    """"auto" (bf16 autocast on a GPU that supports it, else fp32), "bf16" or "fp32"."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """Optional LoRA adapters."""
    log_every: int = 1
    """Log training metrics every N optimiser steps."""
    eval_every: int = 0
    """Evaluate every N steps (0 = only at the end)."""
    save_every: int = 0
    """Write a resumable checkpoint every N steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    resume: Any = "auto"
    """"auto" resumes from the run's latest checkpoint if there is one; false starts over; or a checkpoint path."""
    trust_remote_code: bool = False
    """Allow model code from the model folder (off unless asked)."""
    device: str = "auto"
    """"auto", "cpu", "cuda" or "cuda:N"."""
    parallel: str = "auto"
    """Under torchrun / accelerate launch: "fsdp", "ddp" ("auto" = fsdp when several processes)."""
    tensorboard: bool = True
    """Also log to TensorBoard when it is installed."""
    save_dtype: str = "auto"
    """dtype of the final weights: "auto" (the starting model's), "bf16", "fp16" or "fp32"."""

    def __post_init__(self):
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        _check(self.data != "", "data is required")
        _check(0.0 <= self.eval_fraction < 1.0, "eval_fraction must lie in [0, 1)")
        _check(self.epochs >= 1, "epochs must be >= 1")
        _check(self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1")
        _check(self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0")
        _check(self.lr_schedule in ("cosine", "linear", "constant"), "lr_schedule: cosine, linear or constant")
        _check(0.0 <= self.warmup_ratio < 1.0 and self.warmup_steps >= 0, "bad warm-up")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must lie in [0, 1]")
        _check(self.max_grad_norm >= 0, "max_grad_norm must be >= 0")
        _check(0 < self.max_prompt_length < self.max_length, "need 0 < max_prompt_length < max_length")
        _check(self.truncation in ("truncate", "drop"), "truncation: truncate or drop")
        _check(self.length_grouping >= 1, "length_grouping must be >= 1")
        _check(self.precision in ("auto", "bf16", "fp32"), "precision: auto, bf16 or fp32")
        _check(self.parallel in ("auto", "fsdp", "ddp"), "parallel: auto, fsdp or ddp")
        _check(self.save_dtype in ("auto", "bf16", "fp16", "fp32"), "save_dtype: auto, bf16, fp16 or fp32")
        _check(self.log_every >= 1 and self.eval_every >= 0 and self.save_every >= 0, "bad log/eval/save interval")
        _check(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")
        _check(self.max_steps == -1 or self.max_steps > 0, "max_steps must be -1 or positive")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


# ------------------------------------------------------------------- loading
# One loader for every command (rlaif/settings.py); these names stay for the trainers' callers.
from_dict = build  # noqa: E305  (dataclass from a mapping; unknown keys are an error)


class TrainConfigError(ValueError):
    """A training config that cannot be used (missing file, unknown key, bad value)."""


def load_config(cls, path: str | Path | None, overrides: list[str] | None = None):
    """Read ``path`` (YAML mapping), apply ``overrides``, build and validate ``cls``.

    Every problem with the file or the settings is raised as :class:`TrainConfigError`.
    """
    where = str(path) if path is not None else "settings"
    try:
        d = read_yaml(path, TrainConfigError) if path is not None else {}
        return build(cls, apply_overrides(d, overrides or []))
    except TrainConfigError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise TrainConfigError(f"{where}: {exc}") from None


def to_dict(cfg) -> dict[str, Any]:
    """The settings as plain YAML-able data (tuples as lists, as a saved config.yaml reads back)."""
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return [plain(v) for v in x] if isinstance(x, (list, tuple)) else x

    return plain(dataclasses.asdict(cfg))


def save_config(cfg, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "config.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
