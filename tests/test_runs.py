"""Run folders: atomic chunks, resume after a crash, settings fingerprint, outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import datasets
import pytest

from rlaif.pipeline.config import resolve
from rlaif.constitution import load_constitution
from rlaif.engine.fake import FakeEngine
from rlaif.pipeline.generate import generate
from rlaif.data.runs import RunDir, RunFolderError


class Crash(Exception):
    pass


class CrashingEngine(FakeEngine):
    """Dies on its n-th call, like a process killed mid-chunk."""

    def __init__(self, crash_on: int):
        super().__init__()
        self.crash_on = crash_on

    def generate(self, requests, sampling, desc=""):
        if len(self.calls) + 1 == self.crash_on:
            raise Crash(desc)
        return super().generate(requests, sampling, desc)


def _cfg(repo_root, out, **flags):
    const = load_constitution("default")
    base = {"prompts": str(repo_root / "prompts" / "rlaif-prompts.jsonl"), "out": str(out), "limit": 10, "chunk_size": 3, "rounds": 2}
    base.update(flags)
    return resolve({}, base, const.defaults), const


def _rows(path):
    return [json.loads(l) for l in (path / "preferences.jsonl").read_text().splitlines()]


def test_crash_and_resume_gives_the_same_rows(repo_root, tmp_path):
    cfg, const = _cfg(repo_root, tmp_path / "clean")
    generate(cfg, const, FakeEngine, "m", show_progress=False, log=lambda m: None)

    cfg2, _ = _cfg(repo_root, tmp_path / "crashy")
    # 5 calls per chunk (response + 2 x (critique, revision)): die inside the third chunk
    with pytest.raises(Crash):
        generate(cfg2, const, lambda: CrashingEngine(crash_on=13), "m", show_progress=False, log=lambda m: None)
    run = RunDir(tmp_path / "crashy")
    assert run.committed() == {0, 1}
    assert not (tmp_path / "crashy" / "manifest.json").exists()
    logs = []
    engine = FakeEngine()
    generate(cfg2, const, lambda: engine, "m", show_progress=False, log=logs.append)
    assert "2 of 4 chunks already committed" in logs[0]
    assert len(engine.calls) == 2 * 5  # only the two missing chunks ran
    a, b = _rows(tmp_path / "clean"), _rows(tmp_path / "crashy")
    assert a == b and len({r["id"] for r in a}) == len(a) == 10


def test_rerun_of_finished_run_does_nothing(repo_root, tmp_path):
    cfg, const = _cfg(repo_root, tmp_path / "r")
    generate(cfg, const, FakeEngine, "m", show_progress=False, log=lambda m: None)
    logs = []

    def no_engine():
        raise AssertionError("a finished run must not start an engine")

    generate(cfg, const, no_engine, "m", show_progress=False, log=logs.append)
    assert "nothing to do" in logs[0]


def test_other_settings_are_refused_unless_overwrite(repo_root, tmp_path):
    cfg, const = _cfg(repo_root, tmp_path / "r")
    generate(cfg, const, FakeEngine, "m", show_progress=False, log=lambda m: None)
    other, _ = _cfg(repo_root, tmp_path / "r", rounds=1)
    with pytest.raises(RunFolderError, match=r"other settings \(rounds: 2 -> 1\).*--overwrite"):
        generate(other, const, FakeEngine, "m", show_progress=False, log=lambda m: None)
    m = generate(other, const, FakeEngine, "m", overwrite=True, show_progress=False, log=lambda m: None)
    assert m["settings"]["rounds"] == 1
    assert all(r["rounds"] == 1 for r in _rows(tmp_path / "r"))


def test_outputs_load_with_datasets_and_carry_provenance(repo_root, tmp_path):
    cfg, const = _cfg(repo_root, tmp_path / "r")
    m = generate(cfg, const, FakeEngine, "fake-model", show_progress=False, log=lambda m: None)
    prefs = datasets.load_from_disk(str(tmp_path / "r" / "preferences"))
    sft = datasets.load_from_disk(str(tmp_path / "r" / "sft"))
    assert len(prefs) == len(sft) == 10
    row = prefs[0]
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["constitution_sha256"] == const.sha256 and len(row["principle_ids"]) == 2
    assert sft[0]["messages"][-1]["role"] == "assistant"
    # the JSONL exports hold the same rows
    assert [r["id"] for r in _rows(tmp_path / "r")] == prefs["id"]
    # manifest: provenance, counts, tokens
    assert m["constitution"]["sha256"] == const.sha256
    assert set(m["constitution"]["files"]) >= {"constitution/default.yaml"}
    assert (tmp_path / "r" / "constitution" / "default.yaml").exists()
    assert m["counts"]["trajectories"] == 10 and m["tokens"]["critique"]["requests"] == 20
    assert m["settings"]["sampling"]["response"]["max_tokens"] > 0
    assert m["rlaif_version"] and "commit" in m["git"]


def test_chunk_commit_is_atomic(tmp_path):
    run = RunDir(tmp_path)
    run.chunks.mkdir()
    (run.chunks / "00003.jsonl.tmp").write_text("half a ro")
    (run.chunks / ".00004.jsonl.abc.tmp").write_text("half")
    assert run.committed() == set()
    run._sweep_temp()
    assert list(run.chunks.iterdir()) == []


def test_cli_generate_with_fake_backend(repo_root, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "rlaif", "generate", "--prompts", str(repo_root / "prompts" / "rlaif-prompts.jsonl"),
           "--out", str(out), "--backend", "fake", "--limit", "5", "--rounds", "1", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "preference rows 5" in res.stdout and "critique" in res.stdout
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert "nothing to do" in again.stdout
    changed = subprocess.run(cmd[:-3] + ["--rounds", "2", "--quiet"], capture_output=True, text=True)
    assert changed.returncode == 2 and "--overwrite" in changed.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompts", "nope.jsonl"], "does not exist"),
        (["--model", "/no/such/model"], "does not exist"),
        (["--constitution", "nosuch"], "no constitution named"),
        (["--rounds", "-1"], "rounds must be >= 0"),
    ],
)
def test_cli_errors_are_clear(repo_root, tmp_path, args, message):
    base = ["--prompts", str(repo_root / "prompts" / "rlaif-prompts.jsonl"), "--out", str(tmp_path / "o"), "--limit", "2"]
    backend = [] if "--model" in args else ["--backend", "fake"]
    res = subprocess.run([sys.executable, "-m", "rlaif", "generate", *base, *args, *backend, "--quiet"], capture_output=True, text=True)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr


def test_config_file_and_unknown_keys(repo_root, tmp_path):
    cfgfile = tmp_path / "gen.yaml"
    cfgfile.write_text(f"prompts: {repo_root / 'prompts' / 'rlaif-prompts.jsonl'}\nout: {tmp_path / 'o'}\nlimit: 2\nsampling:\n  critique:\n    max_tokens: 7\nengine:\n  backend: fake\n")
    res = subprocess.run([sys.executable, "-m", "rlaif", "generate", "--config", str(cfgfile), "--quiet"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    settings = json.loads((tmp_path / "o" / "settings.json").read_text())["settings"]
    assert settings["sampling"]["critique"]["max_tokens"] == 7 and settings["limit"] == 2
    cfgfile.write_text(cfgfile.read_text() + "roundz: 3\n")
    res = subprocess.run([sys.executable, "-m", "rlaif", "generate", "--config", str(cfgfile), "--quiet"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown key(s) ['roundz']" in res.stderr


class FlakyEngine(FakeEngine):
    """Fails every request whose prompt mentions `word`, as a server that gave up would."""

    def __init__(self, word: str, retryable: bool = True):
        super().__init__()
        self.word, self.retryable = word, retryable

    def generate(self, requests, sampling, desc=""):
        from rlaif.data.records import Completion

        out = super().generate(requests, sampling, desc)
        return [Completion("", "error", 0, 0, error="server gave up after 7 attempts", retryable=self.retryable)
                if any(self.word in m["content"] for m in r.messages) else c for r, c in zip(requests, out)]


def test_transient_failures_are_retried_on_resume(repo_root, tmp_path):
    cfg, const = _cfg(repo_root, tmp_path / "flaky")
    prompts = [json.loads(l) for l in (repo_root / "prompts" / "rlaif-prompts.jsonl").read_text().splitlines()[:10]]
    word = prompts[4]["prompt"].split()[2]
    victims = {p["id"] for p in prompts if word in p["prompt"]}
    m = generate(cfg, const, lambda: FlakyEngine(word), "m", show_progress=False, log=lambda s: None)
    assert m["counts"]["failed"] == len(victims) >= 1
    before = {r["id"]: r for r in (json.loads(l) for c in sorted((tmp_path / "flaky" / "chunks").glob("[0-9]*[0-9].jsonl")) for l in c.read_text().splitlines())}

    # the run is finished but holds transient failures: a plain re-run retries exactly those
    engine = FakeEngine()
    logs = []
    m = generate(cfg, const, lambda: engine, "m", show_progress=False, log=logs.append)
    assert "retrying transient failures" in logs[0]
    assert m["counts"]["failed"] == 0 and m["counts"]["trajectories"] == 10
    assert sum(n for _, n in engine.calls if "response" in _) == len(victims)  # only the failed prompts ran again
    after = {r["id"]: r for r in (json.loads(l) for c in sorted((tmp_path / "flaky" / "chunks").glob("[0-9]*[0-9].jsonl")) for l in c.read_text().splitlines())}
    assert set(after) == set(before)
    for tid, row in before.items():
        if row["prompt_id"] not in victims:
            assert after[tid] == row  # untouched
    clean, _ = _cfg(repo_root, tmp_path / "clean")
    generate(clean, const, FakeEngine, "m", show_progress=False, log=lambda s: None)
    assert _rows(tmp_path / "flaky") == _rows(tmp_path / "clean")


def test_permanent_failures_are_not_retried(repo_root, tmp_path):
    cfg, const = _cfg(repo_root, tmp_path / "perm")
    word = "the"
    generate(cfg, const, lambda: FlakyEngine(word, retryable=False), "m", show_progress=False, log=lambda s: None)
    (tmp_path / "perm" / "manifest.json").unlink()

    def no_engine():
        raise AssertionError("nothing to retry")

    m = generate(cfg, const, no_engine, "m", show_progress=False, log=lambda s: None)
    assert m["counts"]["failed"] >= 1
    failed = [json.loads(l) for l in (tmp_path / "perm" / "failed.jsonl").read_text().splitlines()]
    assert failed and all("gave up" in f["reason"] for f in failed)


def test_train_cli_takes_overrides_after_config(monkeypatch):
    import rlaif.train
    from rlaif.cli import main

    seen = {}
    monkeypatch.setattr(rlaif.train, "main", lambda kind, cfg, ov: seen.update(kind=kind, cfg=cfg, ov=ov) or 0)
    assert main(["train", "rm", "--config", "c.yaml", "max_steps=2", "lora.enabled=true"]) == 0
    assert seen == {"kind": "rm", "cfg": "c.yaml", "ov": ["max_steps=2", "lora.enabled=true"]}
    with pytest.raises(SystemExit):
        main(["train", "rm", "--config", "c.yaml", "--bogus"])


def _files(run: RunDir) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in sorted(run.chunks.glob("[0-9]*.jsonl"))}


def test_only_chunks_with_transient_failures_are_committed_again(repo_root, tmp_path):
    """What docs/generate.md says: a committed chunk file is written again only to redo rows that failed
    for a transient reason; its other rows (and labels) go back unchanged; other chunk files are
    never touched."""
    cfg, const = _cfg(repo_root, tmp_path / "r", **{"label.enabled": True, "label.ensemble": 2})
    prompts = [json.loads(l) for l in (repo_root / "prompts" / "rlaif-prompts.jsonl").read_text().splitlines()[:10]]
    word = prompts[4]["prompt"].split()[2]
    hit = {i // 3 for i, p in enumerate(prompts) if word in p["prompt"]}  # chunk_size 3
    assert hit and hit != {0, 1, 2, 3}
    generate(cfg, const, lambda: FlakyEngine(word), "m", show_progress=False, log=lambda s: None)
    run = RunDir(tmp_path / "r")
    before = _files(run)
    rows = {i: run.read_chunk(i) for i in run.committed()}
    labels = {i: run.read_chunk(i, "labels") for i in run.committed()}

    generate(cfg, const, FakeEngine, "m", show_progress=False, log=lambda s: None)
    after = _files(run)
    assert set(after) == set(before)
    for i in sorted(run.committed()):
        for name in (f"{i:05d}.jsonl", f"{i:05d}.labels.jsonl"):
            if i in hit:
                assert after[name][0] != before[name][0]  # committed again (a new file renamed into place)
            else:
                assert after[name] == before[name]  # the same file, byte for byte
        if i in hit:
            redone = {r["id"] for r in rows[i] if r["status"] == "failed"}
            assert redone and all(r["retryable"] for r in rows[i] if r["status"] == "failed")
            new = {r["id"]: r for r in run.read_chunk(i)}
            assert all(new[r["id"]] == r for r in rows[i] if r["id"] not in redone)
            assert all(new[t]["status"] == "ok" for t in redone)
            new_labels = {r["pair"]["id"]: r for r in run.read_chunk(i, "labels")}
            assert all(new_labels[r["pair"]["id"]] == r for r in labels[i])  # every committed label kept
            assert len(new_labels) == len(labels[i]) + len(redone)  # and the redone rows labelled
