"""``rlaif constitution audit`` against oracle judges with injected biases.

Each oracle adds one known bias (the slot, a neutral sentence, markdown, its own model's
wording) to a judge of content whose strength varies from pair to pair. The injected probe
must show the injected value and every other bias probe 0 (paired differences cancel what pairs
share), on test cases and on a labelled run. A seeded simulation with a noisy judge checks that
the intervals cover the true shift about as often as their level says, the cut probe on a run
included (where choosing the better answer from the judge's own verdict could fake a drop).
Then the card, the report section, exit codes and the backends.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fixtures_server import ORACLE_MARKER, OracleServer
from judge_oracles import ProbeOracle, paraphraser
from oracles import MARKER, content_oracle

from rlaif.cli import main
from rlaif.constitution import load_constitution
from rlaif.pipeline import audit_probes as probes
from rlaif.pipeline.audit import AuditItem, measure, summarise
from rlaif.pipeline.constitution_test import REQUESTS_FAILED_EXIT, case_settings
from rlaif.pipeline.diagnostics import STRICT_EXIT

BIAS = ("swap", "pad", "markdown")


def test_probe_texts():
    text = "Pack water. Bring a map (a paper one!) and boots. Tell someone where you go."
    assert probes.sentences(text) == ["Pack water.", "Bring a map (a paper one!)", "and boots.", "Tell someone where you go."]
    assert probes.cut_last_sentence(text) == "Pack water. Bring a map (a paper one!) and boots."
    assert probes.cut_last_sentence("One sentence only.") is None
    assert probes.pad("Pack water.") == "Pack water. The reply ends here."
    md = probes.markdown(text)
    assert md == "**Pack water.**\n- Bring a map (a paper one!)\n- and boots.\n- Tell someone where you go."
    assert probes.plain(md) == text == probes.plain(text)
    assert probes.plain("# Title\n1. first\n* `second`") == "Title first second"
    for ch in ".!?":  # the same sentences, the same punctuation, rendered either way
        assert md.count(ch) == probes.plain(md).count(ch)


def _cases_constitution(folder: Path, marker: str = MARKER, n: int = 8) -> Path:
    """Two principles with n cases each. The better answer holds the marker in every sentence
    (two or three of them, so cutting the last one loses a marker); the worse holds none."""
    (folder / "principles").mkdir(parents=True)
    (folder / "constitution").mkdir()
    for pid in ("p-one", "p-two"):
        tests = []
        for i in range(n):
            better = f"Take the {marker} path {i}. The {marker} sign points east." + (f" Follow the {marker} river." if i % 3 == 0 else "")
            worse = f"Go any way you like {i}. It will be fine, trust me on this one."
            a, b = (better, worse) if i % 2 == 0 else (worse, better)
            tests.append({"prompt": f"Which way, {pid} {i}?", "response_a": a, "response_b": b, "better": "A" if i % 2 == 0 else "B"})
        (folder / "principles" / f"{pid}.yaml").write_text(yaml.safe_dump({
            "id": pid, "title": pid, "tags": ["t"], "critique": "Critique it.", "revision": "Revise it.",
            "comparison": f"Which response is better for {pid}?", "tests": tests}, sort_keys=False))
    (folder / "constitution" / "tc.yaml").write_text(yaml.safe_dump({"name": "tc", "principles": [{"tag": "t"}]}))
    return folder / "constitution" / "tc.yaml"


def _engines(monkeypatch, judge):
    """The fake backend: paraphrasers for the policy models m1 and m2, ``judge`` for anything else."""
    import rlaif.engine.fake

    by_name = {"m1": paraphraser("Indeed,"), "m2": paraphraser("Well,")}
    monkeypatch.setattr(rlaif.engine.fake, "FakeEngine", lambda model=None, **kw: by_name.get(model, judge))


def _audit(monkeypatch, capsys, argv, judge):
    _engines(monkeypatch, judge)
    code = main(["constitution", "audit", *map(str, argv), "--backend", "fake", "--quiet", "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else None), out.err


def _contains(st, value, tol=1e-9):
    return st["lo"] - tol <= value <= st["hi"] + tol


INJECTED = [  # (probe, oracle settings, injected shift in log-odds)
    ("swap", {"position": 0.75}, 1.5),  # the first slot's pull, seen from both slots: 2 x 0.75
    ("pad", {"verbose": 0.6}, 0.6),  # one more sentence
    ("markdown", {"markdown": 0.9}, 0.9),
    ("self", {"own": 0.8}, 0.8),
]


@pytest.mark.parametrize("probe,bias,value", INJECTED, ids=[p for p, _, _ in INJECTED])
def test_an_injected_bias_shows_in_its_probe_and_nowhere_else(tmp_path, monkeypatch, capsys, probe, bias, value):
    const = _cases_constitution(tmp_path)
    judge = ProbeOracle(content=2.0, item_sd=0.7, **bias)
    code, card, err = _audit(monkeypatch, capsys, [const, "--policy-models", "m1", "m2"], judge)
    assert code == 0, err
    for where in [card["overall"], *card["by_principle"].values()]:
        st = where[probe]
        assert st["mean"] == pytest.approx(value, abs=1e-9) and _contains(st, value) and st["flagged"]
        for other in (*BIAS, "self"):
            if other != probe:
                assert _contains(where[other], 0.0) and where[other]["mean"] == pytest.approx(0.0, abs=1e-9), other
                assert not where[other]["flagged"]
        # the better answer lost a marked sentence: its preference drops by the pair's content strength
        assert where["cut"]["mean"] < -1.0 and where["cut"]["hi"] < 0 and not where["cut"]["flagged"]
    assert card["overall"][probe]["n"] == 16 and len(card["flags"]) == 3  # overall and both principles
    assert card["probes"]["self"]["models"] == ["m1", "m2"]
    assert card["source"] == {"kind": "test cases", "cases": 16, "principles": ["p-one", "p-two"]}


def test_a_content_judge_shows_no_bias_and_a_drop(tmp_path, monkeypatch, capsys):
    const = _cases_constitution(tmp_path)
    code, card, err = _audit(monkeypatch, capsys, [const, "--out", tmp_path / "card"], ProbeOracle(content=2.0, item_sd=0.7))
    assert code == 0 and card["flags"] == []
    assert all(card["overall"][p]["mean"] == pytest.approx(0.0, abs=1e-9) for p in BIAS) and "self" not in card["overall"]
    # cutting the last sentence of the better answer removes one marker: the drop is the content strength
    assert card["overall"]["cut"]["mean"] == pytest.approx(-2.0, abs=0.7 * 3)
    assert json.loads((tmp_path / "card" / "judge_card.json").read_text()) == card
    # a judge that reads nothing is flagged for not noticing the cut
    code, card, err = _audit(monkeypatch, capsys, [const, "--strict"], ProbeOracle(content=0.0))
    assert code == STRICT_EXIT and any("cut" in f and "barely notices" in f for f in card["flags"])


def _coverage(judge_kw, items, truth, reps, level=0.95):
    const = load_constitution("default")
    hits = {p: 0 for p in truth}
    for rep in range(reps):
        m = measure(ProbeOracle(noise_seed=rep, **judge_kw), const, items, case_settings(), seed=rep)
        s = summarise(m, level)
        for p, value in truth.items():
            hits[p] += s["overall"][p]["lo"] <= value <= s["overall"][p]["hi"]
    return {p: h / reps for p, h in hits.items()}


def test_intervals_cover_the_true_shift_at_their_level():
    """Seeded simulation: a judge with per-request Gaussian noise (sd 0.8 log-odds) and a slot pull
    of 0.4 on 6 pairs. The t intervals of the swap (truth 0.8), pad (0) and, on a run, cut
    (truth 0: this judge reads no content) probes cover the truth in about 95% of 400 repetitions.
    A normal (z) interval would cover about 89% at n = 6; picking the run's better answer from
    the same requests the cut is measured on would make the cut look like a drop."""
    items = [AuditItem(f"r{i}|no-fabrication", f"r{i}", "no-fabrication", ({"role": "user", "content": f"q{i}"},),
                       f"First point {i}. Second point. Third point.", f"Other view {i}. More of it. And more.", None)
             for i in range(6)]
    cover = _coverage({"content": 0.0, "position": 0.4, "noise_sd": 0.8}, items, {"swap": 0.8, "pad": 0.0, "cut": 0.0}, 400)
    for probe, rate in cover.items():
        assert 0.92 <= rate <= 0.98, (probe, rate)


def _label_run(tmp_path, monkeypatch, n=10):
    """A labelled run (rlaif label, fake backend, a content judge) of pairs whose better answer holds the marker."""
    import rlaif.engine.fake

    rows = []
    for i in range(n):
        good = f"Take the {MARKER} path {i}. The {MARKER} sign points east."
        bad = f"Go any way you like {i}. It will be fine, trust me."
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        rows.append({"id": f"x{i}", "prompt": f"Which way {i}?", "response_a": a, "response_b": b})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(rlaif.engine.fake, "FakeEngine", lambda model=None, **kw: content_oracle(2.0))
    run = tmp_path / "run"
    assert main(["label", "--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(run), "--backend", "fake", "--ensemble", "2",
                 "--feedback-model", "judge-x", "--quiet"]) == 0
    return run


def test_audit_of_a_labelled_run_writes_its_judge_card(tmp_path, monkeypatch, capsys):
    run = _label_run(tmp_path, monkeypatch)
    manifest = (run / "manifest.json").read_bytes()
    capsys.readouterr()
    monkeypatch.setenv("RLAIF_REPORT", "1")
    code, card, err = _audit(monkeypatch, capsys, [run, "--policy-models", "m1", "m2"], ProbeOracle(content=2.0, position=0.5))
    assert code == 0, err
    assert (run / "manifest.json").read_bytes() == manifest  # the card is its own file, never the fingerprinted manifest
    assert json.loads((run / "judge_card.json").read_text()) == card
    assert card["source"]["kind"] == "run" and card["source"]["pairs"] == 10 and card["counts"]["items"] == 20
    assert card["judge"]["model"] == "judge-x"  # the run's own judge, unless --feedback-model says otherwise
    assert card["overall"]["swap"]["mean"] == pytest.approx(1.0) and card["overall"]["swap"]["n"] == 10  # pairs, not items
    assert card["overall"]["self"]["mean"] == pytest.approx(0.0, abs=1e-9)
    # on a run the better answer is the judge's order-(a, b) pick, and the cut is measured in the other order
    assert card["overall"]["cut"]["mean"] == pytest.approx(-2.0)
    html = (run / "report.html").read_text()
    assert "Judge audit" in html and "swap" in html and "The reply ends here." in html
    # a card made for an earlier run in the folder is called out
    from rlaif.report import judge_card_section
    from rlaif.report.folders import RunFolder

    assert judge_card_section.build(RunFolder(run))["warnings"] == []
    m = json.loads(manifest)
    m["fingerprint"] = "0" * 64
    (run / "manifest.json").write_text(json.dumps(m))
    assert "made for an earlier run" in judge_card_section.build(RunFolder(run))["warnings"][0]


def test_audit_exit_codes(tmp_path, monkeypatch, capsys):
    from rlaif.engine.base import OptionScores
    from rlaif.engine.fake import FakeEngine

    class Broken(FakeEngine):
        def score_options(self, requests, options, desc=""):
            return [OptionScores((), 0, error="server gone", retryable=True) for _ in requests]

    const = _cases_constitution(tmp_path)
    code, card, err = _audit(monkeypatch, capsys, [const], Broken())
    assert code == REQUESTS_FAILED_EXIT and "judge requests failed (server gone)" in err
    code, card, err = _audit(monkeypatch, capsys, [const, "--strict"], ProbeOracle(content=2.0, position=1.0))
    assert code == STRICT_EXIT and card["overall"]["swap"]["flagged"]
    for bad, says in (([const, "--limit", "0"], "--limit must be >= 1"), ([tmp_path], "no principle or constitution")):
        code, card, err = _audit(monkeypatch, capsys, bad, ProbeOracle())
        assert code == 2 and says in err and "Traceback" not in err, err


# ------------------------------------------------------------------ backends


def test_openai_backend(tmp_path, monkeypatch, capsys):
    const = _cases_constitution(tmp_path, marker=ORACLE_MARKER, n=4)
    with OracleServer(("judge-y", "m1", "m2")) as srv:
        code = main(["constitution", "audit", str(const), "--backend", "openai", "--base-url", srv.url, "--feedback-model", "judge-y",
                     "--policy-models", "m1", "m2", "--quiet", "--json"])
        out = capsys.readouterr()
        assert code == 0, out.err
        score, gen = srv.requests("score"), srv.requests("generate")
    card = json.loads(out.out)
    assert {b["model"] for b in score} == {"judge-y"} and {b["model"] for b in gen} == {"m1", "m2"}
    assert all(card["overall"][p]["mean"] == pytest.approx(0.0, abs=1e-9) for p in BIAS)
    # the server's judge is binary (0.9 for the marked answer): a cut that leaves a marker changes nothing
    assert card["overall"]["cut"]["mean"] <= 0 and card["judge"]["answered_by"] == "judge-y"


def test_transformers_backend_on_the_default_model(default_model, tmp_path, monkeypatch, capsys):
    const = _cases_constitution(tmp_path, n=1)
    code = main(["constitution", "audit", "p-one", "--constitution", str(const), "--backend", "transformers", "--dtype", "float32",
                 "--quiet", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    card = json.loads(out.out)
    assert card["judge"]["model"] == default_model and card["counts"]["items"] == 1 and card["counts"]["failed_requests"] == 0


@pytest.mark.vllm
def test_vllm_backend_on_the_default_model(default_model, vllm_engine, tmp_path, monkeypatch, capsys):
    """The audit on the session's shared in-process vLLM engine (the command line builds it through
    create_engine; starting vLLM from the command line is tested once, for rlaif constitution test)."""
    import rlaif.engine

    class Shared:
        def __init__(self, engine):
            self.engine, self.model = engine, engine.model

        def score_options(self, *a, **kw):
            return self.engine.score_options(*a, **kw)

        def close(self):
            pass  # the session's engine outlives the command

    asked = []
    monkeypatch.setattr(rlaif.engine, "create_engine", lambda model, cfg, **kw: asked.append((model, cfg.backend)) or Shared(vllm_engine))
    const = _cases_constitution(tmp_path, n=1)
    code = main(["constitution", "audit", "p-one", "--constitution", str(const), "--quiet", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    card = json.loads(out.out)
    assert asked == [(default_model, "vllm")] and card["counts"]["failed_requests"] == 0 and card["overall"]["swap"]["n"] == 1
