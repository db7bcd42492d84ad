"""``rlaif relabel`` and ``rlaif diff`` through the real command line, against an oracle judge whose
verdict depends on the principle's text: it prefers the response holding the marker, unless the
principle's question holds the word INVERTED, which makes it prefer the other one strongly. So
editing one principle's question flips exactly the pairs that drew it (ensemble 2: 0.9 and 0.012
average below 0.5), and the test knows from the original run's own labels which pairs those are,
how many requests must be sent again, and which stored lines must come back byte for byte.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from oracles import MARKER, shown_responses
from rlaif.cli import main
from rlaif.engine.base import OptionScores
from rlaif.engine.fake import FakeEngine
from rlaif.engine.failures import FAILED_EXIT
from rlaif.pipeline.label_diff import MAX_FLIP_EXIT
from rlaif.pipeline.ratings import RELIABILITY_KIND

INVERT = "INVERTED"
FAIL = "FAILME"  # a question holding it is answered with a transient error
EDITED = "clear-and-concise"  # drawn by some pairs; named by no comparison example and not the first principle
N_PAIRS = 24


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@dataclass
class PrincipleOracle(FakeEngine):
    """P(option A) = sigmoid(2.2 * (marked(A) - marked(B))), the sign turned and doubled when the
    question after the two responses holds INVERTED. ``asked``: every scored question; ``fail_at``:
    raise KeyboardInterrupt at that score call (1-based), before answering it."""

    model: str = "principle-oracle"
    asked: list[str] = field(default_factory=list)
    fail_at: int | None = None
    score_calls: int = 0

    def __post_init__(self) -> None:
        self.scorer = self._score

    def score_options(self, requests, options, desc=""):
        self.score_calls += 1
        if self.fail_at is not None and self.score_calls >= self.fail_at:
            raise KeyboardInterrupt
        out = super().score_options(requests, options, desc)
        return [OptionScores((), o.prompt_tokens, error="server gave up", retryable=True)
                if FAIL in r.messages[-1]["content"].rsplit("\n\n", 1)[1] else o for r, o in zip(requests, out)]

    def _score(self, req, options):
        text = req.messages[-1]["content"]
        first, second = shown_responses(text)
        q = text.rsplit("\n\n", 1)[1]
        self.asked.append(q)
        z = 2.2 * ((MARKER in first) - (MARKER in second)) * (-2.0 if INVERT in q else 1.0)
        return [-math.log1p(math.exp(-z)), -math.log1p(math.exp(z))]


@pytest.fixture
def oracle(monkeypatch):
    """Every engine the command line starts is a PrincipleOracle; ``engines`` lists them."""
    import rlaif.engine

    engines: list[PrincipleOracle] = []
    fail = {"at": None}

    def create(model, engine, **kw):
        engines.append(PrincipleOracle(model=model, fail_at=fail["at"]))
        return engines[-1]

    monkeypatch.setattr(rlaif.engine, "create_engine", create)
    return engines, fail


def write_pairs(folder: Path, n: int = N_PAIRS) -> Path:
    path = folder / "pairs.jsonl"
    rows = []
    for i in range(n):
        # the better (marked) response is the longer one when i % 4 < 2, the shorter one otherwise
        good, bad = f"{MARKER} pack water and a map {i:03d}", f"just go {i:03d}" + ("; it will be fine, trust me" * (i % 4 >= 2))
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        rows.append({"id": f"m{i}", "prompt": f"What should I pack for hike {i}?", "response_a": a, "response_b": b,
                     "label": "a" if i % 2 == 0 else "b"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def edit_comparison(const_dir: Path, pid: str, new: str) -> None:
    path = const_dir / "principles" / f"{pid}.yaml"
    text = path.read_text()
    head, rest = re.split(r"comparison: >-[ \t]*\n", text, maxsplit=1)
    lines = rest.split("\n")
    body_end = next(i for i, line in enumerate(lines) if not line.startswith("  "))
    path.write_text(head + "comparison: >-\n" + "".join(f"  {x}\n" for x in new.split("\n")) + "\n".join(lines[body_end:]))


def comparison_text(const_dir: Path, pid: str) -> str:
    from rlaif.constitution import load_constitution

    return load_constitution(str(const_dir / "constitution" / "default.yaml")).principle(pid).comparison


def labels(run: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (run / "labels.jsonl").read_text().splitlines())}


def judgement_lines(run: Path) -> list[bytes]:
    return [line for f in sorted((run / "chunks").glob("*.judgements.jsonl")) for line in f.read_bytes().splitlines()]


def numbers(out: str) -> tuple[int, int, int, int]:
    """(re-sent, reused, flipped, compared) from the printed summary."""
    j = re.search(r"judgements: (\d+) re-sent, (\d+) reused", out)
    f = re.search(r"labels: (\d+) of (\d+) pairs flipped", out)
    assert j and f, out
    return int(j[1]), int(j[2]), int(f[1]), int(f[2])


def rate_marker_side(run: Path, pair_ids: list[str]) -> list[str]:
    """Ratings as rlaif review stores them: reviewer ann prefers the response holding the marker,
    which the original run chose (its preference row's chosen response), shown on the left."""
    from rlaif.review.data import Review, ReviewStore

    store = ReviewStore(run / "reviews.jsonl", dict.fromkeys(labels(run)))
    for k, pid in enumerate(pair_ids):
        assert store.append(Review(f"sub{k:08d}", "ann", f"2025-01-01T00:00:{k:02d}", pid, rating_shown=1, left="chosen", likert=8))
    return pair_ids


def label_old(tmp_path, const_dir, *extra) -> Path:
    old = tmp_path / "old"
    assert cli("label", "--pairs", write_pairs(tmp_path), "--out", old, "--backend", "fake", "--ensemble", 2, "--chunk-size", 8,
               "--constitution", const_dir / "constitution" / "default.yaml", *extra, "--quiet") == 0
    return old


def relabel(const_dir, old, new, *extra) -> int:
    return cli("relabel", old, "--constitution", const_dir / "constitution" / "default.yaml", "--out", new, *extra, "--quiet")


def test_relabel_sends_only_the_edited_principle_and_counts_flips_exactly(tmp_path, const_dir, oracle, capsys):
    engines, _ = oracle
    old = label_old(tmp_path, const_dir)
    before = labels(old)
    assert all(r["p_a"] > 0.5 if i % 2 == 0 else r["p_a"] < 0.5 for i, r in enumerate(before.values()))  # the oracle's side
    drew = {pid for pid, r in before.items() if EDITED in r["per_principle"]}  # from the run's own labels
    assert 0 < len(drew) < N_PAIRS
    old_lines = judgement_lines(old)
    assert len(old_lines) == N_PAIRS * 2 * 2
    rated = rate_marker_side(old, [f"m{i}" for i in range(0, N_PAIRS, 2)])  # a reviewer who agrees with the original judge
    capsys.readouterr()

    edit_comparison(const_dir, EDITED, f"{INVERT}: which response is worse?")
    assert relabel(const_dir, old, tmp_path / "new") == 0
    out = capsys.readouterr().out
    # exactly the edited principle's comparisons were sent, both orders of every pair that drew it
    assert numbers(out) == (2 * len(drew), len(old_lines) - 2 * len(drew), len(drew), N_PAIRS)
    asked = engines[-1].asked
    assert len(asked) == 2 * len(drew) and all(q.startswith(f"{INVERT}:") for q in asked)
    # every other stored line is copied byte for byte; the edited ones are new
    new_lines = judgement_lines(tmp_path / "new")
    kept = [x for x in old_lines if f'"principle": "{EDITED}"'.encode() not in x]
    assert [x for x in new_lines if f'"principle": "{EDITED}"'.encode() not in x] == kept
    assert len(new_lines) == len(old_lines) and len(set(new_lines) - set(old_lines)) == 2 * len(drew)
    # the flipped labels are exactly the pairs that drew the edited principle, and the printout says so
    after = labels(tmp_path / "new")
    assert {pid for pid in before if (before[pid]["p_a"] > 0.5) != (after[pid]["p_a"] > 0.5)} == drew
    assert re.search(rf"{EDITED}\s+{len(drew)}\s+{len(drew)}\s+{len(drew)}", out), out
    assert f"agreement 100.0% -> {1 - len(drew) / N_PAIRS:.1%}" in out  # the reference labels are the marker's side
    # by hand: ann's choice is the longer answer for i % 4 == 0, the shorter for i % 4 == 2; a flipped pair disagrees
    longer = [p for p in rated if int(p[1:]) % 4 == 0]
    shorter = [p for p in rated if int(p[1:]) % 4 == 2]
    hit = lambda ps: sum(p not in drew for p in ps) / len(ps)  # noqa: E731
    agree, lc = 1 - len(drew & set(rated)) / len(rated), (hit(longer) + hit(shorter)) / 2
    assert f"human ratings ({len(rated)} of {len(rated)} pairs): length-controlled agreement 100.0% -> {lc:.1%}" in out, out
    assert f"agreement 100.0% -> {agree:.1%}" in out
    saved = json.loads((tmp_path / "new" / "relabel.json").read_text())
    assert saved["comparison"]["labels"]["flipped"] == len(drew)

    # rlaif diff: the same comparison; --max-flip-rate gives the exit status
    rate = len(drew) / N_PAIRS
    assert cli("diff", old, tmp_path / "new", "--max-flip-rate", rate - 0.01) == MAX_FLIP_EXIT
    assert "more than --max-flip-rate" in capsys.readouterr().err
    assert cli("diff", old, tmp_path / "new", "--max-flip-rate", rate) == 0
    assert numbers(capsys.readouterr().out) == numbers(out)
    assert cli("diff", old, tmp_path / "new", "--json") == 0
    assert json.loads(capsys.readouterr().out)["labels"]["by_principle"][EDITED]["verdict_flipped"] == len(drew)

    # run again: complete, nothing sent; --json prints what relabel.json holds
    n = len(engines)
    assert relabel(const_dir, old, tmp_path / "new", "--json") == 0
    assert len(engines) == n
    printed = json.loads(capsys.readouterr().out)  # stdout holds the JSON only
    assert printed == json.loads((tmp_path / "new" / "relabel.json").read_text())
    assert printed["plan"]["removed"] == [] and printed["comparison"]["labels"]["flipped"] == len(drew)


def test_whitespace_and_non_judge_edits_send_nothing(tmp_path, const_dir, oracle, capsys):
    engines, _ = oracle
    old = label_old(tmp_path, const_dir)
    text = comparison_text(const_dir, EDITED)
    path = const_dir / "principles" / f"{EDITED}.yaml"
    # a comment, trailing whitespace in the folded question and a new critique: the judge sees none of them
    path.write_text("# reworded the critique\n" + path.read_text().replace("comparison: >-\n", "comparison: >-   \n")
                    .replace("critique: >-\n", "critique: >-\n  Be brief about it.\n").replace("title: ", "title: Now "))
    assert comparison_text(const_dir, EDITED) == text
    edit_comparison(const_dir, EDITED, text.replace(" ", "\n", 2))  # the folded block wrapped differently
    assert comparison_text(const_dir, EDITED) == text
    capsys.readouterr()
    assert relabel(const_dir, old, tmp_path / "same") == 0
    assert numbers(capsys.readouterr().out)[:3] == (0, N_PAIRS * 4, 0)
    assert judgement_lines(tmp_path / "same") == judgement_lines(old)
    # a space inside the question is a change: the judge reads other tokens
    edit_comparison(const_dir, EDITED, text.replace(" ", "  ", 1))
    assert relabel(const_dir, old, tmp_path / "space") == 0
    drew = sum(EDITED in r["per_principle"] for r in labels(old).values())
    assert numbers(capsys.readouterr().out)[:3] == (2 * drew, N_PAIRS * 4 - 2 * drew, 0)


def test_few_shot_edits_reach_every_request_that_quotes_them(tmp_path, const_dir, oracle, capsys):
    """With --few-shot every request shows the comparison examples, whose questions are their
    principles' (refuse-only-real-harm is one): editing it sends every comparison again. Editing a
    principle no example quotes sends only its own comparisons."""
    engines, _ = oracle
    old = label_old(tmp_path, const_dir, "--few-shot")
    total = len(judgement_lines(old))
    drew = sum(EDITED in r["per_principle"] for r in labels(old).values())
    edit_comparison(const_dir, EDITED, "Which response is shorter and clearer?")
    capsys.readouterr()
    assert relabel(const_dir, old, tmp_path / "own") == 0
    assert numbers(capsys.readouterr().out)[:2] == (2 * drew, total - 2 * drew)
    edit_comparison(const_dir, "refuse-only-real-harm", f"{INVERT}: which response refuses worse?")
    assert relabel(const_dir, old, tmp_path / "quoted") == 0
    resent, reused, *_ = numbers(capsys.readouterr().out)
    assert (resent, reused) == (total, 0) and len(engines[-1].asked) == total


def test_removed_principle_is_dropped_and_resample_counts_new_draws(tmp_path, const_dir, oracle, capsys):
    engines, _ = oracle
    old = label_old(tmp_path, const_dir)
    before = labels(old)
    drew = {pid for pid, r in before.items() if EDITED in r["per_principle"]}
    const = const_dir / "constitution" / "default.yaml"
    one = tmp_path / "one"  # one principle per pair
    assert cli("label", "--pairs", tmp_path / "pairs.jsonl", "--out", one, "--backend", "fake", "--ensemble", 1,
               "--constitution", const, "--quiet") == 0
    const.write_text(const.read_text() + f"exclude:\n  - {EDITED}\n")
    capsys.readouterr()
    assert relabel(const_dir, old, tmp_path / "removed") == 0
    out = capsys.readouterr().out
    # no request changed: the pairs that drew it keep their other principle only
    assert numbers(out)[:3] == (0, N_PAIRS * 4 - 2 * len(drew), 0)
    assert f"removed principles {EDITED}: their comparisons are dropped ({2 * len(drew)})" in out
    assert f"{2 * len(drew)} dropped" in out
    after = labels(tmp_path / "removed")
    assert all(EDITED not in r["per_principle"] for r in after.values())
    assert all(len(after[p]["per_principle"]) == (1 if p in drew else 2) for p in before)
    assert engines[-1].asked == []
    # with one principle per pair, a pair whose principle was removed draws afresh (and is judged anew)
    alone = {p for p, r in labels(one).items() if EDITED in r["per_principle"]}
    capsys.readouterr()
    assert relabel(const_dir, one, tmp_path / "one-removed") == 0
    out = capsys.readouterr().out
    assert f"; {len(alone)} pairs had no principle left and drew afresh" in out and numbers(out)[0] == 2 * len(alone)
    assert all(len(r["per_principle"]) == 1 and EDITED not in r["per_principle"] for r in labels(tmp_path / "one-removed").values())

    # a new principle: not drawn without --resample; --resample draws afresh and says how many draws changed
    new_p = const_dir / "principles" / "zz-new.yaml"
    new_p.write_text("id: zz-new\ntitle: New\ntags: [helpful]\ncritique: Critique it.\nrevision: Revise it.\n"
                     f"comparison: Which response holds the word {MARKER}?\nweight: 5.0\n")
    assert relabel(const_dir, old, tmp_path / "kept") == 0
    out = capsys.readouterr().out
    assert "new principles zz-new: not drawn" in out and numbers(out)[0] == 0
    n_engines = len(engines)
    assert relabel(const_dir, old, tmp_path / "resampled", "--resample") == 0
    out = capsys.readouterr().out
    old_draw = {p: set(r["per_principle"]) for p, r in before.items()}
    new_draw = {p: set(r["per_principle"]) for p, r in labels(tmp_path / "resampled").items()}
    changed = sum(old_draw[p] != new_draw[p] for p in before)
    assert changed > 0 and f"--resample: {changed} of {N_PAIRS} pairs changed their principle draw" in out
    new_comparisons = 2 * sum(len(new_draw[p] - old_draw[p]) for p in before)  # (pair, principle) not judged before
    assert numbers(out)[0] == new_comparisons == len(engines[n_engines].asked)


def test_killed_relabel_continues_and_sends_nothing_twice(tmp_path, const_dir, oracle, capsys):
    """Killed (KeyboardInterrupt from the engine) when the second chunk's requests go out, then run
    again: the same files as a relabel that was never stopped, and every request answered once."""
    engines, fail = oracle
    old = label_old(tmp_path, const_dir, "--few-shot")  # an edit of a quoted principle changes every request
    edit_comparison(const_dir, "refuse-only-real-harm", "Which response refuses only what is truly harmful?")
    assert relabel(const_dir, old, tmp_path / "whole") == 0
    whole = len(engines[-1].asked)
    # killed at the second chunk's request (after the first chunk was committed), then run again
    fail["at"] = 2
    assert relabel(const_dir, old, tmp_path / "resumed") == 130
    first = len(engines[-1].asked)
    fail["at"] = None
    capsys.readouterr()
    assert relabel(const_dir, old, tmp_path / "resumed") == 0
    assert "resuming" in capsys.readouterr().out
    assert first + len(engines[-1].asked) == whole and 0 < first < whole
    for name in ("labels.jsonl", "preferences.jsonl"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert judgement_lines(tmp_path / "resumed") == judgement_lines(tmp_path / "whole")


def test_relabel_refuses_runs_it_cannot_reuse_and_diff_refuses_other_pairs(tmp_path, const_dir, oracle, capsys):
    old = label_old(tmp_path, const_dir)
    assert relabel(const_dir, old, old) == 2
    assert "--out must be a new folder" in capsys.readouterr().err
    assert relabel(const_dir, tmp_path / "nowhere", tmp_path / "n") == 2
    assert "is not a run folder" in capsys.readouterr().err
    # a run labelled before rlaif kept its judge requests
    for f in (old / "chunks").glob("*.judgements.jsonl"):
        f.unlink()
    assert relabel(const_dir, old, tmp_path / "n") == 2
    err = capsys.readouterr().err
    assert "did not keep its pairs and judge requests" in err and "rlaif diff" in err and "Traceback" not in err
    # rlaif diff still works on it, and refuses runs of other pairs
    assert cli("diff", old, old) == 0
    assert cli("label", "--pairs", write_pairs(tmp_path, 10), "--out", tmp_path / "other", "--backend", "fake", "--quiet") == 0
    assert cli("diff", old, tmp_path / "other") == 2
    assert "did not label the same pairs" in capsys.readouterr().err


def test_failed_requests_exit_4_and_a_rerun_redoes_them(tmp_path, const_dir, oracle, capsys, monkeypatch):
    """Failed comparisons leave their pairs missing: exit 4 (the failures machinery of rlaif label)
    unless --allow-failures; a rerun sends only the comparisons that failed."""
    engines, _ = oracle
    old = label_old(tmp_path, const_dir)
    drew = sum(EDITED in r["per_principle"] for r in labels(old).values())
    edit_comparison(const_dir, EDITED, f"{FAIL}: which response is clearer?")
    capsys.readouterr()
    assert relabel(const_dir, old, tmp_path / "new") == FAILED_EXIT
    err = capsys.readouterr().err
    assert f"rlaif: incomplete: missing {drew} of {N_PAIRS} pairs ({drew} failed for now: run the same command again" in err
    assert len(judgement_lines(tmp_path / "new")) == N_PAIRS * 4 - 2 * drew  # no line for a failed comparison
    # --allow-failures accepts them (a warning line, exit 0); a share below theirs does not
    assert relabel(const_dir, old, tmp_path / "allowed", "--allow-failures") == 0
    assert f"rlaif: warning: missing {drew} of {N_PAIRS} pairs" in capsys.readouterr().err
    assert relabel(const_dir, old, tmp_path / "allowed", "--allow-failures", (drew - 1) / N_PAIRS) == FAILED_EXIT
    # the server is back (the same question is now answered): only the failed comparisons go out again,
    # the failed pairs' other comparisons come from the original run
    import rlaif.engine

    monkeypatch.setattr(rlaif.engine, "create_engine", lambda model, engine, **kw: _no_fail(PrincipleOracle(model=model), engines))
    assert relabel(const_dir, old, tmp_path / "new") == 0
    assert len(engines[-1].asked) == 2 * drew and all(q.startswith(FAIL) for q in engines[-1].asked)
    assert len(judgement_lines(tmp_path / "new")) == N_PAIRS * 4


def test_principle_reliability_weights_are_kept(tmp_path, const_dir, oracle, capsys):
    """A run labelled with --principle-reliability giving the edited principle weight 0: the relabel
    weighs the same way, so inverting that principle's question re-sends its comparisons and flips
    nothing (weighed 1, every pair that drew it would flip)."""
    weights = tmp_path / "reliability.json"
    weights.write_text(json.dumps({"kind": RELIABILITY_KIND, "weights": {EDITED: 0.0}}))
    old = label_old(tmp_path, const_dir, "--principle-reliability", weights)
    drew = sum(EDITED in r["per_principle"] for r in labels(old).values())
    edit_comparison(const_dir, EDITED, f"{INVERT}: which response is worse?")
    capsys.readouterr()
    assert relabel(const_dir, old, tmp_path / "new") == 0
    assert numbers(capsys.readouterr().out)[:3] == (2 * drew, N_PAIRS * 4 - 2 * drew, 0)
    manifest = json.loads((tmp_path / "new" / "manifest.json").read_text())
    assert manifest["settings"]["principle_reliability"] == {EDITED: 0.0}
    assert sum("reweighted" in r["flags"] for r in labels(tmp_path / "new").values()) == drew


def _no_fail(engine, engines):
    """The oracle, but a FAILME question is answered like any other."""
    engine.score_options = lambda requests, options, desc="": FakeEngine.score_options(engine, requests, options, desc)
    engines.append(engine)
    return engine


def test_another_judge_reuses_nothing_and_length_control_keeps_only_the_comparisons(tmp_path, const_dir, oracle, capsys):
    old = label_old(tmp_path, const_dir, "--length-control")
    capsys.readouterr()
    assert relabel(const_dir, old, tmp_path / "judge", "--feedback-model", "another-judge") == 0
    out, err = capsys.readouterr()
    assert "the judge is not the run's (model 'default' -> 'another-judge')" in err
    assert numbers(out)[:2] == (N_PAIRS * 4, 0)
    # with length control the fit is redone over the whole relabelled run; the reused comparisons stay byte-identical
    edit_comparison(const_dir, EDITED, f"{INVERT}: which response is worse?")
    assert relabel(const_dir, old, tmp_path / "lc") == 0
    mark = f'"principle": "{EDITED}"'.encode()
    assert [x for x in judgement_lines(tmp_path / "lc") if mark not in x] == [x for x in judgement_lines(old) if mark not in x]
    for run in (old, tmp_path / "lc"):
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["settings"]["label"].get("length_control") is None and manifest["finalise"]["length_control"] is True
        assert manifest["length_control"]["n"] == N_PAIRS
    assert all("judge_p_a" in r for r in labels(tmp_path / "lc").values())


def test_chain_of_thought_reasoning_is_reused_with_its_comparison(tmp_path, const_dir, oracle, capsys):
    """With --cot a comparison is a reasoning request and a scoring request: a reused one sends
    neither, and its reasoning comes back unchanged in the label."""
    engines, _ = oracle
    old = label_old(tmp_path, const_dir, "--cot")
    before = labels(old)
    drew = {p for p, r in before.items() if EDITED in r["per_principle"]}
    edit_comparison(const_dir, EDITED, f"{INVERT}: which response is worse?")
    capsys.readouterr()
    assert relabel(const_dir, old, tmp_path / "new") == 0
    assert numbers(capsys.readouterr().out)[:3] == (2 * len(drew), N_PAIRS * 4 - 2 * len(drew), 0)  # CoT clamps: no flips
    engine = engines[-1]
    assert len(engine.asked) == 2 * len(drew)
    assert sum(n for desc, n in engine.calls if desc.endswith("reasoning")) == 2 * len(drew)
    after = labels(tmp_path / "new")
    for pid, r in before.items():
        for principle, text in r["reasoning"].items():
            if principle != EDITED:
                assert after[pid]["reasoning"][principle] == text and text.startswith("reply ")
    mark = f'"principle": "{EDITED}"'.encode()
    assert [x for x in judgement_lines(tmp_path / "new") if mark not in x] == [x for x in judgement_lines(old) if mark not in x]
    assert all(b'"reasoning": "reply ' in x for x in judgement_lines(old))
