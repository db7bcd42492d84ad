"""The labeller end to end against oracle judges (tests/oracles.py): a judge that prefers
content, one that prefers slot A, one that prefers length. Each test knows which response
should win, so a labeller that returned 0.5, swapped A and B, or let the slot or the length
decide, fails here. Covered: label_pairs in both orders and one, the ensemble, ``rlaif label``
(label_run and the command line), ``rlaif generate --label`` (generate and the command line),
diagnostics, warnings and ``--strict``, and ``--length-control`` over chunked and resumed runs.
"""

from __future__ import annotations

import json
import math
import re

import datasets
import pytest

from oracles import MARKER, OracleEngine, content_oracle, length_oracle, marker_script, position_oracle
from rlaif.constitution import load_constitution
from rlaif.pipeline.diagnostics import STRICT_EXIT
from rlaif.pipeline.judge import LabelSettings, Pair, label_pairs, likert
from rlaif.pipeline.label import label_run

CONST = load_constitution("default")
Q = "What should I pack for a day hike?"


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def marked_pairs(n: int = 8) -> list[Pair]:
    """Pairs whose better response (holding the marker) alternates between a and b; both
    responses have the same length, so only content can decide."""
    out = []
    for i in range(n):
        good, bad = f"{MARKER} pack water and a map {i:03d}", f"just go, it will be fine {i:03d}"
        bad += "." * (len(good) - len(bad))
        assert len(good) == len(bad)
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        out.append(Pair(f"m{i}", ({"role": "user", "content": f"{Q} ({i})"},), a, b, "a" if i % 2 == 0 else "b"))
    return out


def balanced_pairs(n: int = 40) -> list[Pair]:
    """A length-balanced set: the better (marked) response is the longer one in half the pairs
    and the shorter one in the other half, at length ratios from about 2 to 8, with the better
    response in slot a for half of each."""
    out = []
    for i in range(n):
        short = f"{i} " + "ok " * 5
        long_ = f"{i} " + "and more detail " * (3 + i % 7)
        good_is_long, a_good = i % 2 == 0, i % 4 < 2
        good, bad = (MARKER + " " + long_, short) if good_is_long else (MARKER + " " + short, long_)
        a, b = (good, bad) if a_good else (bad, good)
        out.append(Pair(f"b{i}", ({"role": "user", "content": f"{Q} [{i}]"},), a, b, "a" if a_good else "b"))
    return out


# ------------------------------------------------------------------ label_pairs


@pytest.mark.parametrize("ensemble", [1, 4])
def test_content_oracle_decides_in_both_orders(ensemble):
    engine = content_oracle(2.0)
    labels = label_pairs(engine, CONST, marked_pairs(), LabelSettings(ensemble=ensemble))
    for pair, lab in zip(marked_pairs(), labels):
        assert lab.chosen == pair.label
        # logit P(A) = +-2 in both orders and every principle: P(a) = sigmoid(+-2) exactly
        assert lab.p_a == pytest.approx(sig(2.0) if pair.label == "a" else sig(-2.0), rel=1e-9)
        assert lab.chosen_prob == pytest.approx(sig(2.0), rel=1e-9)
        assert lab.likert == (8 if pair.label == "a" else 1) and lab.margin == 3.0
        assert lab.order_agreement == 1.0 and len(lab.per_principle) == ensemble
    # every comparison was shown in both orders: each response sat in slot A once per principle
    assert len(engine.scored) == 8 * ensemble * 2
    assert sum(MARKER in a for a, _ in engine.scored) == 8 * ensemble


def test_position_bias_on_top_of_content_cancels_in_both_orders_only():
    pairs = marked_pairs()
    engine = OracleEngine(content=1.0, position=3.0)
    both = label_pairs(engine, CONST, pairs, LabelSettings(ensemble=2))
    # both orders: P(x) = (sigmoid(3 + c) + 1 - sigmoid(3 - c)) / 2 with c = +-1 -> the content's side
    expected = 0.5 * (sig(4.0) + 1 - sig(2.0))
    for pair, lab in zip(pairs, both):
        assert lab.chosen == pair.label
        assert lab.p_a == pytest.approx(expected if pair.label == "a" else 1 - expected, rel=1e-9)
        assert lab.order_agreement == 0.0  # the slot won every single order
    one = label_pairs(OracleEngine(content=1.0, position=3.0), CONST, pairs, LabelSettings(ensemble=2, both_orders=False))
    assert [l.chosen for l in one] == ["a"] * 8  # one order: the slot decides, as documented


