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
