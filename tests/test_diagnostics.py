"""Judge diagnostics: pure functions against hand-computed values and an independent
implementation (statistics.correlation). Length control: tests/test_length_control.py."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from rlaif.pipeline.diagnostics import (
    format_diagnostics, judge_diagnostics, judge_problems, length_feature, length_split_agreement, log_odds,
    longer_chosen_rate, order_consistency, pearson, position_bias, sigmoid, warning_line,
)
from rlaif.pipeline.judge import Pair, PairLabel, likert, margin

Q = ({"role": "user", "content": "q"},)


def _label(pid, p_a, slots, flags=(), error=None):
    return PairLabel(pid, p_a, {"x": p_a}, 1.0, 0.5, likert(p_a), margin(p_a), tuple(flags), error=error, slot_probs=slots)


def test_order_consistency_and_position_bias_by_hand():
    slots = [(0.8, 0.3), (0.8, 0.8), (0.4, 0.7), (0.6,)]
    # (0.8, 0.3): A wins, then 1 - 0.3 = 0.7 -> x wins again: agree
    # (0.8, 0.8): x wins, then 0.2 -> y wins: disagree (the slot decided)
    # (0.4, 0.7): y wins, then 0.3 -> y wins: agree;  (0.6,) has one order: skipped
    share, n = order_consistency(slots)
    assert (share, n) == (pytest.approx(2 / 3), 3)
    # mean of all seven P(first slot): (0.8+0.3+0.8+0.8+0.4+0.7+0.6) / 7 = 4.4 / 7
    assert position_bias(slots) == pytest.approx(4.4 / 7, rel=1e-12)
    assert order_consistency([(0.6,)]) == (None, 0) and position_bias([]) is None


def test_pearson_by_hand_and_against_statistics():
    # x = 1, 2, 3; y = 2, 4, 7: S_xy = 5, S_xx = 2, S_yy = 114/9  ->  r = 5 / sqrt(2 * 114 / 9)
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(228 / 9), rel=1e-12)
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=50).tolist(), rng.normal(size=50).tolist()
    assert pearson(xs, ys) == pytest.approx(statistics.correlation(xs, ys), rel=1e-9)
    assert pearson([1, 1, 1], [1, 2, 3]) is None and pearson([1, 2], [1, 2]) is None
    with pytest.raises(ValueError, match="equal lengths"):
        pearson([1, 2, 3], [1, 2])


def test_length_feature_and_longer_chosen_by_hand():
    assert length_feature("abc", "a") == pytest.approx(math.log(4 / 2))
    assert length_feature("", "") == 0.0
    # a longer & a chosen: longer; a longer & b chosen: shorter; tie: skipped; equal lengths: skipped
    rate, n = longer_chosen_rate([("a", 10, 5), ("b", 10, 5), (None, 10, 5), ("a", 4, 4), ("b", 3, 9)])
    assert (rate, n) == (pytest.approx(2 / 3), 3)
    assert longer_chosen_rate([(None, 1, 2)]) == (None, 0)


def test_length_split_agreement_by_hand():
    # better answer longer: hit, hit, miss -> 2/3; shorter: miss -> 0; equal: hit (own stratum)
    r = length_split_agreement([(10, 5, True), (8, 2, True), (6, 3, False), (2, 9, False), (4, 4, True)])
    assert r["longer"] == {"n": 3, "agreement": pytest.approx(2 / 3)}
    assert r["shorter"] == {"n": 1, "agreement": 0.0}
    assert r["equal"] == {"n": 1, "agreement": 1.0}
    assert r["length_controlled"] == pytest.approx(1 / 3)  # (2/3 + 0) / 2
    assert length_split_agreement([(10, 5, True)])["length_controlled"] is None


def test_judge_diagnostics_of_a_small_run_by_hand():
    pairs = [Pair("p0", Q, "aaaa", "bb"), Pair("p1", Q, "a", "bbb"), Pair("p2", Q, "aa", "bbbbbb"),
             Pair("same", Q, "s", "s"), Pair("fail", Q, "x", "yy")]
    labels = [
        _label("p0", 0.7, {"x": (0.9, 0.5)}),   # orders: x wins, then 0.5 -> x wins (>= 0.5): agree
        _label("p1", 0.5, {"x": (0.8, 0.8)}, flags=("tie",)),  # disagree; a tie
        _label("p2", 0.2, {"x": (0.3, 0.9)}),   # y wins, then 0.1 -> y wins: agree
        _label("same", 0.5, {}, flags=("identical", "tie")),
        _label("fail", 0.5, {}, error="boom"),
    ]
    d = judge_diagnostics(pairs, labels)
    assert d["pairs"] == 3 and d["comparisons"] == 3 and d["comparisons_both_orders"] == 3
    assert d["order_consistency"] == pytest.approx(2 / 3)
    assert d["position_bias"] == pytest.approx((0.9 + 0.5 + 0.8 + 0.8 + 0.3 + 0.9) / 6)
    xs = [math.log(5 / 3), math.log(2 / 4), math.log(3 / 7)]
    ys = [math.log(0.7 / 0.3), 0.0, math.log(0.2 / 0.8)]
    assert d["length_correlation"] == pytest.approx(statistics.correlation(xs, ys), rel=1e-9)
    # p0: a longer, a chosen (longer); p2: b longer, b chosen (longer); p1 is a tie
    assert (d["longer_chosen_rate"], d["longer_chosen_n"]) == (1.0, 2)
    assert d["ties"] == 1 and d["tie_rate"] == pytest.approx(1 / 3)
    lines = format_diagnostics(d)
    assert "orders agree 67% of 3 comparisons" in lines[0] and "longer chosen 100% of 2" in lines[1]


def test_warning_only_for_an_uninformative_judge_with_enough_pairs():
    good = {"pairs": 40, "comparisons_both_orders": 160, "order_consistency": 0.9, "length_correlation": 0.1}
    assert judge_problems(good) == [] and warning_line(good) is None
    slot_judge = {**good, "order_consistency": 0.0}
    line = warning_line(slot_judge)
    assert line.count("\n") == 0 and "0% of 160 comparisons" in line and "--feedback-model" in line
    assert "--length-control" not in line
    long_judge = {**good, "length_correlation": 0.62}
    line = warning_line(long_judge)
    assert "r = +0.62" in line and "longer" in line and "--length-control" in line
    assert warning_line(long_judge, length_controlled=True) is None  # the labels no longer carry it
    assert "position and length" in warning_line({**long_judge, "order_consistency": 0.2}, length_controlled=False)
    assert warning_line({**long_judge, "pairs": 12}) is None  # 12 pairs: a correlation that size is noise
    assert warning_line({**slot_judge, "pairs": 5}) is None


def test_preference_lengths_by_hand():
    from rlaif.pipeline.diagnostics import format_preference_lengths, preference_lengths

    def row(c, r, flags=()):
        return {"chosen": [{"role": "assistant", "content": c}], "rejected": [{"role": "assistant", "content": r}], "flags": list(flags)}

    rows = [row("a b c d", "a"), row("a", "a b c"), row("x y", "x y"), row("one two three four five six", "one"),
            row("t", "t t t t t t t t", flags=["tie"])]
    s = preference_lengths(rows, lambda t: len(t.split()), "words")
    # diffs (chosen - rejected), the tie left out: 3, -2, 0, 5 -> sorted -2, 0, 3, 5
    assert s["pairs"] == 4 and s["unit"] == "words"
    assert s["chosen_mean"] == pytest.approx((4 + 1 + 2 + 6) / 4) and s["rejected_mean"] == pytest.approx((1 + 3 + 2 + 1) / 4)
    assert s["chosen_longer"] == 0.5 and s["equal"] == 0.25
    assert s["diff_p50"] == pytest.approx(np.percentile([3, -2, 0, 5], 50))
    assert s["diff_p10"] == pytest.approx(np.percentile([3, -2, 0, 5], 10))
    assert s["diff_p90"] == pytest.approx(np.percentile([3, -2, 0, 5], 90))
    assert "chosen longer in 50% of 4 pairs" in format_preference_lengths(s)
    assert preference_lengths([], len, "words") == {"unit": "words", "pairs": 0}


def test_generate_and_label_report_preference_lengths(tmp_path, repo_root, capsys):
    from rlaif.cli import main

    pairs = tmp_path / "pairs.jsonl"
    import json

    pairs.write_text("\n".join(json.dumps({"id": f"p{i}", "prompt": f"q{i}", "response_a": "short",
                                           "response_b": "a much longer answer than that"}) for i in range(6)) + "\n")
    assert main(["label", "--pairs", str(pairs), "--out", str(tmp_path / "l"), "--backend", "fake", "--quiet"]) == 0
    out = capsys.readouterr().out
    man = json.loads((tmp_path / "l" / "manifest.json").read_text())
    s = man["preference_lengths"]
    assert s["unit"] == "words" and s["pairs"] == man["counts"]["preference_rows"]
    assert "lengths" in out and "words (mean)" in out
    assert main(["generate", "--prompts", str(repo_root / "prompts" / "rlaif-prompts.jsonl"), "--limit", "4", "--rounds", "1",
                 "--out", str(tmp_path / "g"), "--backend", "fake", "--quiet"]) == 0
    man = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert man["preference_lengths"]["pairs"] == man["counts"]["preference_rows"]
    assert "lengths " in capsys.readouterr().out
