"""Arbitrary Unicode text through every file rlaif writes and reads back.

The defect this guards against: run folders were written with ``json.dumps(...,
ensure_ascii=False)`` and read with ``str.splitlines()``, which also breaks lines at U+2028,
U+2029 and U+0085 (left raw inside JSON strings), so one sample holding such a character
stopped a run for good. The properties below push text drawn from all of Unicode, weighted
towards those characters, through run chunks and their side files, the datasets
(``save_to_disk`` and JSONL), manifests, ``failed.jsonl``, labels files and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import datasets
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rlaif.data import textio
from rlaif.pipeline.config import resolve
from rlaif.constitution import load_constitution
from rlaif.engine.fake import FakeEngine
from rlaif.pipeline.generate import generate
from rlaif.data.records import Completion
from rlaif.data.runs import RunDir

# Characters some readers take as line ends (str.splitlines, universal newlines, JavaScript),
# plus a byte-order mark, NUL and a few from other planes.
BREAKERS = ["\u2028", "\u2029", "\x85", "\x1c", "\x1d", "\x1e", "\x0b", "\x0c", "\r", "\n", "\ufeff", "\x00", "\t", "é", "😀"]
CHAR = st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(BREAKERS))
TEXT = st.text(CHAR, max_size=30)
# Stored texts are stripped by the pipeline; a wrapped text keeps every character it holds.
WORD = TEXT.map(lambda t: f"<{t}>")
NONBLANK = TEXT.filter(lambda t: t.strip())
# Subnormal floats are left out: something run earlier in the same test process (in the full
# suite; not at import time) turns on flush-to-zero, and Hypothesis then refuses to draw them.
# They are not what these properties are about (text); normal floats still go through.
FLOAT = st.floats(allow_nan=False, allow_subnormal=False)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | FLOAT | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
ROWS = st.lists(st.dictionaries(TEXT, JSON, max_size=5), max_size=6)
SETTINGS = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _quiet(_msg: str) -> None:
    pass


# ----------------------------------------------------------------- the shared reader/writer


@SETTINGS
@given(ROWS)
def test_jsonl_round_trip_and_one_line_per_row(rows):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.jsonl"
        text = textio.dumps_jsonl(rows)
        path.write_text(text, encoding="utf-8")
        assert textio.read_jsonl(path) == rows
    # what rlaif writes is safe for readers that split on every Unicode line break too
    assert len(text.splitlines()) == len(rows)
    assert all(json.loads(line) == row for line, row in zip(text.splitlines(), rows))


@SETTINGS
@given(JSON)
def test_json_document_round_trip(value):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.json"
        path.write_text(textio.dumps(value, indent=2), encoding="utf-8")
        assert textio.read_json(path) == value


def test_writer_keeps_text_readable_and_escapes_line_breaks():
    text = textio.dumps({"t": "naïve 😀 a\u2028b\u2029c\x85d"})
    assert "naïve 😀" in text
    assert "\u2028" not in text and "\\u2028" in text and "\\u2029" in text and "\\u0085" in text
    # lone surrogates (which UTF-8 cannot hold) are escaped too, so any string can be written
    assert json.loads(textio.dumps("x\ud800y")) == "x\ud800y"
    textio.dumps("x\ud800y").encode("utf-8")


# ----------------------------------------------------------------- run folders


@SETTINGS
@given(rows=ROWS, labels=ROWS, manifest=st.dictionaries(TEXT, JSON, max_size=6), failed=ROWS)
def test_run_folder_files_round_trip(rows, labels, manifest, failed):
    with tempfile.TemporaryDirectory() as d:
        run = RunDir(d)
        run.chunks.mkdir(parents=True)
        run.commit_chunk(0, rows, {"chunk": 0, "note": "é\u2028"}, {"labels": labels})
        run.commit_chunk(1, labels, {"chunk": 1})
        assert run.read_chunk(0) == rows and run.read_chunk(0, "labels") == labels
        assert run.read_chunks() == rows + labels
        assert run.chunk_stats() == [{"chunk": 0, "note": "é\u2028"}, {"chunk": 1}]
        run.write_manifest(manifest)
        assert run.read_manifest() == manifest
        run.write_jsonl("failed.jsonl", failed)
        assert textio.read_jsonl(run.path / "failed.jsonl") == failed


def _old_style(rows) -> str:
    """How chunks were written before: non-ASCII raw, U+2028/U+2029/U+0085 included."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def test_chunks_written_the_old_way_read_back(tmp_path):
    rows = [{"id": "p#0", "text": "a\u2028b"}, {"id": "q#0", "text": "c\u2029d\x85e"}, {"id": "r#0", "text": "plain"}]
    run = RunDir(tmp_path)
    run.chunks.mkdir()
    run.chunk_file(0).write_text(_old_style(rows), encoding="utf-8")
    (run.chunks / "00000.labels.jsonl").write_text(_old_style(rows[::-1]), encoding="utf-8")
    assert run.read_chunk(0) == rows
    assert run.read_chunk(0, "labels") == rows[::-1]


