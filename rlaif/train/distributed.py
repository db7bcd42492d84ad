"""Training over several processes: checkpoints that any number of processes can resume.

Under ``torchrun`` the recipes replicate the model (DDP) or shard it (FSDP2) across processes
(:func:`rlaif.train.common.wrap_parallel`). A checkpoint's optimiser state is written as a
**distributed checkpoint** (``torch.distributed.checkpoint``, folder ``optimizer/``): every
process writes its own shards, keyed by parameter name, and a later run with another number of
processes (or with DDP instead of FSDP2, or one process) reads back the pieces it needs. The
weights are ``model.safetensors`` as before (gathered by process 0).

A resume keeps the run's results only if the global batch and the data order are the same, so
a checkpoint records its **layout**: processes, ``batch_size``, ``grad_accum``, steps per
epoch and total steps. With another number of processes the resume goes on when
``batch_size`` is unchanged and ``grad_accum x processes`` is too (the same micro-batches make
up every step, only their split over processes changes), and stops at once otherwise, saying
which settings would keep the global batch. Checkpoints written before this format (one
``optimizer.rankN.pt`` per process) resume only with the number of processes that wrote them.

Reading a checkpoint runs no code from it: the distributed checkpoint's ``.metadata`` is a
pickle, which is read here with an unpickler that admits only the checkpoint metadata classes
(and refused otherwise) before ``torch.distributed.checkpoint`` reads it; the tensors are read
by torch with ``weights_only=True``.
"""
from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfigError

OPTIMIZER_DIR = "optimizer"


class ResumeError(TrainConfigError):
    """A checkpoint that cannot be resumed with the current processes and settings (``rlaif train``
    prints it without a traceback)."""


def layout(world: int, batch_size: int, grad_accum: int, steps_per_epoch: int, total_steps: int) -> dict[str, int]:
    """What a resume must agree with (stored in the checkpoint's ``state.json``)."""
    return {"world": world, "batch_size": batch_size, "grad_accum": grad_accum,
            "steps_per_epoch": steps_per_epoch, "total_steps": total_steps}


def resume_position(ckpt: Path, now: dict[str, int]) -> dict[str, int] | None:
    """Check that ``ckpt`` can be resumed with layout ``now``; the data position converted to it.

    Returns None when the checkpoint's own position applies unchanged. Raises
    :class:`ResumeError` (on every process alike, before any collective) otherwise.
    """
    state = json.loads((ckpt / "state.json").read_text())
    then = state.get("layout")
    if then is None:  # written before layouts were stored: per-process optimiser files
        shards = sorted(p.name for p in ckpt.glob("optimizer*.pt"))
        if len(shards) != now["world"]:
            raise ResumeError(
                f"{ckpt} was written by {len(shards)} process(es) in the older per-process optimiser format; "
                f"resume it with exactly that many (torchrun --nproc-per-node {len(shards)}), or start over "
                f"with resume=false (now: {now['world']} process(es))")
        return None
    if then["world"] == now["world"]:
        return None
    global_then = then["batch_size"] * then["grad_accum"] * then["world"]
    keep = then["grad_accum"] * then["world"]
    if now["batch_size"] != then["batch_size"] or now["grad_accum"] * now["world"] != keep:
        fits = keep % now["world"] == 0
        hint = (f"set batch_size={then['batch_size']} grad_accum={keep // now['world']}" if fits else
                f"grad_accum x processes must be {keep}, which {now['world']} processes cannot divide")
        raise ResumeError(
            f"{ckpt} was written by {then['world']} process(es) with batch_size={then['batch_size']} "
            f"grad_accum={then['grad_accum']} (global batch {global_then}); {now['world']} process(es) with "
            f"batch_size={now['batch_size']} grad_accum={now['grad_accum']} would change the global batch or the "
            f"data order. To resume, {hint}; or start over with resume=false")
    for key in ("steps_per_epoch", "total_steps"):
        if then[key] != now[key]:
            raise ResumeError(
                f"{ckpt}: with {now['world']} process(es) the run has {now[key]} {key.replace('_', ' ')}, with "
                f"{then['world']} it had {then[key]} (the last micro-batches of an epoch are split differently); "
                "resume with the number of processes that wrote it, or start over with resume=false")
    position = dict(state["position"])
    position["micro"] = position["micro"] // then["grad_accum"] * now["grad_accum"]
    return position


# ------------------------------------------------------------------ optimiser state


_ONE_PROCESS = ".*assuming the intent is to (save|load) in a single process.*"  # what it should do without torchrun


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def save_optimizer(model: torch.nn.Module, optimizer, folder: Path) -> None:
    """Write the optimiser state as a distributed checkpoint; call on every process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = {"optim": get_optimizer_state_dict(model, optimizer)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ONE_PROCESS)
        dcp.save(state, checkpoint_id=str(folder), no_dist=not _distributed())


def load_optimizer(model: torch.nn.Module, optimizer, folder: Path) -> None:
    """Read a distributed checkpoint of the optimiser into this process's (sharded) optimiser."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    check_metadata(folder)
    state = {"optim": get_optimizer_state_dict(model, optimizer)}  # the current sharding, as a template
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ONE_PROCESS)
        dcp.load(state, checkpoint_id=str(folder), no_dist=not _distributed())
    set_optimizer_state_dict(model, optimizer, state["optim"])


_METADATA_MODULES = ("torch.distributed.checkpoint.metadata",)
_METADATA_NAMES = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _METADATA_MODULES or (module, name) in _METADATA_NAMES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def check_metadata(folder: Path) -> None:
    """Refuse a distributed checkpoint whose ``.metadata`` would build anything but checkpoint metadata."""
    path = Path(folder) / ".metadata"
    try:
        with open(path, "rb") as f:
            _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise ResumeError(f"{folder} is not a complete distributed checkpoint (no .metadata)") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as exc:
        raise ResumeError(f"{path} is not checkpoint metadata rlaif reads (it names {exc}); not loaded") from None


__all__ = ["OPTIMIZER_DIR", "ResumeError", "layout", "resume_position", "save_optimizer", "load_optimizer", "check_metadata"]
