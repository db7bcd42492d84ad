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
from rlaif.engine.config import EngineConfig
from rlaif.pipeline.distributed import RayConfig
from rlaif.pipeline.judge import LabelSettings
from rlaif.pipeline.verdicts import without_default_verdict
from rlaif.settings import SettingsError, apply_overrides, check_keys, read_yaml

STAGES = ("response", "critique", "revision")
BUILTIN_SAMPLING = {
    "response": SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=256),
    "critique": SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=192),
    "revision": SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=256),
}


ConfigError = SettingsError
"""A settings file or flag that cannot be used (every command's settings raise the same error)."""


PAIR_MODES = ("revision", "samples-all", "samples-random", "west-of-n", "rlcd")


@dataclass(frozen=True)
class LabelConfig(LabelSettings):
    """The AI-feedback stage of ``rlaif generate``: how pairs are judged (every field of
    :class:`rlaif.pipeline.judge.LabelSettings`, the one labelling dataclass) plus which pairs
    are made and by which model. ``seed`` is always the run's seed."""

    enabled: bool = False
    """Label pairs with the feedback model; otherwise the final revision is 'chosen'."""
    pairs: str = "revision"
    """'revision': initial response vs final revision; 'samples-all': every pair of a prompt's
    samples (final texts); 'samples-random': ``pairs_per_prompt`` random pairs of them. Labelled by
    construction, no judge needed (with ``enabled`` the judge checks them): 'west-of-n', the best and
    the worst of a prompt's samples under ``reward_model`` or ``reward_fn``; 'rlcd', answers under a
    positive and a negative system prompt made from a sampled principle
    (:mod:`rlaif.pipeline.constructed`)."""
    pairs_per_prompt: int = 1
    feedback_model: str | None = None
    """None: the policy model, served by the same engine."""
    reward_model: str | None = None
    """west-of-n: a sequence-classification reward model (folder or hub id), e.g. ``rlaif train rm``'s."""
    reward_fn: str | None = None
    """west-of-n: a programmatic reward instead, ``package.module:function(prompts, responses)``."""

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as exc:
            raise ConfigError(f"label: {exc}") from None
        if self.pairs not in PAIR_MODES:
            raise ConfigError(f"label.pairs must be one of {list(PAIR_MODES)}, got {self.pairs!r}")
        if self.pairs_per_prompt < 1:
            raise ConfigError("label.pairs_per_prompt must be >= 1")
        if self.pairs == "west-of-n" and bool(self.reward_model) == bool(self.reward_fn):
            raise ConfigError("--pairs west-of-n needs one of --reward-model or --reward-fn (label.reward_model / label.reward_fn)")
        if self.pairs != "west-of-n" and (self.reward_model or self.reward_fn):
            raise ConfigError("--reward-model and --reward-fn are for --pairs west-of-n")


LABEL_FIELDS_ADDED = {"cot_sampling": LabelSettings.cot_sampling, "max_response_chars": LabelSettings.max_response_chars,
                      "reward_model": None, "reward_fn": None}
"""Labelling settings run folders did not record before the settings were one dataclass: left out of
the fingerprint at their defaults, so older run folders still resume."""
ENGINE_FIELDS_ADDED = {f.name: f.default for f in dataclasses.fields(EngineConfig)
                       if f.name in ("feedback_base_url", "feedback_served_model", "enable_prefix_caching", "block_size",
                                     "tensor_parallel_size", "sleep_mode", "weight_transfer")}
"""Engine settings added after run folders recorded their settings: left out at their defaults (likewise)."""


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
        if self.label.seed != self.seed:  # the labeller's principle draws follow the run's seed
            object.__setattr__(self, "label", dataclasses.replace(self.label, seed=self.seed))
        needs_samples = self.label.pairs == "west-of-n" or (self.label.enabled and self.label.pairs in ("samples-all", "samples-random"))
        if needs_samples and self.samples_per_prompt < 2:
            raise ConfigError(f"label.pairs={self.label.pairs!r} needs samples_per_prompt >= 2 (--samples N)")
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
        # Settings added since run folders first recorded theirs are left out at their defaults, so
        # older run folders keep their fingerprint (and resume). The label's seed is the run's.
        for section, added in (("engine", ENGINE_FIELDS_ADDED), ("label", LABEL_FIELDS_ADDED)):
            for key, default in added.items():
                if d[section][key] == (dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default):
                    del d[section][key]
        d["label"] = without_default_verdict(d["label"])
        del d["label"]["seed"]
        del d["engine"]["max_consecutive_failures"]  # when a run stops for a server gone shapes no row
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
        if "seed" in label_raw:
            raise ConfigError("label.seed: the labeller's seed is the run's seed (set seed)")
        if isinstance(label_raw.get("cot_sampling"), dict):
            label_raw["cot_sampling"] = _sampling({**dataclasses.asdict(LabelSettings.cot_sampling), **label_raw["cot_sampling"]},
                                                  "label.cot_sampling")
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
