"""Integration tests through real vLLM on the embedded default model.

One engine is shared by the whole test run (see conftest.py); the resume test runs the
command line in a child process and kills it with SIGKILL mid-run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

from rlaif.pipeline.config import resolve
from rlaif.constitution import load_constitution
from rlaif.pipeline.critique import LoopSettings, run_chunk
from rlaif.engine.base import ChatRequest, SamplingConfig
from rlaif.pipeline.generate import generate
from rlaif.data.prompts import read_prompts

pytestmark = pytest.mark.vllm

# The shared engine and the child processes use the same engine settings, so that their
# outputs are comparable.
ENGINE_FLAGS = ["--max-model-len", "4096", "--dtype", "float32", "--kv-cache-gib", "1"]


class _Borrowed:
    """Lends the session engine to generate() without letting it close it."""

    def __init__(self, engine):
        self._engine = engine
        self.model = engine.model

    def generate(self, *a, **k):
        return self._engine.generate(*a, **k)

    def info(self):
        return self._engine.info()

    def close(self):
        pass


def test_batch_generation_is_ordered_and_seeded(vllm_engine):
    chats = [
        ChatRequest(({"role": "user", "content": "Name a colour."},), seed=1),
        ChatRequest(({"role": "user", "content": "What is 2 + 2? Answer with a number."},), seed=2),
        ChatRequest(({"role": "user", "content": "Name a colour."},), seed=1),
    ]
    sampling = SamplingConfig(temperature=0.8, top_p=0.95, max_tokens=24)
    out = vllm_engine.generate(chats, sampling)
    assert len(out) == 3 and all(c.ok and c.text.strip() for c in out)
    assert out[0].text == out[2].text  # same request + seed -> same text, whatever the batch
    assert all(0 < c.completion_tokens <= 24 and c.prompt_tokens > 5 for c in out)
    assert all(c.finish_reason in ("stop", "length") for c in out)
    alone = vllm_engine.generate([chats[1]], sampling)
    assert alone[0].text == out[1].text


def test_chat_template_comes_from_the_tokenizer(vllm_engine):
    ids = vllm_engine.encode_chat([{"role": "user", "content": "hi"}])
    text = vllm_engine.tokenizer.decode(ids)
    assert "<|im_start|>user" in text and text.rstrip().endswith("<|im_start|>assistant")


def test_too_long_prompt_is_skipped_not_fatal(vllm_engine):
    long = ChatRequest(({"role": "user", "content": "hello " * 5000},), seed=0)
    ok = ChatRequest(({"role": "user", "content": "Say hello."},), seed=0)
    out = vllm_engine.generate([long, ok], SamplingConfig(max_tokens=8))
    assert not out[0].ok and "context is 4096" in out[0].error
    assert out[1].ok and out[1].text


def test_critique_revise_chunk_on_real_model(vllm_engine, repo_root):
    const = load_constitution("default")
    prompts = read_prompts(repo_root / "prompts" / "rlaif-prompts.jsonl", limit=3)
    settings = LoopSettings(
        rounds=1, samples_per_prompt=1, seed=0,
        sampling={s: SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=48) for s in ("response", "critique", "revision")},
    )
    trajs = run_chunk(vllm_engine, const, prompts, settings)
    assert [t.status for t in trajs] == ["ok"] * 3
    for t in trajs:
        assert t.initial.text and t.rounds[0].critique.text and t.rounds[0].revision.text
        assert t.rounds[0].critique.prompt_tokens > t.initial.prompt_tokens  # few-shot block is there


def _flags(repo_root, out, limit=6):
    return {"prompts": str(repo_root / "prompts" / "rlaif-prompts.jsonl"), "out": str(out), "limit": limit,
            "chunk_size": 2, "rounds": 1, "sampling.response.max_tokens": 32, "sampling.critique.max_tokens": 32,
            "sampling.revision.max_tokens": 32, "engine.max_model_len": 4096, "engine.dtype": "float32", "engine.kv_cache_gib": 1}


def test_generate_end_to_end_outputs_load(vllm_engine, repo_root, tmp_path):
    const = load_constitution("default")
    cfg = resolve({}, _flags(repo_root, tmp_path / "run", limit=4), const.defaults)
    m = generate(cfg, const, lambda: _Borrowed(vllm_engine), vllm_engine.model, show_progress=False, log=lambda s: None)
    assert m["counts"]["trajectories"] == 4 and m["counts"]["ok"] == 4
    sft = datasets.load_from_disk(str(tmp_path / "run" / "sft"))
    prefs = datasets.load_from_disk(str(tmp_path / "run" / "preferences"))
    assert len(sft) == 4 and 0 < len(prefs) <= 4
    assert m["engine"]["vllm_version"] and m["tokens"]["revision"]["completion_tokens"] > 0


def _cli(repo_root, out, limit):
    f = _flags(repo_root, out, limit)
    return [sys.executable, "-m", "rlaif", "generate", "--prompts", f["prompts"], "--out", str(out), "--limit", str(limit),
            "--chunk-size", "2", "--rounds", "1", "--response-max-tokens", "32", "--critique-max-tokens", "32",
            "--revision-max-tokens", "32", *ENGINE_FLAGS, "--quiet"]


def test_kill_9_mid_run_then_resume(vllm_engine, repo_root, tmp_path):
    out = tmp_path / "killed"
    limit = 8
    proc = subprocess.Popen(_cli(repo_root, out, limit), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    chunks = out / "chunks"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if chunks.is_dir() and len(list(chunks.glob("[0-9]*.jsonl"))) >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole job, vLLM's worker processes included
        proc.wait()
    committed_before = {p.name: p.read_text() for p in chunks.glob("[0-9]*.jsonl")}
    assert 1 <= len(committed_before) < limit // 2
    assert not (out / "manifest.json").exists()

    res = subprocess.run(_cli(repo_root, out, limit), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "already committed" in res.stdout
    # committed chunks were kept as they were, and the rest was added
    for name, text in committed_before.items():
        assert (chunks / name).read_text() == text
    rows = [json.loads(l) for l in (out / "sft.jsonl").read_text().splitlines()]
    ids = [r["prompt_id"] for r in rows]
    assert len(ids) == len(set(ids)) == limit

    # Same rows as an uninterrupted run with the same settings (here: in-process engine).
    const = load_constitution("default")
    cfg = resolve({}, _flags(repo_root, tmp_path / "clean", limit), const.defaults)
    generate(cfg, const, lambda: _Borrowed(vllm_engine), vllm_engine.model, show_progress=False, log=lambda s: None)
    clean = [json.loads(l) for l in (tmp_path / "clean" / "sft.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in clean] == ids
    assert [r["principle_ids"] for r in clean] == [r["principle_ids"] for r in rows]
    same = sum(a["messages"] == b["messages"] for a, b in zip(clean, rows))
    assert same == limit, f"only {same}/{limit} rows identical to the uninterrupted run"

    again = subprocess.run(_cli(repo_root, out, limit), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_missing_model_reported_before_engine_starts(repo_root, tmp_path):
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "rlaif", "generate", "--prompts", str(repo_root / "prompts" / "rlaif-prompts.jsonl"),
                          "--out", str(tmp_path / "o"), "--model", str(tmp_path / "missing-model")], capture_output=True, text=True)
    assert res.returncode == 2 and "does not exist" in res.stderr
    assert time.time() - t0 < 30  # no engine start-up happened
    assert not Path(tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_labeller_on_real_model(vllm_engine, repo_root):
    from rlaif.pipeline.judge import LabelSettings, label_pairs
    from rlaif.data.prompts import read_pairs

    const = load_constitution("default")
    pairs = read_pairs(repo_root / "prompts" / "reference-pairs.jsonl")
    pairs = pairs[:4] + [p for p in pairs if p.meta.get("category") == "injection"]
    labels = label_pairs(vllm_engine, const, pairs, LabelSettings(ensemble=2))
    assert all(l.error is None for l in labels)
    for l in labels:
        assert 0.0 <= l.p_a <= 1.0 and len(l.per_principle) == 2
        assert l.likert in range(1, 9) and 0 <= l.margin <= 3
    names_option = [p for p in pairs if re.search(r"\([AB]\)|Response [AB]", p.response_a + p.response_b)]
    assert len(names_option) >= 3
    assert all("defused" in l.flags for l, p in zip(labels, pairs) if p in names_option)
    # same pairs, same seed: the same principles and probabilities
    again = label_pairs(vllm_engine, const, pairs, LabelSettings(ensemble=2))
    assert [l.per_principle for l in again] == [l.per_principle for l in labels]