@SETTINGS
@given(texts=st.lists(TEXT, min_size=1, max_size=4), probs=st.lists(st.floats(0, 1, allow_subnormal=False), min_size=1, max_size=4))
def test_datasets_round_trip(texts, probs):
    rows = [{"id": f"{i}{t}", "prompt": [{"role": "user", "content": t}], "chosen": [{"role": "assistant", "content": t[::-1]}],
             "principle_ids": [t, "x"], "chosen_prob": probs[i % len(probs)]} for i, t in enumerate(texts)]
    with tempfile.TemporaryDirectory() as d:
        run = RunDir(d)
        run.save_dataset("preferences", rows)
        assert datasets.load_from_disk(str(run.path / "preferences")).to_list() == rows
        assert textio.read_jsonl(run.path / "preferences.jsonl") == rows


@SETTINGS
@given(keys=st.lists(TEXT.filter(lambda k: k != "step"), min_size=1, max_size=4, unique=True), resume=st.integers(0, 3))
def test_metrics_log_round_trip(keys, resume):
    from rlaif.train.checkpoint import MetricsLog

    with tempfile.TemporaryDirectory() as d:
        log = MetricsLog(Path(d), tensorboard=False)
        for step in range(1, 4):
            log.log(step, {k: step + i / 8 for i, k in enumerate(keys)})
        log.close()
        again = MetricsLog(Path(d), tensorboard=False, resume_step=resume)  # keeps the records up to `resume`
        again.close()
        records = textio.read_jsonl(Path(d) / "metrics.jsonl")
    assert records == [{"step": s, **{k: s + i / 8 for i, k in enumerate(keys)}} for s in range(1, resume + 1)]


# ----------------------------------------------------------------- the whole generate path


def _yaml(doc) -> str:
    # every string double-quoted with escapes: a writer that keeps any text exactly
    # (PyYAML's other styles write U+0085 raw, and it reads back as a space)
    return yaml.safe_dump(doc, default_style='"', allow_unicode=True)


def _write_constitution(root: Path, principles: list[dict[str, str]]) -> Path:
    (root / "principles").mkdir()
    (root / "constitution").mkdir()
    for i, p in enumerate(principles):
        doc = {"id": f"p-{i}", "title": p["title"], "tags": ["t"], "critique": p["critique"],
               "revision": p["revision"], "comparison": p["comparison"]}
        (root / "principles" / f"p-{i}.yaml").write_text(_yaml(doc), encoding="utf-8")
    const = {"name": "uni", "principles_dir": "../principles", "principles": [{"tag": "t"}], "system_prompt": "Be brief."}
    path = root / "constitution" / "uni.yaml"
    path.write_text(_yaml(const), encoding="utf-8")
    return path


