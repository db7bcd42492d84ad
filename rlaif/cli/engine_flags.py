"""The engine flags shared by ``rlaif generate``, ``label`` and ``bon`` (one parser for all)."""

from __future__ import annotations

import argparse


class JoinURLs(argparse.Action):
    """``--base-url`` given again adds servers: the values are joined with commas."""

    def __call__(self, parser, namespace, values, option_string=None):
        before = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, f"{before},{values}" if before else values)


def add_engine_flags(p) -> None:
    p.add_argument("--backend", dest="engine.backend", choices=["vllm", "openai", "transformers", "fake"],
                   help="engine backend (default: vllm in-process; openai: a server speaking the OpenAI API)")
    p.add_argument("--base-url", dest="engine.base_url", action=JoinURLs, metavar="URL[,URL...]",
                   help="openai backend: server address, e.g. http://127.0.0.1:8000; several servers of the same model "
                        "(comma-separated, or the flag repeated) share the requests")
    p.add_argument("--served-model", dest="engine.served_model", help="openai backend: model name on the server (default: its first)")
    p.add_argument("--api-key-env", dest="engine.api_key_env", help="openai backend: environment variable holding the API key")
    p.add_argument("--max-concurrency", dest="engine.max_concurrency", type=int, help="openai backend: requests in flight (default 32)")
    p.add_argument("--request-timeout", dest="engine.request_timeout_s", type=float, help="openai backend: seconds per request (default 120)")
    p.add_argument("--max-retries", dest="engine.max_retries", type=int, help="openai backend: retries on errors, 429 and 5xx (default 6)")
    p.add_argument("--max-consecutive-failures", dest="engine.max_consecutive_failures", type=int, metavar="N",
                   help="openai backend: stop when N requests in a row failed after their retries (default 20; 0: never)")
    p.add_argument("--max-model-len", dest="engine.max_model_len", type=int, help="context length")
    p.add_argument("--gpu-memory-utilization", dest="engine.gpu_memory_utilization", type=float,
                   help="engine memory share (of CPU memory on CPU hosts)")
    p.add_argument("--kv-cache-gib", dest="engine.kv_cache_gib", type=float, help="KV-cache size in GiB (overrides the memory share)")
    p.add_argument("--enforce-eager", dest="engine.enforce_eager", action=argparse.BooleanOptionalAction,
                   help="skip graph compilation (default: on for CPU hosts)")
    p.add_argument("--dtype", dest="engine.dtype", help="model dtype (default: auto)")
    p.add_argument("--trust-remote-code", dest="engine.trust_remote_code", action="store_true", default=None,
                   help="allow code shipped with the model to run")


def engine_config(args: argparse.Namespace):
    """The :class:`rlaif.engine.config.EngineConfig` the engine flags (and their ``engine.KEY``
    settings) describe; a bad combination raises :class:`rlaif.settings.SettingsError`."""
    from rlaif.engine.config import EngineConfig

    return EngineConfig(**{k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("engine.") and v is not None})
