"""Engines: in-process vLLM, an OpenAI-compatible server, plain transformers, and a scripted fake for tests. See :mod:`rlaif.engine.base`."""

from __future__ import annotations

from collections import Counter
from typing import Mapping

from rlaif.engine.base import ChatRequest, Engine, SamplingConfig, describe

__all__ = ["ChatRequest", "Engine", "SamplingConfig", "describe", "create_engine", "answered_by"]

BACKENDS = ("vllm", "transformers", "openai", "fake")


def create_engine(model: str | None, backend: str = "vllm", **settings) -> Engine:
    """Build an engine by backend name; imports vLLM only when asked for it.

    ``model`` is a model folder or hub id for the in-process backends; for ``"openai"`` it
    is the model's name on the server (None: the server's first model), and ``base_url``
    is required. ``share`` (vLLM only, default 1) divides the default memory share when
    several engines live in one process and neither ``gpu_memory_utilization`` nor
    ``kv_cache_gib`` is given.
    """
    if backend == "vllm":
        from rlaif.engine.vllm_local import VLLMEngine, VLLMSettings, shared_memory_utilization

        show_progress = settings.pop("show_progress", True)
        share = settings.pop("share", 1.0)
        if share != 1.0 and settings.get("gpu_memory_utilization") is None and not settings.get("kv_cache_gib"):
            settings["gpu_memory_utilization"] = shared_memory_utilization(share)
        return VLLMEngine(_need_model(model, backend), VLLMSettings(**settings), show_progress=show_progress)
    if backend == "transformers":
        from rlaif.engine.hf_local import HFEngine

        keep = {k: settings[k] for k in ("dtype", "max_model_len", "show_progress", "trust_remote_code", "batch_size") if settings.get(k) is not None}
        if keep.get("dtype") == "auto":
            keep.pop("dtype")
        return HFEngine(_need_model(model, backend), **keep)
    if backend == "openai":
        from rlaif.engine.openai_server import OpenAIServerEngine

        keep = {k: settings[k] for k in ("api_key", "max_concurrency", "timeout_s", "max_retries", "show_progress")
                if settings.get(k) is not None}
        if not settings.get("base_url"):
            raise ValueError("the openai backend needs a base_url (the server's address)")
        return OpenAIServerEngine(settings["base_url"], model=model, **keep)
    if backend == "fake":
        from rlaif.engine.fake import FakeEngine

        return FakeEngine(model=model or "fake-model")
    raise ValueError(f"unknown engine backend {backend!r} (choose one of {', '.join(repr(b) for b in BACKENDS)})")


def _need_model(model: str | None, backend: str) -> str:
    if not model:
        raise ValueError(f"the {backend} backend needs a model (a folder or a hub id)")
    return model


def answered_by(engine: Engine, before: Mapping[str, int] | None = None) -> str:
    """The model that answered an engine's requests, for provenance.

    A server reports the model in each answer (``reported_models``, counted by name): that
    name is what answered, which need not be the name asked for. ``before`` is a copy of
    those counts taken earlier, to name only the answers since. Engines that run the model
    themselves, and a server that reported nothing yet, answer with ``engine.model``.
    Several names (a server that switched models mid-run) are joined with "+".
    """
    reported = getattr(engine, "reported_models", None)
    if reported:
        since = Counter(reported) - Counter(before or {})
        if since:
            return "+".join(sorted(since))
    return str(engine.model)
