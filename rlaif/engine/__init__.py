"""Engines: in-process vLLM, an OpenAI-compatible server, plain transformers, and a scripted fake for tests. See :mod:`rlaif.engine.base`."""

from __future__ import annotations

from collections import Counter
from typing import Mapping

from rlaif.engine.base import ChatRequest, Engine, SamplingConfig, describe
from rlaif.engine.config import BACKENDS, EngineConfig

__all__ = ["ChatRequest", "Engine", "EngineConfig", "SamplingConfig", "describe", "create_engine", "answered_by", "BACKENDS"]


def create_engine(model: str | None, engine: "EngineConfig | str" = "vllm", *, seed: int = 0, show_progress: bool = True,
                  share: float = 1.0, batch_size: int | None = None, **fields) -> Engine:
    """The engine ``engine`` describes (an :class:`EngineConfig`, or a backend name with the
    config's fields as keywords); imports vLLM only when asked for it. The one factory every
    command and trainer builds its engines with.

    ``model`` is a model folder or hub id for the in-process backends; for ``"openai"`` it is the
    model's name on the server (None: the server's first model). ``seed`` seeds vLLM's sampler.
    ``share`` (vLLM only, default 1) divides the default memory share when several engines live in
    one process and neither ``gpu_memory_utilization`` nor ``kv_cache_gib`` is given.
    ``batch_size``: the transformers backend's generation batch. The openai backend reads its key
    from the environment variable ``engine.api_key_env`` names.
    """
    import dataclasses

    cfg = EngineConfig(backend=engine, **fields) if isinstance(engine, str) else dataclasses.replace(engine, **fields)
    if cfg.backend == "vllm":
        from rlaif.engine.vllm_local import VLLMEngine, shared_memory_utilization

        if share != 1.0 and cfg.gpu_memory_utilization is None and not cfg.kv_cache_gib:
            cfg = dataclasses.replace(cfg, gpu_memory_utilization=shared_memory_utilization(share))
        return VLLMEngine(_need_model(model, cfg.backend), cfg, seed=seed, show_progress=show_progress)
    if cfg.backend == "transformers":
        from rlaif.engine.hf_local import HFEngine

        keep = {"max_model_len": cfg.max_model_len, "trust_remote_code": cfg.trust_remote_code, "batch_size": batch_size,
                "dtype": None if cfg.dtype == "auto" else cfg.dtype}
        return HFEngine(_need_model(model, cfg.backend), show_progress=show_progress,
                        **{k: v for k, v in keep.items() if v is not None})
    if cfg.backend == "openai":
        from rlaif.engine.openai_server import OpenAIServerEngine

        return OpenAIServerEngine(cfg.base_url, model=model, api_key=cfg.api_key(), max_concurrency=cfg.max_concurrency,
                                  timeout_s=cfg.request_timeout_s, max_retries=cfg.max_retries, show_progress=show_progress,
                                  max_consecutive_failures=cfg.max_consecutive_failures)
    from rlaif.engine.fake import FakeEngine

    return FakeEngine(model=model or "fake-model")


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