def test_weak_content_preference_sets_likert_and_margin():
    labels = label_pairs(content_oracle(1.0), CONST, marked_pairs(2), LabelSettings(ensemble=1))
    # sigmoid(1) = 0.731: Likert 1 + int(0.731 * 8) = 6 for a; margin |6 - 4.5| - 0.5 = 1
    assert [l.likert for l in labels] == [6, likert(sig(-1.0))] == [6, 3]
    assert [l.margin for l in labels] == [1.0, 1.0]


# ------------------------------------------------------------------ rlaif label


def test_label_run_follows_the_content_oracle_across_chunks(tmp_path):
    pairs = marked_pairs(10)
    m = label_run(pairs, str(tmp_path / "l"), CONST, LabelSettings(), lambda: content_oracle(2.0), "oracle",
                  chunk_size=3, log=lambda s: None, show_progress=False)
    ds = datasets.load_from_disk(str(tmp_path / "l" / "preferences"))
    assert len(ds) == 10
    for row in ds:
        assert MARKER in row["chosen"][0]["content"] and MARKER not in row["rejected"][0]["content"]
        assert row["chosen_prob"] == pytest.approx(sig(2.0), rel=1e-6)
        assert row["likert"] == 8 and row["margin"] == 3.0
        assert row["label_principle_probs"] == [pytest.approx(sig(2.0), rel=1e-6)] * 4
    assert m["agreement"]["overall"]["agreement"] == 1.0
    d = m["diagnostics"]
    assert d["order_consistency"] == 1.0 and d["position_bias"] == pytest.approx(0.5, abs=1e-12)
    assert d["comparisons_both_orders"] == 40 and d["tie_rate"] == 0.0


def _cli(monkeypatch, capsys, argv, engine_factory):
    """Run the real command line in-process with the fake backend replaced by an oracle."""
    import rlaif.engine.fake
    from rlaif.cli import main

    monkeypatch.setattr(rlaif.engine.fake, "FakeEngine", lambda model=None, **kw: engine_factory())
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _write_pairs(path, pairs):
    path.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt[0]["content"], "response_a": p.response_a,
                                        "response_b": p.response_b, "label": p.label}) + "\n" for p in pairs))
    return str(path)


def test_label_command_with_the_content_oracle(tmp_path, monkeypatch, capsys):
    src = _write_pairs(tmp_path / "pairs.jsonl", marked_pairs(12))
    code, out, err = _cli(monkeypatch, capsys, ["label", "--pairs", src, "--out", str(tmp_path / "o"), "--backend", "fake",
                                                "--quiet", "--chunk-size", "5"], lambda: content_oracle(2.0))
    assert code == 0, err
    ds = datasets.load_from_disk(str(tmp_path / "o" / "preferences"))
    assert len(ds) == 12 and all(MARKER in r["chosen"][0]["content"] for r in ds)
    assert all(r["chosen_prob"] == pytest.approx(sig(2.0), rel=1e-6) for r in ds)
    assert "agreement with reference labels: 100.0% of 12 pairs" in out
    assert "orders agree 100% of 48 comparisons" in out and "warning" not in err


def test_label_command_warns_about_a_position_judge_and_strict_fails(tmp_path, monkeypatch, capsys):
    src = _write_pairs(tmp_path / "pairs.jsonl", marked_pairs(12))
    argv = ["label", "--pairs", src, "--out", str(tmp_path / "o"), "--backend", "fake", "--quiet"]
    code, out, err = _cli(monkeypatch, capsys, argv, lambda: position_oracle(2.0))
    assert code == 0
    warnings = [l for l in err.splitlines() if "warning" in l]
    assert len(warnings) == 1 and "agree on only 0% of 48 comparisons" in warnings[0] and "--feedback-model" in warnings[0]
    assert "P(first slot) 0.88" in out  # sigmoid(2)
    # every pair is an exact tie: no side is chosen, nothing enters the dataset
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["counts"]["preference_rows"] == 0
    code, _, err = _cli(monkeypatch, capsys, argv + ["--strict"], lambda: position_oracle(2.0))
    assert code == STRICT_EXIT and "warning" in err