class ScriptedEngine(FakeEngine):
    """Answers with texts drawn by Hypothesis; fails the response to one prompt with a drawn reason."""

    def __init__(self, texts, victim, reason):
        super().__init__()
        self.texts, self.victim, self.reason, self.produced = texts, victim, reason, []
        self.script = lambda req, s: self.texts[req.seed % len(self.texts)]

    def generate(self, requests, sampling, desc=""):
        out = super().generate(requests, sampling, desc)
        out = [Completion("", "error", 1, 0, error=self.reason) if desc.endswith("response") and r.messages[-1]["content"] == self.victim
               else c for r, c in zip(requests, out)]
        self.produced += [c.text for c in out if c.error is None]
        return out


PRINCIPLE = st.fixed_dictionaries({k: NONBLANK for k in ("title", "critique", "revision", "comparison")})


@settings(deadline=None, max_examples=12, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    prompts=st.lists(st.tuples(NONBLANK, NONBLANK), min_size=2, max_size=4, unique_by=(lambda p: p[0], lambda p: p[1])),
    principles=st.lists(PRINCIPLE, min_size=2, max_size=3),
    texts=st.lists(WORD, min_size=1, max_size=5),
    reason=NONBLANK,
)
@example(prompts=[("p\u2028", "Say a\u2028b"), ("q", "c\u2029d\x85e")], texts=["<x\u2028y>", "<z>"], reason="gave\u2028up",
         principles=[{"title": "T\x85", "critique": "Is it\x85kind?", "revision": "Rewrite\u2029it.", "comparison": "Which\u2028one?"}] * 2)
@example(prompts=[("a:b", "x"), ("c:d", "y"), ("e:f", "z"), ("g", "w")], texts=["<t>", "<u>", "<v>"], reason="r",  # a prompt id holding ":" (it once broke the label rows)
         principles=[{"title": "T", "critique": "C?", "revision": "R.", "comparison": "W?"}] * 2)
def test_generate_with_labels_keeps_every_text(prompts, principles, texts, reason):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        const = load_constitution(str(_write_constitution(root, principles)))
        pfile = root / "prompts.jsonl"
        pfile.write_text(_old_style({"id": pid, "prompt": text} for pid, text in prompts), encoding="utf-8")
        victim = prompts[-1][1]
        cfg = resolve({}, {"prompts": str(pfile), "out": str(root / "run"), "rounds": 1, "chunk_size": 2,
                           "label.enabled": True, "label.ensemble": 2}, const.defaults)
        engine = ScriptedEngine(texts, victim, reason)
        m = generate(cfg, const, lambda: engine, "m", show_progress=False, log=_quiet)
        assert m["counts"]["failed"] == 1
        run = RunDir(root / "run")

        # chunks: every text the engine produced, every prompt and principle text, as written
        trajs = [r for r in run.read_chunks() if r["status"] == "ok"]
        stored = [t for r in trajs for t in (r["initial"]["text"], r["rounds"][0]["critique"]["text"], r["rounds"][0]["revision"]["text"])]
        assert sorted(stored) == sorted(engine.produced)
        prompt_of = dict(prompts)
        assert sorted(r["prompt"][0]["content"] for r in trajs) == sorted(t for pid, t in prompts[:-1])
        assert all(r["prompt"][0]["content"] == prompt_of[r["prompt_id"]] for r in run.read_chunks())
        principle_text = {f"p-{i}": p for i, p in enumerate(principles)}
        for r in trajs:
            rnd = r["rounds"][0]
            assert rnd["critique"]["request"] == principle_text[rnd["principle_id"]]["critique"].strip()
            assert rnd["revision"]["request"] == principle_text[rnd["principle_id"]]["revision"].strip()
        failed = textio.read_jsonl(run.path / "failed.jsonl")
        assert len(failed) == 1 and reason in failed[0]["reason"]

        # labels side files: the pairs hold the texts of their trajectories
        by_traj = {r["id"]: r for r in trajs}
        labels = run.read_chunks("labels")
        assert len(labels) == len(trajs)
        for row in labels:
            t = by_traj[row["pair"]["meta"]["a"].rsplit(":", 1)[0]]
            assert (row["pair"]["response_a"], row["pair"]["response_b"]) == (t["initial"]["text"], t["final"])
            assert row["pair"]["prompt"] == t["prompt"]

        # datasets: save_to_disk and JSONL hold the same rows, texts unchanged
        outputs = {}
        for name in ("sft", "preferences"):
            disk = datasets.load_from_disk(str(run.path / name)).to_list()
            assert disk == textio.read_jsonl(run.path / f"{name}.jsonl")
            outputs[name] = disk
        finals = {(t["prompt"][0]["content"], t["final"]) for t in trajs}
        assert {(r["messages"][0]["content"], r["messages"][-1]["content"]) for r in outputs["sft"]} == finals
        pairs = {t["prompt"][0]["content"]: {t["initial"]["text"], t["final"]} for t in trajs}
        for r in outputs["preferences"]:
            assert {r["chosen"][0]["content"], r["rejected"][0]["content"]} <= pairs[r["prompt"][0]["content"]]

        # resume from the chunks alone: outputs rebuilt identically, no engine needed
        run.manifest_file.unlink()

        def no_engine():
            raise AssertionError("every chunk is committed")

        generate(cfg, const, no_engine, "m", show_progress=False, log=_quiet)
        for name in ("sft", "preferences"):
            assert datasets.load_from_disk(str(run.path / name)).to_list() == outputs[name]
        logs = []
        generate(cfg, const, no_engine, "m", show_progress=False, log=logs.append)
        assert "nothing to do" in logs[0]


