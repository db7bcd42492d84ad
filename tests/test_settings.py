"""One settings system: --config YAML and key=value for generate, label, bon and train.

Precedence everywhere: a flag typed on the command line, then key=value, then the file,
then the default; unknown keys refused with their source named. Checked through the real
entry point, reading back what the run folder recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from test_cli_backends import QUIET, cli, generate_args, write_pairs, write_prompts

from rlaif.cli import bon as bon_cli
from rlaif.settings import SettingsError, apply_overrides, build, flatten, parse_override


@dataclass
class Inner:
    lr: float = 1.0


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    k: int = 0


def manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_label_file_then_key_value_then_flag(tmp_path, capsys):
    pairs = write_pairs(tmp_path)
    cfg = tmp_path / "label.yaml"
    cfg.write_text("ensemble: 2\ntie_band: 0.05\nengine:\n  backend: fake\nkeep_ties: true\n", encoding="utf-8")
    assert cli("label", "--pairs", pairs, "--out", tmp_path / "a", "--config", cfg, *QUIET) == 0
    s = manifest(tmp_path / "a")["settings"]
    assert s["label"]["ensemble"] == 2 and s["label"]["tie_band"] == 0.05
    assert manifest(tmp_path / "a")["engine"]["backend"] == "FakeEngine"
    # key=value beats the file; a typed flag beats both
    assert cli("label", "--pairs", pairs, "--out", tmp_path / "b", "--config", cfg, "ensemble=3", "tie_band=0.1", *QUIET) == 0
    assert manifest(tmp_path / "b")["settings"]["label"]["ensemble"] == 3
    assert manifest(tmp_path / "b")["settings"]["label"]["tie_band"] == 0.1
    assert cli("label", "--pairs", pairs, "--out", tmp_path / "c", "ensemble=3", "--ensemble", "1", "--config", cfg, *QUIET) == 0
    assert manifest(tmp_path / "c")["settings"]["label"]["ensemble"] == 1
    # a typed flag equal to its default still wins over the file
    assert cli("label", "--pairs", pairs, "--out", tmp_path / "d", "--config", cfg, "--tie-band", "0", *QUIET) == 0
    assert manifest(tmp_path / "d")["settings"]["label"]["tie_band"] == 0.0
    capsys.readouterr()


@pytest.mark.parametrize("content, words, message", [
    ("ensembel: 2\n", [], "unknown key(s) ['ensembel']"),
    ("engine:\n  backnd: fake\n", [], "unknown key(s) ['engine.backnd']"),
    ("", ["ensembel=2"], "key=value: unknown key(s) ['ensembel']"),
    ("ensemble: many\n", [], "ensemble='many': expected a int"),
    ("engine:\n  backend: gpu\n", [], "choose from"),
    ("keep_ties: yes please\n", [], "expected true or false"),
    ("- a list\n", [], "must be a YAML mapping"),
    ("", ["=3"], "is not key=value"),
])
def test_label_bad_settings_are_refused(tmp_path, capsys, content, words, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content, encoding="utf-8")
    typed = [] if "backend" in content else ["--backend", "fake"]  # a typed flag would win over the file
    code = cli("label", "--pairs", write_pairs(tmp_path), "--out", tmp_path / "o", "--config", cfg, *typed, *words, *QUIET)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    if "unknown" in message and "key=value" not in message:
        assert str(cfg) in err  # the file is named
    assert not (tmp_path / "o").exists()


def test_bon_config_and_key_value(tmp_path, capsys):
    prompts = write_prompts(tmp_path, 3)
    cfg = tmp_path / "bon.yaml"
    cfg.write_text("n: 2\nmax_tokens: 32\nengine.backend: fake\nreward_fn: test_cli_backends:seed_reward_or_length\n")
    assert cli("bon", "--prompts", prompts, "--out", tmp_path / "b", "--config", cfg, "n=3", *QUIET) == 0
    s = manifest(tmp_path / "b")["settings"]
    assert s["n"] == 3 and s["sampling"]["max_tokens"] == 32 and s["reward_model"] == "test_cli_backends:seed_reward_or_length"
    # the module's own entry point takes the same
    assert bon_cli.main(["--prompts", str(prompts), "--out", str(tmp_path / "m"), "--config", str(cfg), "temperature=0.5",
                         "--quiet"]) == 0
    assert manifest(tmp_path / "m")["settings"]["sampling"]["temperature"] == 0.5
    assert bon_cli.main(["--prompts", str(prompts), "--out", str(tmp_path / "x"), "--config", str(cfg), "m=3"]) == 2
    assert "unknown key(s) ['m']" in capsys.readouterr().err


def test_generate_key_value_settings(tmp_path, capsys):
    prompts = write_prompts(tmp_path, 2)
    cfg = tmp_path / "g.yaml"
    cfg.write_text("rounds: 2\nlabel:\n  ensemble: 2\n")
    assert cli(*generate_args(prompts, tmp_path / "g", "--backend", "fake", "--config", cfg,
                              "label.enabled=true", "label.ensemble=3", "sampling.response.max_tokens=24", "seed=7")) == 0
    s = manifest(tmp_path / "g")["settings"]
    # generate_args passes --rounds 1: the typed flag beats the file's 2
    assert s["rounds"] == 1 and s["seed"] == 7 and s["label"]["enabled"] is True and s["label"]["ensemble"] == 3
    assert s["sampling"]["response"]["max_tokens"] == 24
    assert cli(*generate_args(prompts, tmp_path / "h", "--backend", "fake", "roundz=2")) == 2
    assert "unknown key(s) ['roundz']" in capsys.readouterr().err
    assert cli(*generate_args(prompts, tmp_path / "h", "--backend", "fake", "label.ensembel=2")) == 2
    assert "label: unknown key(s) ['ensembel']" in capsys.readouterr().err


def test_shared_helpers():
    assert parse_override("a.b=1e-5") == ("a.b", "1e-5") and parse_override("x=[1, 2]") == ("x", [1, 2])
    assert apply_overrides({"a": {"b": 1, "c": 2}}, ["a.b=3", "d=true"]) == {"a": {"b": 3, "c": 2}, "d": True}
    with pytest.raises(SettingsError, match="is a value"):
        apply_overrides({"a": 1}, ["a.b=2"])
    assert flatten({"engine": {"backend": "fake", "x": {}}, "n": 2}) == {"engine.backend": "fake", "engine.x": {}, "n": 2}
    assert build(Outer, {"inner": {"lr": "1e-5"}, "k": 2}) == Outer(Inner(1e-5), 2)
    with pytest.raises(ValueError, match=r"unknown Inner key\(s\) \['rl'\] under 'inner'"):
        build(Outer, {"inner": {"rl": 1}})


@dataclass
class Tuned:
    """A section whose defaults differ from its dataclass's (like the judge's engine)."""

    inner: Inner = field(default_factory=lambda: Inner(lr=0.5))
    pair: tuple[float, float] = (0.1, 0.9)


def test_a_section_fills_in_over_its_own_default():
    # judge.engine: {dtype: float32} must keep the judge engine's other defaults, not the
    # EngineConfig class's: a nested section builds over the field's default instance.
    assert build(Tuned, {}).inner.lr == 0.5
    assert build(Tuned, {"inner": {}}).inner.lr == 0.5
    assert build(Tuned, {"inner": {"lr": 2}}).inner.lr == 2.0
    assert build(Tuned, {"pair": [0.2, 0.8]}).pair == (0.2, 0.8)  # YAML lists become the declared tuple


def test_one_dataclass_per_concept():
    """Engine settings are EngineConfig everywhere (commands, rollout engine, judge engine); labelling
    settings are LabelSettings everywhere (rlaif label, generate's label section, the online judge)."""
    import dataclasses

    from rlaif.engine.config import EngineConfig
    from rlaif.pipeline.config import GenerateConfig, LabelConfig, resolve
    from rlaif.pipeline.judge import LabelSettings
    from rlaif.train.config import load_config
    from rlaif.train.feedback import JudgeConfig
    from rlaif.train.grpo import GRPOConfig
    from rlaif.train.online_dpo import OnlineDPOConfig
    from rlaif.train.ppo import PPOConfig

    cfg = resolve({"engine": {"block_size": 32}, "label": {"ensemble": 3, "max_response_chars": 100}},
                  {"prompts": "p", "out": "o", "seed": 5, "label.enabled": True}, {})
    assert isinstance(cfg.engine, EngineConfig) and cfg.engine.block_size == 32
    assert isinstance(cfg.label, LabelSettings) and cfg.label.max_response_chars == 100
    assert cfg.label.seed == 5  # the labeller follows the run's seed ...
    with pytest.raises(SettingsError, match="label.seed"):  # ... and is not set apart from it
        resolve({"label": {"seed": 1}}, {"prompts": "p", "out": "o"}, {})
    assert GenerateConfig(prompts="p", out="o", seed=4, label=LabelConfig(enabled=True)).label.seed == 4
    ppo = load_config(PPOConfig, None, ["data=x", "engine.dtype=float32", "engine.block_size=16"])
    assert isinstance(ppo.engine, EngineConfig) and ppo.engine.kv_cache_gib == 1.0 and ppo.engine.sleep_mode  # rollout defaults kept
    assert ppo.engine.block_size == 16 and ppo.engine.dtype == "float32"
    for cls in (OnlineDPOConfig, GRPOConfig):
        c = load_config(cls, None, ["data=x", "judge.ensemble=3", "judge.engine.dtype=float32", "judge.cot=true"])
        assert isinstance(c.judge, LabelSettings) and isinstance(c.judge.engine, EngineConfig)
        assert c.judge.engine.kv_cache_gib == 0.5 and c.judge.engine.max_model_len == 2048 and c.judge.engine.dtype == "float32"
        ls = c.judge.label_settings(9)
        assert type(ls) is LabelSettings and ls.seed == 9 and ls.ensemble == 3 and ls.cot and ls.max_response_chars == 4000
        with pytest.raises(ValueError, match="valid keys"):  # the old flat engine keys name the new layout
            load_config(cls, None, ["data=x", "judge.kv_cache_gib=1"])
    # every labelling setting and every engine setting is defined once: the composite classes add only their own
    assert {f.name for f in dataclasses.fields(LabelSettings)} <= {f.name for f in dataclasses.fields(LabelConfig)}
    assert {f.name for f in dataclasses.fields(JudgeConfig)} - {f.name for f in dataclasses.fields(LabelSettings)} == \
        {"model", "engine", "constitution", "principles_dir", "retries"}


# Fingerprints of generate runs computed at commit 22acab2, before engine and labelling settings became one
# dataclass each: a run folder made then must resume now (its fingerprint must not change).
OLD_FINGERPRINTS = [
    ({}, {"prompts": "p.jsonl", "out": "o"}, "2fd0ec30d77b44de9c9b01a987f10467f1d7a974ae133c3b342ad2736b099840"),
    ({"label": {"enabled": True, "ensemble": 2, "cot": True}}, {"prompts": "p.jsonl", "out": "o", "seed": 3},
     "69fa1e929ce577d53456a3a68ae1468ea69c4847f2e8cdc63a48e83a4692e38e"),
    ({"engine": {"backend": "openai", "base_url": "http://127.0.0.1:1"}, "label": {"enabled": True, "tie_band": 0.1}},
     {"prompts": "p", "out": "o"}, "57b22dad898562cacea0d04025b22dfbf4aa6a419133eea43f45a300ac79a75f"),
    ({"engine": {"kv_cache_gib": 1, "dtype": "float32"}}, {"prompts": "p", "out": "o", "label.enabled": True, "label.length_control": True},
     "2dabd7deddc8b0fe866034306f9f55ed64b54e951136f962254ec3f8619713df"),
]


@pytest.mark.parametrize("file_values, flags, expected", OLD_FINGERPRINTS)
def test_older_run_folders_keep_their_fingerprint(file_values, flags, expected):
    from rlaif.pipeline.config import fingerprint, resolve

    assert fingerprint(resolve(file_values, flags, {}).to_dict()) == expected
    changed = resolve({**file_values, "engine": {**file_values.get("engine", {}), "block_size": 16}}, flags, {})
    assert fingerprint(changed.to_dict()) != expected  # a setting that shapes the rows still changes it


@pytest.mark.parametrize("kind", ["sft", "rm", "dpo", "ppo", "online-dpo", "grpo"])
def test_every_demo_config_loads(kind):
    """The configs `make demo-train` runs are valid settings of their trainers (a renamed key fails here)."""
    import importlib
    from pathlib import Path

    from rlaif.train.config import TrainConfig, load_config

    module = importlib.import_module(f"rlaif.train.{kind.replace('-', '_')}")
    cls = next(v for v in vars(module).values()
               if isinstance(v, type) and issubclass(v, TrainConfig) and v.__module__ == module.__name__)
    path = Path(__file__).resolve().parents[1] / "configs" / f"{kind}-demo.yaml"
    cfg = load_config(cls, path)
    assert type(cfg) is cls and cfg.name == f"{kind}-demo"
    assert kind in Path(__file__).resolve().parents[1].joinpath("Makefile").read_text()


def test_a_moved_run_folder_names_its_new_place(tmp_path, capsys, monkeypatch):
    """A finished run folder copied elsewhere and run again is complete, and what it prints (run folder,
    datasets, the refreshed report) is the new place, not where it was first written."""
    import shutil

    monkeypatch.setenv("RLAIF_REPORT", "1")
    prompts = write_prompts(tmp_path, 2)
    assert cli(*generate_args(prompts, tmp_path / "first", "--backend", "fake", "--label", "--ensemble", 1)) == 0
    shutil.copytree(tmp_path / "first", tmp_path / "moved")
    shutil.rmtree(tmp_path / "first")
    capsys.readouterr()
    assert cli(*generate_args(prompts, tmp_path / "moved", "--backend", "fake", "--label", "--ensemble", 1)) == 0
    out = capsys.readouterr().out
    assert "already complete" in out and str(tmp_path / "first") not in out
    assert f"datasets: {tmp_path / 'moved' / 'sft'}" in out
    assert not (tmp_path / "first").exists()  # nothing written where the folder used to be
