"""The trainer's side of the in-process vLLM engine's RL hand-over: sleep mode while the trainer
updates, and new weights loaded into the running engine (CUDA IPC, or a reload from shared memory).

:class:`WeightSync` is mixed into :class:`rlaif.engine.vllm_local.VLLMEngine` (its ``llm``,
``settings``, ``transfer``, ``can_sleep`` and ``asleep``); the workers' side is
:class:`rlaif.engine.vllm_worker.WeightSyncExtension`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterable

from rlaif.engine.config import EngineConfig

log = logging.getLogger(__name__)


class WeightSync:
    """Sleep mode and weight updates of a ``vllm.LLM`` held as ``self.llm`` (see the module)."""

    def weight_sync_options(self, s: EngineConfig, platform: Any) -> dict[str, Any]:
        """Choose this host's weight hand-over (``s.weight_transfer``) and sleep mode (``s.sleep_mode``);
        returns the ``vllm.LLM`` arguments they need. Called by the engine before it starts vLLM."""
        kwargs: dict[str, Any] = {}
        self.transfer = _pick_transfer(s.weight_transfer, platform)
        if self.transfer == "ipc":
            kwargs["weight_transfer_config"] = {"backend": "ipc"}
        self.can_sleep = bool(s.sleep_mode and platform.is_sleep_mode_available())
        if s.sleep_mode and not self.can_sleep:
            log.info("vLLM on this platform has no sleep mode; the engine stays awake")
        if self.can_sleep:
            kwargs["enable_sleep_mode"] = True
        self._ipc_sender = None
        self.asleep = False
        return kwargs

    def sleep(self) -> bool:
        """Offload the weights and free the KV cache while a trainer on the same accelerator
        updates (vLLM sleep level 1). Returns whether the engine went to sleep: False where the
        engine was not built with ``sleep_mode`` or the platform has none (vLLM CPU)."""
        if not self.can_sleep or self.asleep:
            return False
        self.llm.sleep(level=1)
        self.asleep = True
        return True

    def wake_up(self) -> None:
        """Undo :meth:`sleep` (weights back on the accelerator, KV cache re-allocated)."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    # ---------------------------------------------------------------- weights (RL)

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> float:
        """Load new weights (Hugging Face names) into the running engine; returns seconds.

        On CUDA hosts (``weight_transfer`` "ipc", the default there) the tensors go through
        vLLM's own weight-transfer engine: CUDA-IPC handles of the trainer's GPU tensors, read
        by the workers in place (see :meth:`_update_weights_ipc`). Elsewhere the tensors are written as one safetensors file to a folder in shared memory
        (``/dev/shm`` where it exists) and the engine's workers reload from it in place with
        ``reload_weights``: no restart and no checkpoint on disk. (vLLM's CPU backend repacks
        weights at load time, so a plain ``model.load_weights`` after start-up fails there;
        tensors passed directly as RPC arguments do not survive serialisation.) The prefix
        cache is reset afterwards, since its KV entries came from the old weights. A tied LM
        head is repacked too (see :class:`rlaif.engine.vllm_worker.WeightSyncExtension`).
        """
        if self.asleep:
            self.wake_up()
        if self.transfer == "ipc":
            named_tensors = list(named_tensors)
            try:
                return self._update_weights_ipc(named_tensors)
            except Exception as exc:  # noqa: BLE001 - "auto" falls back to the path that works everywhere
                if self.settings.weight_transfer == "ipc":
                    raise
                log.warning("CUDA-IPC weight transfer failed (%s: %s); using the shared-memory reload from now on",
                            type(exc).__name__, exc)
                self.transfer = "reload"
        import shutil
        import tempfile

        from safetensors.torch import save_file

        t0 = time.perf_counter()
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        folder = tempfile.mkdtemp(prefix="rlaif-weights-", dir=base)
        try:
            tensors, seen = {}, set()
            for name, t in named_tensors:
                # Tied weights (embeddings / LM head) share storage; the engine ties them
                # itself, so each storage is sent once, under its first name.
                if t.data_ptr() in seen:
                    continue
                seen.add(t.data_ptr())
                tensors[name] = t.detach().to("cpu").contiguous()
            save_file(tensors, os.path.join(folder, "model.safetensors"))
            self.llm.collective_rpc("rlaif_reload_weights", kwargs={"weights_path": folder})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0

    def _update_weights_ipc(self, named_tensors: Iterable[tuple[str, Any]]) -> float:
        """vLLM's weight-transfer protocol (start / update / finish) over CUDA IPC.

        The trainer-side engine is built once; each call hands it this round's tensors
        (moved to the current CUDA device if they are not there yet, tied storages sent once).
        """
        import torch

        t0 = time.perf_counter()
        tensors, seen = [], set()
        dev = torch.device("cuda", torch.cuda.current_device())
        for name, t in named_tensors:
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            tensors.append((name, t.detach().to(dev)))
        if self._ipc_sender is None:
            from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo, IPCTrainerWeightTransferEngine

            self._ipc_source = _TensorListSource()
            self._ipc_sender = IPCTrainerWeightTransferEngine.trainer_init(
                IPCTrainerInitInfo(rank=0), client=_OfflineSyncClient(self.llm), source=self._ipc_source)
        self._ipc_source.tensors = tensors
        try:
            self._ipc_sender.send_weights()
        finally:
            self._ipc_source.tensors = []
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0


def _pick_transfer(wanted: str, platform: Any) -> str:
    """The weight hand-over this host supports (see ``EngineConfig.weight_transfer``)."""
    has_ipc = False
    if platform.is_cuda():
        try:
            from vllm.distributed.weight_transfer import ipc_engine  # noqa: F401

            has_ipc = True
        except ImportError:
            pass
    if wanted == "ipc" and not has_ipc:
        raise ValueError("weight_transfer='ipc' needs a CUDA host and a vLLM with vllm.distributed.weight_transfer")
    if wanted == "auto":
        return "ipc" if has_ipc else "reload"
    return wanted


class _OfflineSyncClient:
    """vLLM's trainer-side weight-sync client protocol over an in-process ``vllm.LLM``.

    The trainer engines call ``client.init_weight_transfer_engine(init_info)`` and
    ``client.update_weights(update_info)`` with the bare dicts, while ``LLM`` takes them wrapped
    in a request (``{"init_info": ...}``, ``{"update_info": ...}``): this adapter does the
    wrapping.
    """

    def __init__(self, llm: Any):
        self.llm = llm

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: Any) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.finish_weight_update(weight_version)


def _TensorListSource():
    """A vLLM ``WeightSource`` over a list of (name, tensor) set before each send."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class TensorListSource(WeightSource):
        def __init__(self):
            self.tensors: list[tuple[str, Any]] = []

        def metadata(self):
            return [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in self.tensors]

        def __iter__(self):
            return iter(list(self.tensors))

    return TensorListSource()
