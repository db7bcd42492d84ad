"""Engines: in-process vLLM, an OpenAI-compatible server, plain transformers, and a scripted fake for tests. See :mod:`rlaif.engine.base`."""

from rlaif.engine.base import ChatRequest, Engine, SamplingConfig, describe

__all__ = ["ChatRequest", "Engine", "SamplingConfig", "describe", "create_engine"]


def create_engine(model: str, backend: str = "vllm", **settings) -> Engine:
    """Build an engine by backend name; imports vLLM only when asked for it."""
    if backend == "vllm":
        from rlaif.engine.vllm_local import VLLMEngine, VLLMSettings

        show_progress = settings.pop("show_progress", True)
        return VLLMEngine(model, VLLMSettings(**settings), show_progress=show_progress)
    if backend == "transformers":
        from rlaif.engine.hf_local import HFEngine

        keep = {k: settings[k] for k in ("dtype", "max_model_len", "show_progress", "trust_remote_code", "batch_size") if settings.get(k) is not None}
        if keep.get("dtype") == "auto":
            keep.pop("dtype")
        return HFEngine(model, **keep)
    if backend == "openai":
        from rlaif.engine.openai_server import OpenAIServerEngine

        keep = {k: settings[k] for k in ("model", "api_key", "max_concurrency", "timeout_s", "max_retries", "show_progress")
                if settings.get(k) is not None}
        if not settings.get("base_url"):
            raise ValueError("the openai backend needs a base_url (the server's address)")
        return OpenAIServerEngine(settings["base_url"], **keep)
    if backend == "fake":
        from rlaif.engine.fake import FakeEngine

        return FakeEngine(model=model)
    raise ValueError(f"unknown engine backend {backend!r} (choose 'vllm', 'transformers', 'openai' or 'fake')")
