"""Shared fixtures. The real-vLLM engine is started once per test session (tens of seconds)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Commands write RUN/report.html when they finish (seconds of matplotlib each); tests that
# check it turn it back on with monkeypatch.
os.environ.setdefault("RLAIF_REPORT", "0")


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def const_dir(tmp_path: Path) -> Path:
    """A writable copy of rlaif's principles/ and constitution/ folders."""
    shutil.copytree(ROOT / "principles", tmp_path / "principles")
    shutil.copytree(ROOT / "constitution", tmp_path / "constitution")
    return tmp_path


@pytest.fixture(scope="session")
def default_model() -> str:
    from rlaif.models.model_zoo import prepare_default_model

    return str(prepare_default_model())


@pytest.fixture(scope="session")
def vllm_engine(default_model):
    """One real in-process vLLM engine on the default model, shared by the whole run."""
    from rlaif.engine.config import EngineConfig
    from rlaif.engine.vllm_local import VLLMEngine

    # float32: vLLM's CPU kernels are then batch-invariant, so runs can be compared row by row
    # (in bfloat16 a different batch composition can flip a sampled token).
    engine = VLLMEngine(default_model, EngineConfig(max_model_len=4096, kv_cache_gib=1, dtype="float32"), show_progress=False)
    yield engine
    engine.close()
