"""The GPU weight hand-over plumbing that can be checked without a GPU.

On CUDA hosts ``VLLMEngine.update_weights`` drives vLLM's own trainer-side IPC engine
through ``_OfflineSyncClient``; these tests pin the adapter's wrapping (the bare dicts the
trainer engines send vs the request objects ``vllm.LLM`` takes), the choice of transfer per
platform, and the weight source the trainer engine iterates.
"""
from __future__ import annotations

import pytest
import torch

vllm = pytest.importorskip("vllm")

from rlaif.engine import vllm_local  # noqa: E402
from rlaif.engine.config import EngineConfig  # noqa: E402
from rlaif.engine.vllm_weights import _OfflineSyncClient, _pick_transfer, _TensorListSource  # noqa: E402


class RecordingLLM:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def method(*args, **kwargs):
            self.calls.append((name, args, kwargs))
        return method


def test_client_wraps_payloads_the_way_llm_expects():
    llm = RecordingLLM()
    c = _OfflineSyncClient(llm)
    c.init_weight_transfer_engine({"packed": False})
    c.start_weight_update()
    c.update_weights({"names": ["w"], "shapes": [[2]]})
    c.finish_weight_update("v3")
    assert llm.calls == [
        ("init_weight_transfer_engine", ({"init_info": {"packed": False}},), {}),
        ("start_weight_update", (), {}),
        ("update_weights", ({"update_info": {"names": ["w"], "shapes": [[2]]}},), {}),
        ("finish_weight_update", ("v3",), {}),
    ]


def test_client_matches_the_real_llm_signatures():
    # The adapter's calls must fit vllm.LLM's methods (named and shaped as it defines them).
    import inspect

    from vllm import LLM

    for name in ("init_weight_transfer_engine", "start_weight_update", "update_weights", "finish_weight_update"):
        assert callable(getattr(LLM, name)), name
    assert list(inspect.signature(LLM.init_weight_transfer_engine).parameters)[1] == "request"
    assert list(inspect.signature(LLM.update_weights).parameters)[1] == "request"


def test_client_satisfies_vllm_sync_protocol():
    from vllm.distributed.weight_transfer.base import VLLMWeightSyncClient

    assert isinstance(_OfflineSyncClient(RecordingLLM()), VLLMWeightSyncClient)


class Platform:
    def __init__(self, cuda):
        self.cuda = cuda

    def is_cuda(self):
        return self.cuda


def test_transfer_choice_per_platform():
    assert _pick_transfer("auto", Platform(cuda=False)) == "reload"
    assert _pick_transfer("reload", Platform(cuda=True)) == "reload"
    assert _pick_transfer("auto", Platform(cuda=True)) == "ipc"
    with pytest.raises(ValueError, match="CUDA"):
        _pick_transfer("ipc", Platform(cuda=False))
    with pytest.raises(ValueError, match="weight_transfer"):
        EngineConfig(weight_transfer="nccl-magic")


def test_tensor_source_metadata_matches_iteration():
    src = _TensorListSource()
    a, b = torch.zeros(2, 3), torch.ones(4, dtype=torch.bfloat16)
    src.tensors = [("x.weight", a), ("y.bias", b)]
    meta = src.metadata()
    assert [(m.name, m.dtype, m.shape) for m in meta] == [("x.weight", torch.float32, (2, 3)), ("y.bias", torch.bfloat16, (4,))]
    assert [n for n, _ in src] == ["x.weight", "y.bias"]
    assert [n for n, _ in src] == ["x.weight", "y.bias"]  # re-iterable: a fresh pass each round


def test_sleep_is_a_no_op_without_sleep_mode():
    e = object.__new__(vllm_local.VLLMEngine)
    e.can_sleep, e.asleep = False, False
    assert e.sleep() is False and e.asleep is False
    e.wake_up()  # nothing to undo


def test_auto_transfer_falls_back_to_reload_when_ipc_fails(monkeypatch):
    e = object.__new__(vllm_local.VLLMEngine)
    e.settings, e.transfer, e.asleep = EngineConfig(), "ipc", False
    calls = []

    def broken_ipc(tensors):
        raise RuntimeError("no CUDA IPC here")

    class LLM:
        def collective_rpc(self, method, kwargs):
            import os

            calls.append((method, sorted(os.listdir(kwargs["weights_path"]))))

        def reset_prefix_cache(self):
            calls.append(("reset_prefix_cache",))

    e._update_weights_ipc, e.llm = broken_ipc, LLM()
    seconds = e.update_weights([("w", torch.ones(2)), ("v", torch.zeros(3))])
    assert seconds >= 0 and e.transfer == "reload"
    assert calls == [("rlaif_reload_weights", ["model.safetensors"]), ("reset_prefix_cache",)]
    # an explicit "ipc" does not hide the failure
    e.settings, e.transfer = EngineConfig(weight_transfer="ipc"), "ipc"
    with pytest.raises(RuntimeError, match="no CUDA IPC"):
        e.update_weights([("w", torch.ones(2))])


def test_only_the_expected_reload_warnings_are_dropped():
    """On every sync vLLM says "Failed to load weights" for the rotary embedding (a computed cache) and a
    head tied to the embeddings (repacked by rlaif); those lines are dropped, any other layer's stays."""
    import logging

    from rlaif.engine.vllm_worker import _DropExpected

    def record(layer):
        return logging.LogRecord("vllm.model_executor.model_loader.reload.layerwise", logging.WARNING, __file__, 1,
                                 "%s: Failed to load weights", (layer,), None)

    tied = _DropExpected({"RotaryEmbedding", "ParallelLMHead"})
    untied = _DropExpected({"RotaryEmbedding"})
    assert not tied.filter(record("RotaryEmbedding")) and not tied.filter(record("ParallelLMHead"))
    assert untied.filter(record("ParallelLMHead"))  # an untied head that failed to load is worth a warning
    assert tied.filter(record("QKVParallelLinear")) and tied.filter(record("RowParallelLinear"))
    other = logging.LogRecord("x", logging.WARNING, __file__, 1, "%s: Delayed processing", ("RotaryEmbedding",), None)
    assert tied.filter(other)
