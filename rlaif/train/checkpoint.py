"""Resumable checkpoints and metric logs.

A checkpoint folder ``<run>/checkpoints/step-000042/`` holds

* ``model.safetensors``: the trainable parameters (all weights, or only the LoRA
  adapters and new heads);
* ``optimizer/``: the optimiser state as a distributed checkpoint, written by every
  process and readable by any number of them (:mod:`rlaif.train.distributed`); or, for
  callers that pass no ``layout`` (PPO), ``optimizer.pt`` (read back with ``weights_only=True``);
* ``state.json``: step, data position (epoch, micro-batch), scheduler state,
  the Python / torch RNG states and the layout (processes, batch sizes, steps).

It is written under a ``.tmp`` name and renamed when complete, so a crash never
leaves a half checkpoint that resume would pick up.
"""
from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rlaif.data import textio

from .distributed import OPTIMIZER_DIR, ResumeError, load_optimizer, save_optimizer


def _full(p: torch.Tensor) -> torch.Tensor:
    # FSDP2 parameters are DTensors: full_tensor() all-gathers the shards (a collective).
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # named_parameters() yields tied weights once, so safetensors sees no shared storage.
    return {n: _full(p.detach()).contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    st = random.getstate()
    out = {"python": [st[0], list(st[1]), st[2]], "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate((st["python"][0], tuple(st["python"][1]), st["python"][2]))
    torch.set_rng_state(torch.tensor(st["torch"], dtype=torch.uint8))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in st["cuda"]])


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _optim_name(rank: int) -> str:
    # Under FSDP every process holds the optimiser state of its own shards.
    return "optimizer.pt" if rank == 0 else f"optimizer.rank{rank}.pt"


def save_checkpoint(
    run_dir: Path, model, optimizer, scheduler, position: dict[str, int], keep: int, rank: int = 0,
    layout: dict[str, int] | None = None,
) -> Path:
    """Write a checkpoint for optimiser step ``position["step"]``; keep the newest ``keep``.

    Call on every process; process 0 writes everything but the other processes'
    optimiser shards. With a ``layout`` the optimiser state is a distributed checkpoint.
    """
    root = run_dir / "checkpoints"
    final = root / f"step-{position['step']:06d}"
    tmp = root / (final.name + ".tmp")
    weights = trainable_state(model)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    if layout is not None:
        save_optimizer(model, optimizer, tmp / OPTIMIZER_DIR)
    else:
        torch.save(optimizer.state_dict(), tmp / _optim_name(rank))
    _barrier()
    if rank != 0:
        return final
    save_file(weights, str(tmp / "model.safetensors"))
    state = {"position": position, "scheduler": scheduler.state_dict(), "rng": rng_state(), "time": time.time()}
    if layout is not None:
        state["layout"] = layout
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and not p.name.endswith(".tmp"))


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict[str, int]:
    """Restore model, optimiser, scheduler and RNG; return the data position."""
    weights = load_file(str(path / "model.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(f"checkpoint {path} lacks parameters {missing[:5]}...")
    with torch.no_grad():
        for name, tensor in weights.items():
            p = params[name]
            if hasattr(p, "device_mesh"):  # FSDP2: keep only this process's shard
                from torch.distributed.tensor import distribute_tensor

                tensor = distribute_tensor(tensor.to(p.dtype), p.device_mesh, p.placements)
            p.copy_(tensor)
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if (path / OPTIMIZER_DIR).is_dir():
        load_optimizer(model, optimizer, path / OPTIMIZER_DIR)
    elif (path / _optim_name(rank)).exists():
        optimizer.load_state_dict(torch.load(path / _optim_name(rank), weights_only=True, map_location="cpu"))
    else:
        raise ResumeError(f"{path} has no optimiser state for process {rank} ({_optim_name(rank)}): it was written by "
                          "fewer processes; resume with as many as wrote it, or start over with resume=false")
    state = json.loads((path / "state.json").read_text())
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["position"]


class MetricsLog:
    """Appends one JSON object per record to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True, resume_step: int = 0):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # drop records past the step we resume from (all of them on a fresh start)
            keep = [r for r in textio.read_jsonl(self.path) if 0 < resume_step and r.get("step", 0) <= resume_step]
            self.path.write_text(textio.dumps_jsonl(keep), encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed
                self.tb = None

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        rec = {"step": step, **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(textio.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