def test_label_command_length_judge_and_length_control(tmp_path, monkeypatch, capsys):
    """A judge with a weak content preference and a strong length bias, on a length-balanced
    set: it agrees with the content half the time; with --length-control, every time."""
    pairs = balanced_pairs(40)
    src = _write_pairs(tmp_path / "pairs.jsonl", pairs)
    judge = lambda: OracleEngine(content=1.0, length=2.5)  # noqa: E731
    base = ["label", "--pairs", src, "--backend", "fake", "--quiet", "--chunk-size", "16"]
    code, out, err = _cli(monkeypatch, capsys, base + ["--out", str(tmp_path / "raw")], judge)
    raw = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert raw["agreement"]["overall"]["agreement"] == 0.5
    by_len = raw["agreement"]["by_length"]
    assert by_len["longer"]["agreement"] == 1.0 and by_len["shorter"]["agreement"] == 0.0
    assert by_len["length_controlled"] == 0.5 and "length-controlled agreement with reference labels: 50.0%" in out
    assert raw["diagnostics"]["length_correlation"] > 0.9 and raw["diagnostics"]["longer_chosen_rate"] == 1.0
    assert "--length-control" in err and "r = +0.9" in err

    code, out, err = _cli(monkeypatch, capsys, base + ["--out", str(tmp_path / "lc"), "--length-control", "--strict"], judge)
    lc = json.loads((tmp_path / "lc" / "manifest.json").read_text())
    assert code == 0 and "warning" not in err  # the length preference is out of the labels; the orders agree
    assert lc["length_control"]["applied"] and lc["length_control"]["coef"] == pytest.approx(2.5, abs=0.3)
    assert lc["agreement"]["overall"]["agreement"] == 1.0 and lc["agreement"]["by_length"]["length_controlled"] == 1.0
    assert abs(lc["length_control"]["after"]["length_correlation"]) < 0.3
    ds = datasets.load_from_disk(str(tmp_path / "lc" / "preferences"))
    assert len(ds) == 40 and all(MARKER in r["chosen"][0]["content"] and "length-controlled" in r["flags"] for r in ds)
    assert re.search(r"length control  \+2\.\d\d \+- 0\.\d\d \(z \+\d+\.\d\) log-odds per log length ratio removed", out)
    assert re.search(r"after: r [+-]0\.0\d", out)


def test_pure_length_judge_gives_no_labels_after_length_control(tmp_path):
    pairs = balanced_pairs(40)
    m = label_run(pairs, str(tmp_path / "l"), CONST, LabelSettings(ensemble=1, length_control=True, tie_band=0.01),
                  lambda: length_oracle(3.0), "oracle", log=lambda s: None, show_progress=False)
    assert m["length_control"]["coef"] == pytest.approx(3.0, rel=1e-6)
    assert m["counts"]["ties"] == 40 and m["counts"]["preference_rows"] == 0


def test_single_order_length_control_also_removes_the_position(tmp_path):
    """One order: P(a) is P(slot A), so the fit's intercept takes the position bias too."""
    pairs = balanced_pairs(40)
    judge = lambda: OracleEngine(content=1.0, position=1.5, length=2.0)  # noqa: E731
    settings = LabelSettings(ensemble=1, both_orders=False)
    raw = label_run(pairs, str(tmp_path / "raw"), CONST, settings, judge, "o", log=lambda s: None, show_progress=False)
    assert raw["agreement"]["overall"]["agreement"] < 0.8
    lc = label_run(pairs, str(tmp_path / "lc"), CONST, LabelSettings(ensemble=1, both_orders=False, length_control=True),
                   judge, "o", log=lambda s: None, show_progress=False)
    assert lc["length_control"]["intercept"] == pytest.approx(1.5, abs=0.3)
    assert lc["agreement"]["overall"]["agreement"] == 1.0


def test_length_control_same_result_chunked_resumed_and_refinalised(tmp_path):
    pairs = balanced_pairs(40)
    judge = lambda: OracleEngine(content=1.0, length=2.5)  # noqa: E731
    settings = LabelSettings(ensemble=2, length_control=True)
    quiet = {"log": lambda s: None, "show_progress": False}
    one = label_run(pairs, str(tmp_path / "one"), CONST, settings, judge, "o", chunk_size=64, **quiet)

    class Dies(OracleEngine):
        """Scores two chunks, then the process 'dies'."""
        def score_options(self, requests, options, desc=""):
            if desc.startswith("chunk 3/"):
                raise KeyboardInterrupt
            return super().score_options(requests, options, desc)

    with pytest.raises(KeyboardInterrupt):
        label_run(pairs, str(tmp_path / "chunked"), CONST, settings, lambda: Dies(content=1.0, length=2.5), "o", chunk_size=7, **quiet)
    resumed = label_run(pairs, str(tmp_path / "chunked"), CONST, settings, judge, "o", chunk_size=7, **quiet)
    assert resumed["length_control"]["coef"] == pytest.approx(one["length_control"]["coef"], rel=1e-12)
    assert resumed["length_control"]["after"] == one["length_control"]["after"]
    rows = lambda d: [json.loads(l) for l in (tmp_path / d / "labels.jsonl").read_text().splitlines()]  # noqa: E731
    for a, b in zip(rows("one"), rows("chunked")):
        assert a["p_a"] == pytest.approx(b["p_a"], rel=1e-12) and a["judge_p_a"] == pytest.approx(b["judge_p_a"], rel=1e-12)

    # the same folder without length control: rebuilt from the committed scores, no model needed
    logs = []
    plain = label_run(pairs, str(tmp_path / "chunked"), CONST, LabelSettings(ensemble=2), lambda: 1 / 0, "o", chunk_size=7,
                      log=logs.append, show_progress=False)
    assert "already scored" in logs[0] and plain["length_control"] is None
    assert plain["agreement"]["overall"]["agreement"] == 0.5


