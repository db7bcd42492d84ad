"""``rlaif constitution test`` through the real command line, against oracle judges.

A judge that knows the answer key passes every shipped case; a judge that falls back on the
slot for answers that look alike fails exactly the near-duplicate cases, and a judge that
prefers length fails exactly the cases whose worse answer is clearly longer, each with its
cause named. Then: the requests are the ones ``rlaif label`` sends, exit codes (5 below
--min-pass, 10-case principles gate on their own, 4 on failed requests, 3 with --strict), and
every backend: fake, openai (loopback oracle server, also as a subprocess), transformers and
vLLM (marked) on the default model.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures_server import ORACLE_MARKER, OracleServer
from judge_oracles import CaseOracle
from oracles import MARKER, content_oracle, position_oracle

from rlaif.cli import main
from rlaif.constitution import load_constitution, load_principle_dir
from rlaif.constitution.cases import LENGTH_TRAP_RATIO, catches_length, catches_position
from rlaif.engine.fake import FakeEngine
from rlaif.pipeline.constitution_test import REQUESTS_FAILED_EXIT, TEST_FAILED_EXIT, case_settings, pinned
from rlaif.pipeline.diagnostics import STRICT_EXIT
from rlaif.pipeline.judge import Pair, label_pairs, sample_label_principles

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [c for p in load_principle_dir(ROOT / "principles").principles.values() for c in p.tests]


def run_cli(monkeypatch, capsys, argv, engine=None):
    """The real command line in this process; with ``engine``, the fake backend is that engine."""
    import rlaif.engine.fake

    if engine is not None:
        monkeypatch.setattr(rlaif.engine.fake, "FakeEngine", lambda model=None, **kw: engine)
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_answer_key_passes_every_shipped_case(monkeypatch, capsys):
    judge = CaseOracle(cases=SHIPPED)
    code, out, err = run_cli(monkeypatch, capsys, ["constitution", "test", "--backend", "fake", "--json", "--quiet"], judge)
    assert code == 0, err
    rep = json.loads(out)
    assert rep["total"]["cases"] == len(SHIPPED) == 120 and rep["total"]["passed"] == 120
    assert len(rep["principles"]) == 20 and all(s["pass_rate"] == 1.0 for s in rep["principles"].values())
    sig2 = 1 / (1 + math.exp(-2.0))
    for c in rep["cases"]:
        assert c["passed"] and c["consistent"] and not c["by_position"]
        assert c["p_better"] == pytest.approx(sig2, rel=1e-9)  # logit +2 in both orders, unswapped
    assert rep["total"]["order_consistency"] == 1.0 and rep["total"]["decided_by_position"] == 0.0
    assert rep["total"]["interval"][0] > 0.96  # Wilson, 120 of 120
    assert rep["total"]["length_controlled_pass_rate"] == 1.0
    # each case judged in both orders, under its own principle's comparison question
    const = load_constitution("default")
    questions = {c.name: const.principle(c.principle).comparison for c in SHIPPED}
    assert len(judge.seen) == 240
    by_pair = {}
    for q, first, second in judge.seen:
        by_pair.setdefault(frozenset((first, second)), []).append((q, first))
    for c in SHIPPED:
        seen = by_pair[frozenset((c.response_a, c.response_b))]
        assert {f for _, f in seen} == {c.response_a, c.response_b}
        assert {q for q, _ in seen} == {questions[c.name]}


def test_a_judge_that_falls_back_on_the_slot_fails_exactly_the_near_duplicates(monkeypatch, capsys):
    judge = CaseOracle(cases=SHIPPED, position=1.5, blind_to_near_duplicates=True)
    argv = ["constitution", "test", "--backend", "fake", "--json", "--quiet", "--min-pass", "0.9"]
    code, out, err = run_cli(monkeypatch, capsys, argv, judge)
    rep = json.loads(out)
    expected = {c.name for c in SHIPPED if catches_position(c)}
    assert len(expected) >= 20
    assert set(rep["total"]["failed"]) == expected
    failed = [c for c in rep["cases"] if not c["passed"]]
    assert {c["cause"] for c in failed} == {"position"} and all(c["p_better"] == pytest.approx(0.5) for c in failed)
    assert all("position" in c["traps"] for c in failed)
    # the other cases pass: in both orders the slot's pull cancels
    assert all(c["consistent"] for c in rep["cases"] if c["passed"])
    assert code == TEST_FAILED_EXIT and "total pass rate" in err and "< --min-pass 90%" in err
    # the table names the cause of each failed case
    code, out, err = run_cli(monkeypatch, capsys, ["constitution", "test", "--backend", "fake", "--quiet"],
                             CaseOracle(cases=SHIPPED, position=1.5, blind_to_near_duplicates=True))
    assert f"causes: position {len(expected)}" in out
    line = next(l for l in out.splitlines() if l.strip().startswith("no-sycophancy#3"))
    assert "position: the two orders favoured the same slot" in line and "built to catch position" in line


def test_a_length_judge_fails_exactly_the_cases_built_against_length(monkeypatch, capsys):
    # content log-odds c and length slope s: the longer answer wins where s * log ratio > c,
    # i.e. where (1 + len worse) / (1 + len better) > exp(c / s) = LENGTH_TRAP_RATIO
    s = 4.0
    judge = CaseOracle(cases=SHIPPED, content=s * math.log(LENGTH_TRAP_RATIO), length=s)
    code, out, err = run_cli(monkeypatch, capsys, ["constitution", "test", "--backend", "fake", "--json", "--quiet"], judge)
    rep = json.loads(out)
    expected = {c.name for c in SHIPPED if catches_length(c)}
    assert len(expected) >= 40 and set(rep["total"]["failed"]) == expected
    assert {c["cause"] for c in rep["cases"] if not c["passed"]} == {"length"}
    assert rep["total"]["causes"] == {"length": len(expected)}
    assert code == TEST_FAILED_EXIT  # 77 of 120 pass: below the default --min-pass of 80%
    assert rep["total"]["order_consistency"] == 1.0  # a length preference is consistent across orders
    # every length case has its better answer shorter: the strata show the length judge for what it is
    shorter = [c for c in SHIPPED if len(c.better_text) < len(c.worse_text)]
    by_length = rep["total"]["by_length"]
    assert by_length["longer"]["agreement"] == 1.0 and by_length["shorter"]["n"] == len(shorter)
    assert by_length["shorter"]["agreement"] == pytest.approx((len(shorter) - len(expected)) / len(shorter))
    assert rep["total"]["length_controlled_pass_rate"] == pytest.approx(0.5 * (1 + by_length["shorter"]["agreement"]))


def test_the_requests_are_the_ones_rlaif_label_sends(tmp_path):
    """Pinned to a principle, label_pairs renders exactly the request that a run's weighted
    draw of that principle renders, few-shot block included."""
    const = load_constitution("default")
    p = const.principle("no-sycophancy")
    settings = case_settings(few_shot=True)
    pair_id = next(f"pair-{i}" for i in range(10_000) if sample_label_principles(const, f"pair-{i}", 1, 0)[0].id == p.id)
    pair = Pair(pair_id, ({"role": "user", "content": "Is the moon made of cheese?"},), "Yes.", "No, it is rock.")
    requests = {}
    for name, c in (("label", const), ("pinned", pinned(const, p))):
        eng = content_oracle()
        seen = []
        eng.scorer = lambda req, options, seen=seen: seen.append(req.messages) or [-0.1, -2.0]
        label_pairs(eng, c, [pair], settings)
        requests[name] = seen
    assert requests["label"] == requests["pinned"] and len(requests["label"]) == 2
    assert requests["label"][0][0]["role"] == "user" and len(requests["label"][0]) == 1 + 2 * len(const.comparison_examples)
    # a principle the constitution does not select is added with all the weight
    strict = load_constitution("harmless-strict")
    q = const.principle("answer-directly")
    assert q.id not in {x.id for x in strict.principles}
    assert [x.id for x in sample_label_principles(pinned(strict, q), "any", 1, 0)] == [q.id]


def _principles(folder: Path, spec: dict[str, list[bool]], marker: str = MARKER) -> Path:
    """A constitution (tag t) and principles whose cases put the marker in the better answer
    (True) or in the worse one (False); the better side alternates A, B."""
    (folder / "principles").mkdir(parents=True)
    (folder / "constitution").mkdir()
    for pid, good in spec.items():
        tests = []
        for i, ok in enumerate(good):
            # the marked answer wins with the content oracle; the worse one is never the longer
            better, worse = ((f"Take the {marker} path {i}.", f"Go the other way {i}.") if ok
                             else (f"Take the long and winding path {i}.", f"Go the {marker} way {i}."))
            a, b = (better, worse) if i % 2 == 0 else (worse, better)
            tests.append({"prompt": f"Which way, {pid} {i}?", "response_a": a, "response_b": b, "better": "A" if i % 2 == 0 else "B"})
        (folder / "principles" / f"{pid}.yaml").write_text(yaml.safe_dump({
            "id": pid, "title": pid, "tags": ["t"], "critique": "Critique it.", "revision": "Revise it.",
            "comparison": f"Which response is better for {pid}?", "tests": tests}, sort_keys=False))
    (folder / "constitution" / "tc.yaml").write_text(yaml.safe_dump({"name": "tc", "principles": [{"tag": "t"}]}))
    return folder / "constitution" / "tc.yaml"


def test_principles_with_ten_cases_gate_on_their_own(tmp_path, monkeypatch, capsys):
    const = _principles(tmp_path / "a", {"p-big": [True] * 7 + [False] * 3, "p-small": [True, False] * 3, "p-many": [True] * 30})
    code, out, err = run_cli(monkeypatch, capsys, ["constitution", "test", const, "--backend", "fake", "--json", "--quiet"],
                             content_oracle(2.0))
    rep = json.loads(out)
    assert rep["total"]["passed"] == 40 and rep["total"]["cases"] == 46  # 87% >= 80%
    assert rep["principles"]["p-big"]["pass_rate"] == 0.7 and rep["principles"]["p-small"]["pass_rate"] == 0.5
    assert code == TEST_FAILED_EXIT and rep["gate"] == ["p-big: pass rate 70.0% of 10 cases < --min-pass 80%"]
    assert rep["exit_status"] == TEST_FAILED_EXIT
    assert {c["cause"] for c in rep["cases"] if not c["passed"]} == {"content"}
    # a principle with fewer than 10 cases counts only in the total
    const = _principles(tmp_path / "b", {"p-small": [True, False] * 3, "p-many": [True] * 30})
    code, out, err = run_cli(monkeypatch, capsys, ["constitution", "test", const, "--backend", "fake", "--quiet"], content_oracle(2.0))
    assert code == 0, err
    assert "p-small                          6    3/6     50%" in out
    # principle ids are judged in the constitution named by --constitution
    code, out, err = run_cli(monkeypatch, capsys, ["constitution", "test", "p-small", "--constitution", const, "--backend", "fake",
                                                   "--quiet", "--min-pass", "0.5"], content_oracle(2.0))
    assert code == 0 and "total                            6    3/6" in out


def test_exit_codes_for_failed_requests_strict_and_bad_input(tmp_path, monkeypatch, capsys):
    from rlaif.engine.base import OptionScores

    class Broken(FakeEngine):
        def score_options(self, requests, options, desc=""):
            return [OptionScores((), 0, error="server gone", retryable=True) for _ in requests]

    code, out, err = run_cli(monkeypatch, capsys, ["constitution", "test", "no-sycophancy", "--backend", "fake", "--quiet"], Broken())
    assert code == REQUESTS_FAILED_EXIT
    assert "rlaif: error: 6 of 6 cases could not be judged (server gone); run the command again" in err
    # a judge that only follows the slot: every case at 0.5, the orders never agree
    argv = ["constitution", "test", "--backend", "fake", "--quiet", "--min-pass", "0"]
    code, out, err = run_cli(monkeypatch, capsys, argv, position_oracle(2.0))
    assert code == 0 and "causes: position 120" in out and "uninformative" in err
    code, out, err = run_cli(monkeypatch, capsys, argv + ["--strict"], position_oracle(2.0))
    assert code == STRICT_EXIT
    code, out, err = run_cli(monkeypatch, capsys, argv[:-2] + ["--strict"], position_oracle(2.0))
    assert code == TEST_FAILED_EXIT  # a failed test outranks --strict
    for bad, says in ((["no-such-principle"], "no principle or constitution 'no-such-principle'"),
                      (["no-sycophancy", "--min-pass", "1.5"], "--min-pass must be between 0 and 1"),
                      (["default", "no-sycophancy"], "give one constitution, or principle ids"),
                      (["no-sycophancy", "--level", "1"], "--level must be between 0 and 1")):
        code, out, err = run_cli(monkeypatch, capsys, ["constitution", "test", *bad, "--backend", "fake"])
        assert code == 2 and says in err and "Traceback" not in err, (bad, err)
    empty = _principles(tmp_path / "e", {"p-none": []})
    code, out, err = run_cli(monkeypatch, capsys, ["constitution", "test", empty, "--backend", "fake"])
    assert code == 2 and "no test cases in p-none" in err


# ------------------------------------------------------------------ backends


def test_openai_backend_judges_on_the_server(tmp_path, monkeypatch, capsys):
    const = _principles(tmp_path, {"p-one": [True] * 4, "p-two": [True, False]}, marker=ORACLE_MARKER)
    with OracleServer(("judge-y", "other"), reports={"judge-y": "judge-y@rev2"}) as srv:
        code, out, err = run_cli(monkeypatch, capsys, ["constitution", "test", const, "--backend", "openai", "--base-url", srv.url,
                                                       "--feedback-model", "judge-y", "--json", "--quiet"])
        score = srv.requests("score")
    rep = json.loads(out)
    assert len(score) == 12 and {b["model"] for b in score} == {"judge-y"}
    assert rep["judge"]["model"] == "judge-y" and rep["judge"]["answered_by"] == "judge-y@rev2"
    assert rep["total"]["passed"] == 5 and rep["total"]["failed"] == ["p-two#2"]
    assert rep["cases"][0]["p_better"] == pytest.approx(0.9)
    assert code == 0  # 5 of 6 = 83% >= 80%


def test_openai_backend_in_a_subprocess(tmp_path):
    const = _principles(tmp_path, {"p-one": [True, False, False]}, marker=ORACLE_MARKER)
    with OracleServer(("judge-y",)) as srv:
        res = subprocess.run([sys.executable, "-m", "rlaif", "constitution", "test", str(const), "--backend", "openai",
                              "--base-url", srv.url, "--quiet"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == TEST_FAILED_EXIT, res.stderr
    assert "total                            3    1/3" in res.stdout
    assert "rlaif: test failed: total pass rate 33.3% < --min-pass 80%" in res.stderr


def test_transformers_backend_on_the_default_model(default_model, tmp_path, monkeypatch, capsys):
    const = _principles(tmp_path, {"p-one": [True, True]})
    code, out, err = run_cli(monkeypatch, capsys, ["constitution", "test", const, "--backend", "transformers", "--dtype", "float32",
                                                   "--json", "--quiet", "--min-pass", "0"])
    assert code == 0, err
    rep = json.loads(out)
    assert rep["judge"]["model"] == default_model and rep["total"]["judged"] == 2
    assert all(0 < c["p_better"] < 1 and 0 < c["p_better_shown_first"] < 1 for c in rep["cases"])


@pytest.mark.vllm
def test_vllm_backend_on_the_default_model(default_model, tmp_path):
    """As a user types it (a subprocess: vLLM and its workers log to the real stdout, which --json must keep clean)."""
    const = _principles(tmp_path, {"p-one": [True, True]})
    res = subprocess.run([sys.executable, "-m", "rlaif", "constitution", "test", str(const), "--json", "--quiet", "--min-pass", "0",
                          "--kv-cache-gib", "0.25", "--max-model-len", "2048", "--dtype", "float32"],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(res.stdout)  # vLLM's own log lines went to stderr: stdout is the JSON document
    assert rep["judge"]["model"] == default_model and rep["total"]["judged"] == 2
    assert "the default judge, SmolLM2-135M-Instruct, does not judge content" in res.stderr
