"""Engines: in-process vLLM, and a scripted fake for tests. See :mod:`rlaif.engine.base`."""

from rlaif.engine.base import ChatRequest, Engine, SamplingConfig, describe

__all__ = ["ChatRequest", "Engine", "SamplingConfig", "describe", "create_engine"]


def create_engine(model: str, backend: str = "vllm", **settings) -> Engine:
    """Build an engine by backend name; imports vLLM only when asked for it."""
    if backend == "vllm":
        from rlaif.engine.vllm_local import VLLMEngine, VLLMSettings

        show_progress = settings.pop("show_progress", True)
        return VLLMEngine(model, VLLMSettings(**settings), show_progress=show_progress)
    if backend == "fake":
        from rlaif.engine.fake import FakeEngine

        return FakeEngine(model=model)
    raise ValueError(f"unknown engine backend {backend!r} (choose 'vllm' or 'fake')")