@settings(deadline=None, max_examples=10, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pairs=st.lists(st.tuples(NONBLANK, NONBLANK, TEXT, TEXT), min_size=1, max_size=4, unique_by=lambda p: p[0]))
@example(pairs=[("id\u2028one", "Hi\u2029there", "A\x85a", "B"), ("two", "Q", "x", "y\u2028z")])
def test_label_run_keeps_every_text(pairs):
    from rlaif.pipeline.label import label_run
    from rlaif.pipeline.judge import LabelSettings
    from rlaif.data.prompts import read_pairs

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        pfile = root / "pairs.jsonl"
        pfile.write_text(_old_style({"id": i, "prompt": p, "response_a": a, "response_b": b} for i, p, a, b in pairs), encoding="utf-8")
        read = read_pairs(pfile)
        assert [(p.id, p.prompt[0]["content"], p.response_a, p.response_b) for p in read] == pairs
        const = load_constitution("default")
        label_run(read, str(root / "out"), const, LabelSettings(ensemble=2), FakeEngine, "judge", chunk_size=2,
                  show_progress=False, log=_quiet)
        run = RunDir(root / "out")
        assert [r["id"] for r in textio.read_jsonl(run.path / "labels.jsonl")] == [p[0] for p in pairs]
        assert [r["pair_id"] for r in run.read_chunks()] == [p[0] for p in pairs]
        disk = datasets.load_from_disk(str(run.path / "preferences")).to_list()
        assert disk == textio.read_jsonl(run.path / "preferences.jsonl")
        given_pairs = {i: (p, {a, b}) for i, p, a, b in pairs}
        for r in disk:
            prompt, texts = given_pairs[r["id"]]
            assert r["prompt"] == [{"role": "user", "content": prompt}]
            assert {r["chosen"][0]["content"], r["rejected"][0]["content"]} == texts
        logs = []
        label_run(read, str(root / "out"), const, LabelSettings(ensemble=2), FakeEngine, "judge", chunk_size=2,
                  show_progress=False, log=logs.append)
        assert "nothing to do" in logs[0]


# ----------------------------------------------------------------- principles through import


@SETTINGS
@given(entries=st.lists(st.tuples(NONBLANK, NONBLANK), min_size=1, max_size=3))
@example(entries=[("Is it kind?\x85Say so.", "Rewrite it\u2028kindly.\u2029")])
def test_hf_import_keeps_principle_text(entries):
    from rlaif.constitution.hf_import import import_hf_constitution

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "cai.json"
        src.write_text(json.dumps({"constitutions": [{"critic": c, "revision": r} for c, r in entries]}, ensure_ascii=False), encoding="utf-8")
        written = import_hf_constitution(src, Path(d) / "out", name="uni")
        const = load_constitution(str([p for p in written if p.parent.name == "constitution"][0]))
        assert {(p.critique, p.revision) for p in const.principles} == {(c.strip(), r.strip()) for c, r in entries}
        texts = {(c.strip(), r.strip()) for c, r in entries}
        principles = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in written if p.parent.name == "principles"]
        assert {(p["critique"], p["revision"]) for p in principles} == texts


