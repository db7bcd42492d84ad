"""Training over several processes: checkpoints that any number of processes can resume.

Under ``torchrun`` the recipes replicate the model (DDP) or shard it (FSDP2) across processes
(:func:`rlaif.train.model_setup.wrap_parallel`). A checkpoint's optimiser state is written as a
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
pickle, read here once, as bytes, by an unpickler that admits only exact (module, name) pairs of
the checkpoint metadata classes (a dotted name such as ``metadata.os.system`` is refused) and
whose result must be a ``Metadata`` naming shard files inside the folder; ``torch.distributed.checkpoint``
then gets that checked object from its storage reader and never unpickles the file
itself, so a file swapped after the check is not read. Tensors are read by torch with
``weights_only=True``, and so are the small non-tensor values (learning rates, betas), which
torch's own planner would read with ``weights_only=False``.
"""
from __future__ import annotations

import functools
import io
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

    metadata = check_metadata(folder)
    reader, planner = _reader_classes()
    state = {"optim": get_optimizer_state_dict(model, optimizer)}  # the current sharding, as a template
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ONE_PROCESS)
        planner = planner()
        try:
            dcp.load(state, storage_reader=reader(folder, metadata), planner=planner, no_dist=not _distributed())
        except BaseException:  # torch wraps errors in its CheckpointException, a BaseException
            if planner.refused:
                raise ResumeError(f"{folder} holds optimiser values rlaif does not read "
                                  f"({planner.refused}); not loaded") from None
            raise
    set_optimizer_state_dict(model, optimizer, state["optim"])


_METADATA_CLASSES = ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
                     "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")
_METADATA_NAMES = {
    *(("torch.distributed.checkpoint.metadata", name) for name in _METADATA_CLASSES),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits exact (module, name) pairs only. From protocol 4 on, pickle resolves a dotted name
    attribute by attribute, so ``(metadata module, "os.system")`` would reach ``os`` through the
    module's own import: dotted names are refused before anything is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        if "." not in name:
            if (module, name) in _METADATA_NAMES:
                return super().find_class(module, name)
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def check_metadata(folder: Path):
    """The distributed checkpoint's metadata, read once and checked; refuse anything else.

    Raises :class:`ResumeError` when ``.metadata`` is missing, would build anything but checkpoint
    metadata, or names a shard file outside ``folder``.
    """
    from torch.distributed.checkpoint.metadata import Metadata

    path = Path(folder) / ".metadata"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ResumeError(f"{folder} is not a complete distributed checkpoint (no .metadata)") from None
    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, KeyError) as exc:
        raise ResumeError(f"{path} is not checkpoint metadata rlaif reads (it names {exc}); not loaded") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise ResumeError(f"{path} is not checkpoint metadata rlaif reads (it holds {type(metadata).__name__}); not loaded")
    for info in metadata.storage_data.values():
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ResumeError(f"{path} names a shard file outside its folder ({name!r}); not loaded")
    return metadata


@functools.cache
def _reader_classes():
    """The storage reader and load planner, built on first use (importing torch.distributed.checkpoint is slow)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.metadata import StorageMeta

    class CheckedReader(FileSystemReader):
        """Hands ``dcp.load`` the metadata :func:`check_metadata` read, instead of unpickling the file again."""

        def __init__(self, folder: Path, metadata) -> None:
            super().__init__(str(folder))
            self.checked = metadata

        def read_metadata(self, *args: Any, **kwargs: Any):
            if getattr(self.checked, "storage_meta", None) is None:
                self.checked.storage_meta = StorageMeta()
            self.checked.storage_meta.load_id = self.load_id
            return self.checked

    class WeightsOnlyPlanner(DefaultLoadPlanner):
        """Reads the non-tensor values with ``weights_only=True`` (torch's planner: ``False``)."""

        refused = ""

        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            try:
                obj = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as exc:
                self.refused = str(exc).strip().splitlines()[-1][:200]
                raise
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return CheckedReader, WeightsOnlyPlanner


__all__ = ["OPTIMIZER_DIR", "ResumeError", "layout", "resume_position", "save_optimizer", "load_optimizer", "check_metadata"]