# ------------------------------------------------------------------ rlaif generate --label


def _marked_initial(prompt: str) -> bool:
    return sum(map(ord, prompt)) % 2 == 0


def _generate_cfg(repo_root, out, **extra):
    from rlaif.pipeline.config import resolve

    flags = {"prompts": str(repo_root / "prompts" / "rlaif-prompts.jsonl"), "out": str(out), "limit": 8, "chunk_size": 3,
             "rounds": 1, "label.enabled": True, **extra}
    return resolve({}, flags, CONST.defaults)


def test_generate_label_follows_the_content_oracle(repo_root, tmp_path):
    from rlaif.pipeline.generate import generate, summary_table

    engine = content_oracle(2.0, script=marker_script(CONST, _marked_initial))
    m = generate(_generate_cfg(repo_root, tmp_path / "g"), CONST, lambda: engine, "m", show_progress=False, log=lambda s: None)
    ds = datasets.load_from_disk(str(tmp_path / "g" / "preferences"))
    assert len(ds) == 8 and m["counts"]["label_pairs"] == 8
    initial_wins = 0
    for row in ds:
        prompt = row["prompt"][-1]["content"]
        assert MARKER in row["chosen"][0]["content"] and MARKER not in row["rejected"][0]["content"]
        # the marked response is the initial one exactly where the script put it there
        assert row["response_ids"][0].endswith(":initial") == _marked_initial(prompt)
        initial_wins += row["response_ids"][0].endswith(":initial")
        assert row["chosen_prob"] == pytest.approx(sig(2.0), rel=1e-6) and row["likert"] == 8 and row["margin"] == 3.0
    assert 0 < initial_wins < 8  # both directions are exercised
    assert m["counts"]["label_revision_preferred"] == 8 - initial_wins
    assert m["diagnostics"]["order_consistency"] == 1.0
    assert "orders agree 100%" in summary_table(m)


def test_generate_label_command_with_oracles(repo_root, tmp_path, monkeypatch, capsys):
    argv = ["generate", "--prompts", str(repo_root / "prompts" / "rlaif-prompts.jsonl"), "--limit", "12", "--rounds", "1",
            "--backend", "fake", "--label", "--quiet"]
    code, out, err = _cli(monkeypatch, capsys, argv + ["--out", str(tmp_path / "c")],
                          lambda: content_oracle(2.0, script=marker_script(CONST, _marked_initial)))
    assert code == 0, err
    ds = datasets.load_from_disk(str(tmp_path / "c" / "preferences"))
    assert len(ds) == 12 and all(MARKER in r["chosen"][0]["content"] for r in ds)
    assert "orders agree 100% of 48 comparisons" in out and "warning" not in err

    code, out, err = _cli(monkeypatch, capsys, argv + ["--out", str(tmp_path / "p"), "--strict"],
                          lambda: position_oracle(2.0, script=marker_script(CONST, _marked_initial)))
    assert code == STRICT_EXIT and "agree on only 0%" in err
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["counts"]["preference_rows"] == 0


def test_generate_length_control_rebuilds_a_finished_run_without_the_model(repo_root, tmp_path):
    from rlaif.pipeline.diagnostics import run_warnings
    from rlaif.pipeline.generate import generate

    engine = content_oracle(2.0, script=marker_script(CONST, _marked_initial))
    quiet = {"show_progress": False, "log": lambda s: None}
    first = generate(_generate_cfg(repo_root, tmp_path / "g"), CONST, lambda: engine, "m", **quiet)
    assert first["length_control"] is None and first["finalise"] == {"length_control": False, "keep_ties": False}
    logs = []
    again = generate(_generate_cfg(repo_root, tmp_path / "g", **{"label.length_control": True}), CONST, lambda: 1 / 0, "m",
                     show_progress=False, log=logs.append)
    assert "building the outputs again" in logs[0] and again["fingerprint"] == first["fingerprint"]
    # 8 pairs are too few to fit: the labels stay the judge's, and the run says so
    assert not again["length_control"]["applied"] and "too few" in again["length_control"]["reason"]
    assert any("was not applied" in w for w in run_warnings(again))
    assert again["counts"]["preference_rows"] == first["counts"]["preference_rows"] == 8