# ----------------------------------------------------------------- the reported reproduction


def test_cli_generate_and_resume_with_a_line_separator_in_a_prompt(tmp_path, capsys):
    """Issue 9, point 0b: a prompt whose JSON string holds \\u2028 stopped the run for good."""
    from rlaif.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "p1", "prompt": "Say a\\u2028b please"}\n{"id": "p2", "prompt": "Hello there"}\n', encoding="utf-8")
    args = ["generate", "--prompts", str(prompts), "--out", str(tmp_path / "run"), "--backend", "fake", "--rounds", "1", "--quiet"]
    assert main(args) == 0
    assert main(args) == 0  # resume of a finished run reads the chunks back
    assert "nothing to do" in capsys.readouterr().out
    # an interrupted run resumes too: drop the manifest so the chunks are read and the outputs rebuilt
    (tmp_path / "run" / "manifest.json").unlink()
    assert main(args) == 0
    rows = textio.read_jsonl(tmp_path / "run" / "sft.jsonl")
    assert [r["messages"][0]["content"] for r in rows] == ["Say a\u2028b please", "Hello there"]
    assert datasets.load_from_disk(str(tmp_path / "run" / "sft"))[0]["messages"][0]["content"] == "Say a\u2028b please"


def test_folder_written_the_old_way_resumes(tmp_path, repo_root):
    """A run folder whose chunks hold raw U+2028 (written before the fix) finishes on resume."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "p1", "prompt": "a\\u2028b"}\n{"id": "p2", "prompt": "c\\u2029d\\u0085e"}\n{"id": "p3", "prompt": "f"}\n',
                       encoding="utf-8")
    const = load_constitution("default")
    cfg = resolve({}, {"prompts": str(prompts), "out": str(tmp_path / "run"), "rounds": 1, "chunk_size": 2}, const.defaults)
    generate(cfg, const, FakeEngine, "m", show_progress=False, log=_quiet)
    run = RunDir(tmp_path / "run")
    expected = run.read_chunks()
    for i in run.committed():  # rewrite the chunks as older versions did, and drop the outputs
        run.chunk_file(i).write_text(_old_style(run.read_chunk(i)), encoding="utf-8")
    assert "\u2028" in run.chunk_file(0).read_text(encoding="utf-8")
    run.manifest_file.unlink()
    m = generate(cfg, const, FakeEngine, "m", show_progress=False, log=_quiet)
    assert m["counts"]["trajectories"] == 3
    assert run.read_chunks() == expected
    assert [r["prompt"][0]["content"] for r in textio.read_jsonl(run.path / "preferences.jsonl")] == ["a\u2028b", "c\u2029d\x85e", "f"]


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85"])
def test_written_chunks_escape_line_separators(tmp_path, char):
    run = RunDir(tmp_path)
    run.chunks.mkdir()
    run.commit_chunk(0, [{"t": f"x{char}y"}], {})
    raw = run.chunk_file(0).read_text(encoding="utf-8")
    assert char not in raw and len(raw.splitlines()) == 1
    assert run.read_chunk(0) == [{"t": f"x{char}y"}]


def test_empty_dataset_loads_back(tmp_path):
    """A run whose pairs are all ties or identical writes an empty preference dataset; it must load."""
    features = datasets.Features({"id": datasets.Value("string"), "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}]})
    RunDir(tmp_path).save_dataset("preferences", [], features)
    ds = datasets.load_from_disk(str(tmp_path / "preferences"))
    assert len(ds) == 0 and ds.features == features
    assert textio.read_jsonl(tmp_path / "preferences.jsonl") == []


@SETTINGS
@given(rows=st.lists(st.tuples(NONBLANK, TEXT, TEXT, TEXT), min_size=1, max_size=4, unique_by=lambda r: r[0]),
       comment=TEXT, reviewer=st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=20).filter(lambda s: s == s.strip()))
@example(rows=[("id\u2028", "p\u2029", "c\x85", "r")], comment="a\u2028b\x85c", reviewer="Zoë")
def test_review_reads_the_run_and_its_reviews_back(rows, comment, reviewer):
    """rlaif review reads preferences.jsonl as rlaif wrote it and its own reviews.jsonl back."""
    from rlaif.review.data import Review, ReviewStore, load_pairs

    prefs = [{"id": i, "prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
              "rejected": [{"role": "assistant", "content": r}]} for i, p, c, r in rows]
    with tempfile.TemporaryDirectory() as d:
        run = RunDir(d)
        run.save_dataset("preferences", prefs)
        pairs = load_pairs(d)
        assert [(p.id, p.prompt[0]["content"], p.chosen, p.rejected) for p in pairs] == [tuple(r) for r in rows]
        by_id = {p.id: p for p in pairs}
        review = Review("sub-0000001", reviewer, "2024-01-01T00:00:00.000+00:00", rows[0][0], 3, "rejected", 3, ("wrong",), (), comment)
        assert ReviewStore(Path(d) / "reviews.jsonl", by_id).append(review)
        again = ReviewStore(Path(d) / "reviews.jsonl", by_id)
        assert again.reviews() == [review] and again.warnings == []


def test_odd_text_survives_label_relabel_and_publish_through_the_command_line(tmp_path, repo_root):
    """BOM, line and paragraph separators, emoji with a joiner, control characters, CR and an
    override mark in the pairs and in an edited principle: the relabel's side files keep one row per
    line and the published parquet gives every text back unchanged."""
    import shutil

    from rlaif.cli import main

    odd = "\ufeffBOM \u2028LS \u2029PS 🧪👩\u200d🔬 \x01\x1f\t cr\r nl\n \u202e end"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"u{i}", "prompt": f"Q{i} {odd}", "response_a": f"A{i} {odd}",
                                         "response_b": f"B{i} {odd}", "label": "a"}) + "\n" for i in range(4)), encoding="utf-8")
    edit = tmp_path / "edit"
    for folder in ("constitution", "principles"):
        shutil.copytree(repo_root / folder, edit / folder)
    principle = sorted((edit / "principles").glob("*.yaml"))[0]
    doc = yaml.safe_load(principle.read_text(encoding="utf-8"))
    doc["comparison"] = f"Edited {odd} " + doc["comparison"]
    principle.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    fake = ["--backend", "fake", "--quiet"]
    assert main(["label", "--pairs", str(pairs), "--out", str(tmp_path / "l"), "--ensemble", "2", *fake]) == 0
    assert main(["relabel", str(tmp_path / "l"), "--constitution", str(edit / "constitution" / "default.yaml"),
                 "--out", str(tmp_path / "r"), *fake]) == 0
    for side in (tmp_path / "r" / "chunks").glob("*.*.jsonl"):
        raw = side.read_bytes()
        assert "\u2028".encode() not in raw and "\r".encode() not in raw
        assert len(textio.read_jsonl(side)) == raw.count(b"\n")
    assert textio.read_jsonl(tmp_path / "r" / "chunks" / "00000.pairs.jsonl")[0]["response_a"] == f"A0 {odd}"
    assert main(["publish", str(tmp_path / "r"), "--out", str(tmp_path / "pub")]) == 0
    rows = datasets.load_dataset(str(tmp_path / "pub"), "preferences", split="train")
    texts = {r["prompt"][-1]["content"] for r in rows} | {m["content"] for r in rows for m in (*r["chosen"], *r["rejected"])}
    assert {f"Q{i} {odd}" for i in range(4)} | {f"{s}{i} {odd}" for s in "AB" for i in range(4)} <= texts
