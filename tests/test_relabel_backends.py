"""``rlaif relabel`` and ``rlaif diff`` on every backend the README lists, through the command line:
openai (a loopback server judging by content, whose verdict turns when the principle's question
holds INVERTED), transformers and vLLM (the default model), and a run of ``rlaif generate --label``
as the run relabelled. Each edits a principle the original run drew, then checks that exactly its
comparisons reach the judge, that every other stored line comes back byte for byte, and (with
the oracle) which labels flipped. The fake backend is covered in tests/test_relabel.py.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from fixtures_server import ORACLE_MARKER, OracleServer, chat_completion
from fixtures_server import write_pairs as marker_pairs

from rlaif.cli import main

ROOT = Path(__file__).resolve().parent.parent
INVERT = "INVERTED"


def cli(*argv) -> int:
    return main([str(a) for a in argv])


class PrincipleServer(OracleServer):
    """The oracle server, except that a question holding INVERTED prefers the response without the marker."""

    def _score(self, body):
        user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        first, rest = user.split("Response A:", 1)[1].split("\n\nResponse B:", 1)
        second, q = rest.rsplit("\n\n", 1)
        a, b = ORACLE_MARKER in first, ORACLE_MARKER in second
        p_a = 0.5 if a == b else (0.9 if a else 0.1)
        if INVERT in q:
            p_a = 1 - p_a
        ids = body["allowed_token_ids"]
        top = [{"token": f"token_id:{ids[0]}", "logprob": math.log(p_a), "bytes": []},
               {"token": f"token_id:{ids[1]}", "logprob": math.log(1 - p_a), "bytes": []}]
        return chat_completion("A", "length", 50, 1, logprobs={"content": [dict(top[0], top_logprobs=top)]})


def write_pairs(folder: Path, n: int = 12) -> Path:
    return marker_pairs(folder, n)


def set_comparison(const_dir: Path, pid: str, new: str) -> None:
    path = const_dir / "principles" / f"{pid}.yaml"
    head, rest = path.read_text().split("comparison: >-\n", 1)
    lines = rest.split("\n")
    end = next(i for i, line in enumerate(lines) if not line.startswith("  "))
    path.write_text(f"{head}comparison: >-\n  {new}\n" + "\n".join(lines[end:]))


def judgement_lines(run: Path) -> list[bytes]:
    return [line for f in sorted((run / "chunks").glob("*.judgements.jsonl")) for line in f.read_bytes().splitlines()]


def draws(run: Path) -> dict[str, list[str]]:
    """Each pair's principles, from the run's stored comparisons."""
    out: dict[str, list[str]] = {}
    for line in judgement_lines(run):
        r = json.loads(line)
        if r["principle"] not in out.setdefault(r["pair"], []):
            out[r["pair"]].append(r["principle"])
    return out


def check_reuse(old: Path, new: Path, edited: str, out: str) -> int:
    """Every stored line not of ``edited`` is in NEW byte for byte; returns the comparisons re-sent."""
    old_lines, new_lines = judgement_lines(old), judgement_lines(new)
    mark = f'"principle": "{edited}"'.encode()
    assert [x for x in new_lines if mark not in x] == [x for x in old_lines if mark not in x]
    resent = sum(mark in x for x in old_lines)
    assert re.search(rf"judgements: {resent} re-sent, {len(old_lines) - resent} reused", out), out
    return resent


def test_relabel_openai_backend(tmp_path, const_dir, capsys):
    const = const_dir / "constitution" / "default.yaml"
    with PrincipleServer(("judge-y",)) as srv:
        assert cli("label", "--pairs", write_pairs(tmp_path), "--out", tmp_path / "old", "--backend", "openai", "--base-url", srv.url,
                   "--ensemble", 1, "--constitution", const, "--quiet") == 0
        drawn = draws(tmp_path / "old")
        edited = drawn["x0"][0]
        flips = sorted(p for p, d in drawn.items() if edited in d)
        set_comparison(const_dir, edited, f"{INVERT}: which response is worse?")
        n_before = len(srv.requests("score"))
        capsys.readouterr()
        # backend and server come from the run
        assert cli("relabel", tmp_path / "old", "--constitution", const, "--out", tmp_path / "new", "--quiet") == 0
        sent = srv.requests("score")[n_before:]
    out = capsys.readouterr().out
    assert len(sent) == 2 * len(flips) == check_reuse(tmp_path / "old", tmp_path / "new", edited, out)
    assert {b["model"] for b in sent} == {"judge-y"}
    assert f"labels: {len(flips)} of 12 pairs flipped" in out
    new = {r["id"]: r for r in map(json.loads, (tmp_path / "new" / "labels.jsonl").read_text().splitlines())}
    assert sorted(p for p, r in new.items() if (r["p_a"] > 0.5) != (int(p[1:]) % 2 == 0)) == flips
    assert cli("diff", tmp_path / "old", tmp_path / "new", "--max-flip-rate", 0) == (6 if flips else 0)


def test_relabel_a_generate_label_run(tmp_path, const_dir, capsys):
    """A run of rlaif generate --label is relabelled into a label run of its pairs, which rlaif diff compares."""
    const = const_dir / "constitution" / "default.yaml"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question {i}: tell me something {'odd' if i % 2 else 'even'}."}) + "\n"
                               for i in range(6)))
    with PrincipleServer(("policy-x",)) as srv:
        assert cli("generate", "--prompts", prompts, "--out", tmp_path / "g", "--rounds", 1, "--chunk-size", 3, "--backend", "openai",
                   "--base-url", srv.url, "--label", "--ensemble", 2, "--constitution", const, "--quiet") == 0
        drawn = draws(tmp_path / "g")
        assert len(drawn) == 6
        edited = drawn["p0#0:initial~final"][0]
        set_comparison(const_dir, edited, f"{INVERT}: which response is worse?")
        n_before = len(srv.requests("score"))
        capsys.readouterr()
        assert cli("relabel", tmp_path / "g", "--constitution", const, "--out", tmp_path / "new", "--backend", "openai",
                   "--base-url", srv.url, "--quiet") == 0
        sent = len(srv.requests("score")) - n_before
    out = capsys.readouterr().out
    assert sent == check_reuse(tmp_path / "g", tmp_path / "new", edited, out) == 2 * sum(edited in d for d in drawn.values())
    manifest = json.loads((tmp_path / "new" / "manifest.json").read_text())
    assert manifest["settings"]["kind"] == "label" and manifest["counts"]["pairs"] == 6
    assert cli("diff", tmp_path / "g", tmp_path / "new") == 0
    assert f"judgements: {sent} re-sent" in capsys.readouterr().out  # B relabels A: said so


def _edit_drawn_and_relabel(tmp_path, const_dir, capsys, backend_args) -> None:
    const = const_dir / "constitution" / "default.yaml"
    src = ROOT / "prompts" / "reference-pairs.jsonl"
    assert cli("label", "--pairs", src, "--limit", 2, "--out", tmp_path / "old", "--ensemble", 2, "--constitution", const,
               *backend_args, "--quiet") == 0, capsys.readouterr().err
    drawn = draws(tmp_path / "old")
    edited = drawn["r001"][0]
    set_comparison(const_dir, edited, "Which response would a careful expert prefer?")
    capsys.readouterr()
    assert cli("relabel", tmp_path / "old", "--constitution", const, "--out", tmp_path / "new", "--quiet") == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert check_reuse(tmp_path / "old", tmp_path / "new", edited, out) == 2 * sum(edited in d for d in drawn.values())


def test_relabel_transformers_backend(default_model, tmp_path, const_dir, capsys):
    _edit_drawn_and_relabel(tmp_path, const_dir, capsys, ("--backend", "transformers", "--dtype", "float32"))


@pytest.mark.vllm
def test_relabel_vllm_backend(vllm_engine, tmp_path, const_dir, capsys, monkeypatch):
    """--backend vllm through the command line; the engine it starts is the session's shared one
    (same model, float32), so that this test adds no engine start-up."""
    import rlaif.engine

    class Shared:
        def __init__(self, engine):
            self.engine = engine

        def __getattr__(self, name):
            return getattr(self.engine, name)

        def close(self):  # the session's engine stays up
            pass

    def create(model, engine, **kw):
        assert engine.backend == "vllm" and model == vllm_engine.model
        return Shared(vllm_engine)

    monkeypatch.setattr(rlaif.engine, "create_engine", create)
    _edit_drawn_and_relabel(tmp_path, const_dir, capsys, ("--dtype", "float32"))
