"""Typed settings of ``rlaif generate``: one YAML file, command-line flags on top.

Precedence, highest first: command-line flags (and ``key=value`` overrides), the ``--config``
YAML file, the constitution's ``defaults``, the built-in defaults below (see
:mod:`rlaif.settings`, shared by every command). The resolved settings are saved
into the run folder and fingerprinted, so a run folder is never resumed with other settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.engine.base import SamplingConfig
from rlaif.pipeline.distributed import RayConfig
from rlaif.engine.server_pool import parse_base_urls
from rlaif.settings import SettingsError, apply_overrides, check_keys, read_yaml

STAGES = ("response", "critique", "revision")
BUILTIN_SAMPLING = {
    "response": SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=256),
    "critique": SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=192),
    "revision": SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=256),
}


class ConfigError(SettingsError):
    """A settings file or flag that cannot be used; the message says which and why."""


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
    max_model_len: int | None = None
    """Context length; None = the model's own, capped at 8192."""
    gpu_memory_utilization: float | None = None
    """Memory share for the engine (of CPU memory on CPU hosts); None = a safe default per platform."""
    kv_cache_gib: float | None = None
    """KV-cache size in GiB (overrides gpu_memory_utilization)."""
    enforce_eager: bool | None = None
    """Skip graph compilation; None = on for CPU hosts."""
    dtype: str = "auto"
    trust_remote_code: bool = False
    """Run code shipped with a model; off unless you trust the model's source."""

    def __post_init__(self) -> None:
        for key in ("base_url", "feedback_base_url"):  # checked; a list becomes one comma-separated string
            value = getattr(self, key)
            if value is not None:
                try:
                    urls = parse_base_urls(value)
                except ValueError as exc:
                    raise ConfigError(f"engine.{key}: {exc}") from None
                if not isinstance(value, str):  # a string stays as given: it is part of run fingerprints
                    object.__setattr__(self, key, ",".join(urls))
        if self.backend not in ("vllm", "openai", "transformers", "fake"):
            raise ConfigError(f"engine.backend must be 'vllm', 'openai', 'transformers' or 'fake', got {self.backend!r}")
        if self.backend == "openai" and not self.base_url:
            raise ConfigError("engine.backend 'openai' needs engine.base_url (--base-url)")
        if self.backend != "openai" and (self.feedback_base_url or self.feedback_served_model):
            raise ConfigError("engine.feedback_base_url and engine.feedback_served_model (--feedback-base-url, "
                              "--feedback-served-model) are for --backend openai; in-process backends take --feedback-model")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.request_timeout_s <= 0:
            raise ConfigError("max_concurrency must be >= 1, max_retries >= 0 and request_timeout_s > 0")


PAIR_MODES = ("revision", "samples-all", "samples-random")


@dataclass(frozen=True)
class LabelConfig:
    """The AI-feedback stage of ``rlaif generate`` (see :mod:`rlaif.pipeline.judge`)."""

    enabled: bool = False
    """Label pairs with the feedback model; otherwise the final revision is 'chosen'."""
    pairs: str = "revision"
    """'revision': initial response vs final revision; 'samples-all': every pair of a prompt's
    samples (final texts); 'samples-random': ``pairs_per_prompt`` random pairs of them."""
    pairs_per_prompt: int = 1
    ensemble: int = 4
    """Principles sampled per pair (see :class:`rlaif.pipeline.judge.LabelSettings`)."""
    both_orders: bool = True
    cot: bool = False
    cot_clamp: tuple[float, float] = (0.4, 0.6)
    tie_band: float = 0.0
    keep_ties: bool = False
    """Keep ties (no chosen side) in the preference dataset, flagged, with chosen_prob 0.5."""
    length_control: bool = False
    """Remove the length-explained part of the judge's preference (see :mod:`rlaif.pipeline.length_control`)."""
    few_shot: bool = False
    feedback_model: str | None = None
    """None: the policy model, served by the same engine."""

    def __post_init__(self) -> None:
        if self.pairs not in PAIR_MODES:
            raise ConfigError(f"label.pairs must be one of {list(PAIR_MODES)}, got {self.pairs!r}")
        if self.pairs_per_prompt < 1:
            raise ConfigError("label.pairs_per_prompt must be >= 1")
        try:
            self.settings(0)
        except ValueError as exc:
            raise ConfigError(f"label: {exc}") from None

    def settings(self, seed: int):
        from rlaif.pipeline.judge import LabelSettings

        return LabelSettings(
            ensemble=self.ensemble, both_orders=self.both_orders, cot=self.cot, cot_clamp=tuple(self.cot_clamp),
            tie_band=self.tie_band, keep_ties=self.keep_ties, few_shot=self.few_shot, seed=seed,
            length_control=self.length_control,
        )


