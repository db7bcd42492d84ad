"""How a model is served: one settings dataclass for every backend and every command.

``rlaif generate``, ``label``, ``bon``, ``eval`` and ``try`` read it from their engine flags
(``--backend``, ``--kv-cache-gib``, ...), ``engine.KEY=value`` words or a ``--config`` file; the
online trainers (``rlaif train ppo|online-dpo|grpo``) read it as their rollout ``engine:`` and their
judge's ``judge.engine:`` sections. :func:`rlaif.engine.create_engine` turns it into an engine;
each backend uses the fields that concern it (the docstrings say which).
"""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.engine.server_pool import parse_base_urls
from rlaif.settings import SettingsError

BACKENDS = ("vllm", "openai", "transformers", "fake")
WEIGHT_TRANSFERS = ("auto", "reload", "ipc")


@dataclass(frozen=True)
class EngineConfig:
    """How the model is served."""

    backend: str = "vllm"
    """'vllm' (in-process), 'openai' (a server speaking the OpenAI API, e.g. vllm serve),
    'transformers' (plain generate; slower) or 'fake' (scripted, for tests)."""
    base_url: str | None = None
    """openai backend: the server's address, e.g. http://127.0.0.1:8000; several servers of the same
    model comma-separated (or a YAML list), which share the requests (:mod:`rlaif.engine.server_pool`)."""
    served_model: str | None = None
    """openai backend: the model name on the server (None: the server's first model)."""
    feedback_base_url: str | None = None
    """openai backend: the feedback model's server, when it is not ``base_url``."""
    feedback_served_model: str | None = None
    """openai backend: the feedback model's name on its server (None: ``label.feedback_model`` if set,
    else the policy's engine on the same server, or the first model of ``feedback_base_url``)."""
    api_key_env: str | None = None
    """openai backend: name of the environment variable holding the API key (never stored)."""
    max_concurrency: int = 32
    """openai backend: requests in flight at once."""
    request_timeout_s: float = 120.0
    max_retries: int = 6
    """openai backend: retries on connection errors, timeouts, 429 and 5xx (exponential backoff)."""
    max_consecutive_failures: int = 20
    """openai backend: after this many requests in a row failed after their retries the server counts as
    gone and the command stops (0: never; :mod:`rlaif.engine.failures`). Not part of any run's fingerprint."""
    max_model_len: int | None = None
    """In-process backends: context length; None = the model's own, capped at 8192 (the online
    trainers: their ``max_length``)."""
    gpu_memory_utilization: float | None = None
    """vllm: share of accelerator memory (of CPU memory on CPU hosts) for weights + KV cache;
    None = 0.9 on GPU, 0.35 on CPU."""
    kv_cache_gib: float | None = None
    """vllm: KV-cache size in GiB; overrides gpu_memory_utilization (steadier on CPU hosts, where the
    share is taken of total memory minus the worker's own)."""
    enforce_eager: bool | None = None
    """vllm: skip graph compilation; None = on for CPU hosts (start-up ~30 s instead of ~2 min)."""
    dtype: str = "auto"
    """In-process backends: weights' dtype ("float32" on CPU makes vLLM's log-probs match a float32
    trainer's to ~1e-5)."""
    trust_remote_code: bool = False
    """Run code shipped with a model; off unless you trust the model's source."""
    enable_prefix_caching: bool = True
    """vllm: reuse the KV cache of prefixes requests share (the few-shot examples, a judged pair's prompt)."""
    block_size: int | None = None
    """vllm: KV-cache block size in tokens (None: vLLM's, 128 on CPU hosts). The prefix cache shares
    whole blocks only, so smaller blocks let requests share more of a common prefix."""
    tensor_parallel_size: int = 1
    """vllm: GPUs one engine spans."""
    sleep_mode: bool = False
    """vllm: build the engine so that it can sleep (weights offloaded, KV cache freed) while a trainer
    on the same accelerator updates (the online trainers turn it on). vLLM's CPU backend has no
    sleep mode, so it is ignored there (with a log line)."""
    weight_transfer: str = "auto"
    """vllm: how new weights reach the engine (online trainers): "reload" (a safetensors file in shared
    memory, reloaded in place by the workers; works everywhere), "ipc" (vLLM's CUDA-IPC weight-transfer
    engine: the workers read the trainer's GPU tensors directly; CUDA only) or "auto" (ipc on CUDA
    hosts whose vLLM has it, reload elsewhere)."""

    def __post_init__(self) -> None:
        for key in ("base_url", "feedback_base_url"):  # checked; a list becomes one comma-separated string
            value = getattr(self, key)
            if value is not None:
                try:
                    urls = parse_base_urls(value)
                except ValueError as exc:
                    raise SettingsError(f"engine.{key}: {exc}") from None
                if not isinstance(value, str):  # a string stays as given: it is part of run fingerprints
                    object.__setattr__(self, key, ",".join(urls))
        if self.backend not in BACKENDS:
            raise SettingsError(f"engine.backend must be 'vllm', 'openai', 'transformers' or 'fake', got {self.backend!r}")
        if self.backend == "openai" and not self.base_url:
            raise SettingsError("engine.backend 'openai' needs engine.base_url (--base-url)")
        if self.backend != "openai" and (self.feedback_base_url or self.feedback_served_model):
            raise SettingsError("engine.feedback_base_url and engine.feedback_served_model (--feedback-base-url, "
                                "--feedback-served-model) are for --backend openai; in-process backends take --feedback-model")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.request_timeout_s <= 0 or self.max_consecutive_failures < 0:
            raise SettingsError("max_concurrency must be >= 1, max_retries >= 0, request_timeout_s > 0 and "
                                "max_consecutive_failures >= 0")
        if self.weight_transfer not in WEIGHT_TRANSFERS:
            raise SettingsError(f"engine.weight_transfer must be one of {WEIGHT_TRANSFERS}, got {self.weight_transfer!r}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise SettingsError("engine.gpu_memory_utilization must lie in (0, 1]")
        if self.kv_cache_gib is not None and self.kv_cache_gib <= 0:
            raise SettingsError("engine.kv_cache_gib must be > 0 (or null)")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise SettingsError("engine.max_model_len must be at least 16")
        if self.tensor_parallel_size < 1 or (self.block_size is not None and self.block_size < 1):
            raise SettingsError("engine.tensor_parallel_size and engine.block_size must be >= 1")

    def api_key(self) -> str | None:
        """The API key from the environment variable ``api_key_env`` names (None without one)."""
        import os

        return os.environ.get(self.api_key_env) if self.api_key_env else None