@dataclass(frozen=True)
class GenerateConfig:
    """Every setting of a critique-and-revise run."""

    prompts: str
    """Prompt file: .jsonl, .txt, .parquet, or a saved Hugging Face dataset folder."""
    out: str
    """Run folder; created if needed, resumed if it holds a run with the same settings."""
    constitution: str = "default"
    """Constitution name or YAML path."""
    principles_dir: str | None = None
    """Principles folder; default: the one the constitution points to."""
    model: str = "default"
    """Policy model: 'default' (embedded SmolLM2-135M-Instruct), a local folder or a hub id."""
    rounds: int = 1
    """Critique-and-revision rounds per response."""
    samples_per_prompt: int = 1
    """Independent trajectories per prompt."""
    seed: int = 0
    """Run seed; every request's seed derives from it, the prompt id, sample, stage and round."""
    limit: int | None = None
    """Use only the first N prompts."""
    chunk_size: int = 256
    """Conversations per chunk; each stage of a chunk is one batched engine call."""
    sampling: dict[str, SamplingConfig] = field(default_factory=lambda: dict(BUILTIN_SAMPLING))
    """Per-stage sampling: response, critique, revision."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    """AI preference labels (off: the final revision is 'chosen')."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Run chunks on Ray replicas (``ray.address`` set; see :mod:`rlaif.pipeline.distributed`)."""

    def __post_init__(self) -> None:
        if self.label.enabled and self.label.pairs != "revision" and self.samples_per_prompt < 2:
            raise ConfigError(f"label.pairs={self.label.pairs!r} needs samples_per_prompt >= 2")
        if self.label.enabled and self.label.pairs == "revision" and self.rounds < 1:
            raise ConfigError("label.pairs='revision' needs rounds >= 1 (nothing to compare otherwise)")
        if self.rounds < 0:
            raise ConfigError(f"rounds must be >= 0, got {self.rounds}")
        if self.samples_per_prompt < 1:
            raise ConfigError(f"samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        if self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")
        unknown = set(self.sampling) - set(STAGES)
        if unknown:
            raise ConfigError(f"unknown sampling stage(s) {sorted(unknown)}; stages are {list(STAGES)}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # Unset feedback-server settings are left out, so run folders made before they existed
        # keep their fingerprint (and resume).
        for key in ("feedback_base_url", "feedback_served_model"):
            if d["engine"][key] is None:
                del d["engine"][key]
        return d


def _check_keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    try:
        check_keys(data, allowed, where)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None


def _sampling(raw: dict[str, Any], where: str) -> SamplingConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping")
    _check_keys(raw, {"temperature", "top_p", "max_tokens"}, where)
    try:
        return SamplingConfig(**raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_yaml(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The ``--config`` file's settings (``{}`` without a file) with ``key=value`` overrides on top."""
    data = read_yaml(path, ConfigError) if path else {}
    try:
        return apply_overrides(data, overrides or [])
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None


def resolve(file_values: dict[str, Any], flags: dict[str, Any], constitution_defaults: dict[str, Any]) -> GenerateConfig:
    """Merge the layers (flags > file > constitution defaults > built-ins) into one config."""
    names = {f.name for f in dataclasses.fields(GenerateConfig)}
    _check_keys(file_values, names, "config file")
    merged: dict[str, Any] = {}
    for key in ("rounds", "samples_per_prompt", "seed"):
        if key in constitution_defaults:
            merged[key] = constitution_defaults[key]
    sampling = dict(BUILTIN_SAMPLING)
    for stage, raw in (constitution_defaults.get("sampling") or {}).items():
        sampling[stage] = dataclasses.replace(sampling[stage], **raw)
    for stage, raw in (file_values.get("sampling") or {}).items():
        if stage not in STAGES:
            raise ConfigError(f"config file: unknown sampling stage {stage!r}; stages are {list(STAGES)}")
        base = dataclasses.asdict(sampling[stage])
        base.update(raw if isinstance(raw, dict) else {})
        sampling[stage] = _sampling(base, f"config file: sampling.{stage}")
    engine_raw = dict(file_values.get("engine") or {})
    _check_keys(engine_raw, {f.name for f in dataclasses.fields(EngineConfig)}, "config file: engine")
    label_raw = dict(file_values.get("label") or {})
    _check_keys(label_raw, {f.name for f in dataclasses.fields(LabelConfig)}, "config file: label")
    ray_raw = dict(file_values.get("ray") or {})
    _check_keys(ray_raw, {f.name for f in dataclasses.fields(RayConfig)}, "config file: ray")
    for key, value in file_values.items():
        if key not in ("sampling", "engine", "label", "ray"):
            merged[key] = value
    for key, value in flags.items():
        if value is None:
            continue
        if key.startswith("engine."):
            engine_raw[key.split(".", 1)[1]] = value
        elif key.startswith("label."):
            label_raw[key.split(".", 1)[1]] = value
        elif key.startswith("ray."):
            ray_raw[key.split(".", 1)[1]] = value
        elif key.startswith("sampling."):
            _, stage, name = key.split(".")
            sampling[stage] = _sampling({**dataclasses.asdict(sampling[stage]), name: value}, f"--{stage}-{name}")
        else:
            merged[key] = value
    for needed in ("prompts", "out"):
        if not merged.get(needed):
            raise ConfigError(f"--{needed} is required (or set '{needed}' in the config file)")
    try:
        if "cot_clamp" in label_raw:
            label_raw["cot_clamp"] = tuple(label_raw["cot_clamp"])
        try:
            ray = RayConfig(**ray_raw)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return GenerateConfig(sampling=sampling, engine=EngineConfig(**engine_raw), label=LabelConfig(**label_raw), ray=ray, **merged)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def fingerprint(parts: dict[str, Any]) -> str:
    """Stable hash of everything that shapes a run's rows."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
