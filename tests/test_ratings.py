"""From ratings to better labels: ``rlaif calibrate``, ``rlaif label --calibration`` and
``--principle-reliability``, ``rlaif export --prefer human``. Judges with known distortions
(tests/scripted_review.py) label pairs, scripted reviewers rate them through the review server's
real HTTP API, and every command runs through the real entry point."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import datasets
import numpy as np
import pytest

pytest.importorskip("starlette")

from oracles import MARKER, content_oracle  # noqa: E402
from scripted_review import TRIO, PrincipleOracle, Reviewer, ZOracle, prefer_by_z, prefer_marked, sig, write_trio  # noqa: E402
from rlaif.cli import main  # noqa: E402
from rlaif.pipeline.calibrate import Calibration, Observation, calibrated_row, fit_calibration, fit_logistic  # noqa: E402
from rlaif.review.app import create_app  # noqa: E402
from rlaif.review.server import BackgroundServer  # noqa: E402
from rlaif.stats_intervals import ratings_needed, wilson  # noqa: E402

Q = "What should I pack for a day hike?"


def cli(monkeypatch, capsys, argv, engine=None):
    """The real command line in-process; the fake backend's engine replaced by ``engine(model)``."""
    import rlaif.engine.fake

    if engine is not None:
        monkeypatch.setattr(rlaif.engine.fake, "FakeEngine", lambda model=None, **kw: engine(model))
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def write_pairs(path: Path, pairs: list[tuple[str, str, str]]) -> str:
    """(id, response a, response b) -> a pairs file for rlaif label; the reference label names the marked response."""
    path.write_text("".join(json.dumps({"id": pid, "prompt": f"{Q} ({pid})", "response_a": a, "response_b": b,
                                        "label": "a" if MARKER in a else "b"}) + "\n" for pid, a, b in pairs))
    return str(path)


def marked(n: int, extra=lambda i: "") -> list[tuple[str, str, str]]:
    """Pairs of equal length whose better response holds the marker, in slot a for half of them."""
    out = []
    for i in range(n):
        good, bad = f"{MARKER} pack water and a map {i:03d}{extra(i)}", f"just go, it will be fine {i:03d}"
        bad += "." * (len(good) - len(bad))
        out.append((f"m{i}", good, bad) if i % 2 == 0 else (f"m{i}", bad, good))
    return out


def rows_of(run: Path) -> dict[str, dict]:
    return {r["id"]: r for r in (json.loads(x) for x in (run / "preferences.jsonl").read_text().splitlines() if x)}


def text(msgs) -> str:
    return msgs[0]["content"]


# ------------------------------------------------------------------ intervals and the fit


def test_wilson_interval_matches_published_values_and_covers():
    # Newcombe (1998), Table I: 81 of 263 -> 0.2553-0.3662; 15 of 148 -> 0.0624-0.1605; 0 of 10 -> 0-0.2775
    for k, n, lo, hi in [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 10, 0.0, 0.2775)]:
        got = wilson(k, n)
        assert got == (pytest.approx(lo, abs=6e-5), pytest.approx(hi, abs=6e-5))
    # coverage by simulation at p = 0.8, n = 50: close to 95%
    rng = np.random.default_rng(0)
    ks = rng.binomial(50, 0.8, size=20000)
    cover = np.mean([lo <= 0.8 <= hi for lo, hi in (wilson(int(k), 50) for k in ks)])
    assert 0.93 < cover < 0.97
    # +-5 points at p = 0.5: the textbook z^2 / (4 E^2) = 384.1 ignores the z^2/n terms; Wilson needs slightly fewer
    n = ratings_needed(0.5, 0.05)
    assert 370 < n <= 385
    lo, hi = wilson(n // 2, n)
    lo2, hi2 = wilson((n - 2) // 2, n - 2)
    assert (hi - lo) / 2 <= 0.05 + 1e-3 and (hi2 - lo2) / 2 > 0.0499


def test_logistic_fit_recovers_a_known_model_and_beats_the_raw_probabilities():
    """Humans prefer the chosen response with logit = -1 + logit(P) / 3 + 1.0 * o: the judge is
    three times too confident, and right less often when its orders disagreed."""
    rng = random.Random(1)
    obs = []
    for i in range(1500):
        cp = rng.uniform(0.5, 0.995)
        o = rng.choice([0.0, 0.5, 1.0])
        truth = sig(-1.0 + math.log(cp / (1 - cp)) / 3 + 1.0 * o)
        obs.append(Observation(f"p{i}", cp, o, float(rng.random() < truth)))
    cal, oof = fit_calibration(obs, "hard", "j", "c")
    a, b, c = cal.coef
    assert a == pytest.approx(-1.0, abs=0.3) and b == pytest.approx(1 / 3, abs=0.1) and c == pytest.approx(1.0, abs=0.3)
    cv = cal.cv
    assert cv["after"]["brier"] < cv["before"]["brier"] - 0.03 and cv["after"]["log_loss"] < cv["before"]["log_loss"] - 0.1
    assert cv["folds"] == 5 and len(oof) == 1500
    # the reported standard errors match the spread of the estimates over repeated samples
    slopes, errors = [], []
    for rep in range(40):
        rng = random.Random(100 + rep)
        sample = []
        for i in range(300):
            cp, o = rng.uniform(0.5, 0.995), rng.choice([0.0, 1.0])
            sample.append(Observation(f"r{i}", cp, o, float(rng.random() < sig(math.log(cp / (1 - cp)) / 3 + 0.5 * o))))
        fitted, _ = fit_calibration(sample, "hard", "j", "c")
        slopes.append(fitted.coef[1])
        errors.append(fitted.stderr[1])
    assert float(np.std(slopes)) == pytest.approx(float(np.mean(errors)), rel=0.35)
    # perfectly separated ratings: the penalty keeps the fit finite
    sep = [Observation(f"s{i}", 0.6 + 0.3 * (i % 2), 1.0, float(i % 2)) for i in range(40)]
    w = fit_logistic(np.array([[1.0, math.log(o.chosen_prob / (1 - o.chosen_prob))] for o in sep]), np.array([o.y for o in sep]))
    assert np.all(np.isfinite(w)) and w[1] > 0


def test_a_calibrated_p_below_half_swaps_the_pair():
    cal = Calibration((-2.0, 1.0, 0.0), 30, 30, "hard", False, "j", "c")
    row = {"prompt": [], "chosen": [{"role": "assistant", "content": "A"}], "rejected": [{"role": "assistant", "content": "B"}],
           "label_source": "ai", "chosen_prob": 0.7, "order_agreement": 1.0, "label_principle_probs": [0.8, 0.6],
           "response_ids": ["x:a", "x:b"], "flags": []}
    out, swapped = calibrated_row(row, cal)
    # sigmoid(-2 + logit(0.7)) = sigmoid(-2 + 0.847) = 0.240 -> the other response, P 0.760
    assert swapped and text(out["chosen"]) == "B" and text(out["rejected"]) == "A"
    assert out["chosen_prob"] == pytest.approx(1 - sig(-2 + math.log(0.7 / 0.3)))
    assert out["judge_chosen_prob"] == pytest.approx(0.3) and out["label_principle_probs"] == [pytest.approx(0.2), pytest.approx(0.4)]
    assert out["response_ids"] == ["x:b", "x:a"] and out["flags"] == ["calibrated", "calibration-swapped"] and out["likert"] == 7
    tie, swapped = calibrated_row({**row, "flags": ["tie"], "chosen_prob": 0.5}, cal)
    assert not swapped and tie["chosen_prob"] == 0.5 and "calibrated" not in tie["flags"]


# ------------------------------------------------------------------ rlaif calibrate


def z_pairs(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        z = rng.uniform(-2.0, 2.0)
        good, other = f"{MARKER} z={z:+.3f} answer {i:04d}", f"another answer text {i:04d}"
        other += "." * (len(good) - len(other))
        out.append((f"z{i}", good, other) if i % 2 == 0 else (f"z{i}", other, good))
    return out


def true_p(row) -> float:
    """P(the row's chosen response is better) by the truth of ZOracle."""
    chosen, rejected = text(row["chosen"]), text(row["rejected"])
    marked_text = chosen if MARKER in chosen else rejected
    z = float(marked_text.split("z=")[1].split()[0])
    return sig(z) if MARKER in chosen else 1 - sig(z)


def test_calibrate_recovers_the_judges_distortion_end_to_end(tmp_path, monkeypatch, capsys):
    """The judge reports sigmoid(3 z) where people prefer the marked response with sigmoid(z):
    calibrate finds b = 1/3, its cross-validated error falls, and its P is the truth's."""
    src = write_pairs(tmp_path / "pairs.jsonl", z_pairs(240))
    judge = lambda model: ZOracle(model=model or "z-judge", k=3.0)  # noqa: E731
    base = ["label", "--pairs", src, "--backend", "fake", "--feedback-model", "z-judge", "--quiet", "--ensemble", "1"]
    code, _, err = cli(monkeypatch, capsys, base + ["--out", str(tmp_path / "run")], judge)
    assert code == 0, err
    with BackgroundServer(create_app(tmp_path / "run", log=lambda m: None)) as server:
        person = Reviewer(server.url, "ann", prefer_by_z, seed=3)
        person.rate(240)
        person.close()
    code, out, err = cli(monkeypatch, capsys, ["calibrate", str(tmp_path / "run"), "--out", str(tmp_path / "cal")])
    assert code == 0, err
    cal = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert cal["coef"]["b"] == pytest.approx(1 / 3, abs=0.15) and cal["coef"]["a"] == pytest.approx(0.0, abs=0.4)
    assert cal["n"] == 240 and not cal["use_order_agreement"] and cal["judge"] == "z-judge"
    assert cal["cv"]["after"]["brier"] < cal["cv"]["before"]["brier"] and cal["cv"]["after"]["log_loss"] < cal["cv"]["before"]["log_loss"]
    assert "cross-validated over 5 folds" in out and "Brier score" in out and "log loss" in out
    raw, new = rows_of(tmp_path / "run"), rows_of(tmp_path / "cal")
    assert set(raw) == set(new) and len(new) == 240
    err_before = np.mean([abs(r["chosen_prob"] - true_p(r)) for r in raw.values()])
    err_after = np.mean([abs(r["chosen_prob"] - true_p(r)) for r in new.values()])
    assert err_after < 0.06 < 0.12 < err_before
    swapped = [k for k, r in new.items() if "calibration-swapped" in r["flags"]]
    assert len(swapped) == cal["swaps"] and f"swapped {cal['swaps']} of 240 pairs" in out
    for k in swapped:
        assert text(new[k]["chosen"]) == text(raw[k]["rejected"])
    # the derived folder is a run every command reads
    assert datasets.load_from_disk(str(tmp_path / "cal" / "preferences")).num_rows == 240
    manifest = json.loads((tmp_path / "cal" / "manifest.json").read_text())
    assert manifest["settings"]["kind"] == "label" and manifest["derived_from"]["command"] == "calibrate"

    # the saved calibration labels another run of the same judge and constitution the same way
    code, _, err = cli(monkeypatch, capsys, base + ["--out", str(tmp_path / "again"), "--calibration", str(tmp_path / "cal" / "calibration.json")], judge)
    assert code == 0, err
    again = rows_of(tmp_path / "again")
    for k, r in again.items():
        assert r["chosen_prob"] == pytest.approx(new[k]["chosen_prob"], abs=1e-9) and text(r["chosen"]) == text(new[k]["chosen"])
    assert json.loads((tmp_path / "again" / "manifest.json").read_text())["calibration"]["swaps"] == cal["swaps"]
    # on the finished run folder itself it only rebuilds the outputs (no pair is scored again)
    code, out, err = cli(monkeypatch, capsys, base + ["--out", str(tmp_path / "run"), "--calibration", str(tmp_path / "cal" / "calibration.json")],
                         lambda model: pytest.fail("no engine may start"))
    assert code == 0 and "every pair is already scored; building the outputs again" in out, err
    assert rows_of(tmp_path / "run") == again
    # other label settings: a warning, not a refusal
    argv = base + ["--out", str(tmp_path / "other"), "--calibration", str(tmp_path / "cal" / "calibration.json"), "--limit", "4", "--ensemble", "2"]
    code, _, err = cli(monkeypatch, capsys, argv, judge)
    assert code == 0 and "fitted on labels made with other settings (ensemble 1 -> 2)" in err
    # another judge, another constitution: refused before any work, with the reason
    for extra, why in [(["--feedback-model", "other-judge"], "judge 'z-judge', not 'other-judge'"),
                       (["--constitution", "harmless-strict"], "other principles ask other questions")]:
        argv = base + ["--out", str(tmp_path / "refused"), "--calibration", str(tmp_path / "cal" / "calibration.json")] + extra
        code, _, err = cli(monkeypatch, capsys, argv, judge)
        assert code == 2 and why in err and err.startswith("rlaif: error:"), err
        assert not (tmp_path / "refused").exists()

    # the report shows the fit, the scores and the reliability diagram
    from rlaif.report import build_report

    page = build_report([tmp_path / "cal"]).read_text()
    assert 'id="calibration-scores"' in page and 'id="reliability-plot"' in page and "data:image/png;base64" in page


def test_calibrate_refuses_what_it_cannot_use(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    code, _, err = cli(monkeypatch, capsys, ["calibrate", str(run), "--out", str(tmp_path / "o")])
    assert code == 2 and "no preferences.jsonl" in err
    (run / "preferences.jsonl").write_text(json.dumps({"id": "x", "prompt": "q", "chosen": "a", "rejected": "b", "chosen_prob": 0.8,
                                                       "label_source": "ai"}) + "\n")
    code, _, err = cli(monkeypatch, capsys, ["calibrate", str(run), "--out", str(tmp_path / "o")])
    assert code == 2 and "no such ratings file" in err and "rlaif review" in err
    (run / "reviews.jsonl").write_text("")
    code, _, err = cli(monkeypatch, capsys, ["calibrate", str(run), "--out", str(tmp_path / "o")])
    assert code == 2 and "at least 20 ratings" in err
    # a judge already calibrated (people agree in 90% of its 0.9 pairs and 60% of its 0.6 ones): the fit
    # cannot beat it on held-out ratings, and says so
    from rlaif.review.data import Review, ReviewStore, load_pairs

    noise = tmp_path / "noise"
    noise.mkdir()
    (noise / "preferences.jsonl").write_text("".join(
        json.dumps({"id": f"n{i}", "prompt": "q", "chosen": f"a{i}", "rejected": f"b{i}", "chosen_prob": 0.9 if i % 2 else 0.6,
                    "label_source": "ai", "order_agreement": 1.0}) + "\n" for i in range(40)))
    store = ReviewStore(noise / "reviews.jsonl", {p.id: p for p in load_pairs(noise)})
    for i in range(40):
        likert = 8 if (i // 2) % 10 < (9 if i % 2 else 6) else 1
        store.append(Review(f"noise-{i:04d}", "nia", f"2025-01-01T00:00:{i:02d}.000+00:00", f"n{i}", 9 - likert, "chosen", likert))
    code, out, err = cli(monkeypatch, capsys, ["calibrate", str(noise), "--out", str(tmp_path / "noisy")])
    assert code == 0 and "do not beat the judge's own on held-out ratings" in err and "rate more pairs" in err
    # the soft target: a strong rating is 0.9375 or 0.0625, not 1 or 0, so the fit is less sure than the hard one
    code, out, err = cli(monkeypatch, capsys, ["calibrate", str(noise), "--out", str(tmp_path / "soft"), "--target", "soft"])
    soft, hard = (json.loads((tmp_path / d / "calibration.json").read_text()) for d in ("soft", "noisy"))
    assert code == 0 and soft["target"] == "soft" and "soft target" in out
    assert 0 < soft["coef"]["b"] < hard["coef"]["b"]
    code, _, err = cli(monkeypatch, capsys, ["calibrate", str(run), "--out", str(run)])
    assert code == 2 and "is the run folder itself" in err
    code, _, err = cli(monkeypatch, capsys, ["label", "--pairs", "x.jsonl", "--out", str(tmp_path / "l"), "--backend", "fake",
                                             "--calibration", str(run / "preferences.jsonl")])
    assert code == 2 and ("not a calibration file" in err or "x.jsonl" in err)


# ------------------------------------------------------------------ principle reliability


def test_a_principle_built_to_be_wrong_is_flagged_and_down_weighted(tmp_path, monkeypatch, capsys):
    const, pdir = write_trio(tmp_path / "trio")
    src = write_pairs(tmp_path / "pairs.jsonl", marked(150))
    judge = lambda model: PrincipleOracle(model=model or "fake", content=1.0, wrong=4.0)  # noqa: E731
    base = ["label", "--pairs", src, "--backend", "fake", "--quiet", "--ensemble", "2", "--constitution", const, "--principles-dir", pdir]
    code, labelled, err = cli(monkeypatch, capsys, base + ["--out", str(tmp_path / "run")], judge)
    assert code == 0, err
    with BackgroundServer(create_app(tmp_path / "run", log=lambda m: None)) as server:
        person = Reviewer(server.url, "rita", prefer_marked(0.1), seed=5)
        person.rate(150)
        person.close()
    code, out, err = cli(monkeypatch, capsys, ["calibrate", str(tmp_path / "run"), "--out", str(tmp_path / "cal")])
    assert code == 0, err
    rel = json.loads((tmp_path / "cal" / "principle_reliability.json").read_text())
    p = rel["principles"]
    assert set(p) == set(TRIO)
    assert p["bad-shape"]["flagged"] and p["bad-shape"]["weight"] == 0.0 and p["bad-shape"]["interval"][1] < 0.6
    assert not p["good-help"]["flagged"] and not p["good-truth"]["flagged"] and p["good-help"]["rate"] > 0.75
    assert "bad-shape" in out and "FLAGGED -> weight 0" in out

    weights = str(tmp_path / "cal" / "principle_reliability.json")
    code, relabelled, err = cli(monkeypatch, capsys, base + ["--out", str(tmp_path / "weighted"), "--principle-reliability", weights], judge)
    assert code == 0, err
    before, after = rows_of(tmp_path / "run"), rows_of(tmp_path / "weighted")
    # docs/review.md shows this run's output
    readme = (Path(__file__).resolve().parent.parent / "docs" / "review.md").read_text()
    shown = [line for line in labelled.splitlines() if line.startswith("agreement with reference labels:")]
    shown += [line for line in out.splitlines() if not line.startswith(("wrote", "report:"))]
    shown += [line for line in relabelled.splitlines() if line.startswith(("principle weights:", "agreement with reference labels:"))]
    missing = [line for line in shown if line not in readme]
    assert not missing, f"docs/review.md's 'From ratings to better labels' does not show: {missing}"

    def disagreement(rows):
        """Share of the reviewer's ratings whose preferred response is not the row's chosen one."""
        return np.mean([text(rows[k]["chosen"]) != t for k, t in person.chose.items() if k in rows])

    assert disagreement(after) < 0.2 < 0.5 < disagreement(before)
    for k in before:  # the same principles were sampled: the sampling weights are untouched
        assert before[k]["label_principles"] == after[k]["label_principles"]
    assert sum("reweighted" in r["flags"] for r in after.values()) == sum("bad-shape" in r["label_principles"] for r in before.values()) > 50
    settings = json.loads((tmp_path / "weighted" / "settings.json").read_text())
    assert settings["settings"]["principle_reliability"]["bad-shape"] == 0.0
    assert settings["fingerprint"] != json.loads((tmp_path / "run" / "settings.json").read_text())["fingerprint"]
    # the first run, asked again without the option, is complete (its fingerprint is unchanged)
    code, out, _ = cli(monkeypatch, capsys, base + ["--out", str(tmp_path / "run")], judge)
    assert code == 0 and "already complete" in out
    # the report of the rated run flags the principle
    from rlaif.report import build_report

    page = build_report([tmp_path / "run"]).read_text()
    assert 'id="principle-reliability"' in page and "<b>flagged</b>: below 60.0%" in page


# Recorded by the code before --principle-reliability existed (commit 222becc): a label run made
# then must resume now, so an unset option must leave its fingerprint as it was.
OLD_LABEL_FINGERPRINT = "0095e92f19e5537a4dd44f65cfa68715b5c3d5b2d8aefe50a0d846ee56cf4037"


def test_label_fingerprint_is_unchanged_without_the_new_options(tmp_path):
    from rlaif.constitution import load_constitution
    from rlaif.engine.fake import FakeEngine
    from rlaif.pipeline.judge import LabelSettings, Pair
    from rlaif.pipeline.label import label_run

    const, pdir = write_trio(tmp_path / "trio")
    pairs = [Pair(f"f{i}", ({"role": "user", "content": f"question {i}"},), f"answer a {i}", f"answer b {i}") for i in range(6)]
    label_run(pairs, str(tmp_path / "o"), load_constitution(const, pdir), LabelSettings(ensemble=2), lambda: FakeEngine(model="fake-judge"),
              "fake-judge", chunk_size=4, log=lambda m: None, show_progress=False)
    assert json.loads((tmp_path / "o" / "settings.json").read_text())["fingerprint"] == OLD_LABEL_FINGERPRINT


# ------------------------------------------------------------------ gold labels


def test_export_prefer_human_carries_exactly_the_rated_verdicts(tmp_path, monkeypatch, capsys):
    """Two reviewers; the first flags a response holding "poison" as harmful. Each rated pair's
    label is the humans' verdict, a pair they split keeps its AI label, a pair whose preferred
    response is flagged harmful is dropped, the unrated keep their AI labels."""
    src = write_pairs(tmp_path / "pairs.jsonl", marked(40, extra=lambda i: " poison" if i % 9 == 0 else ""))
    code, _, err = cli(monkeypatch, capsys, ["label", "--pairs", src, "--backend", "fake", "--quiet", "--out", str(tmp_path / "run"),
                                             "--ensemble", "2"], lambda model: content_oracle(1.5, model=model or "fake"))
    assert code == 0, err
    harm = lambda left, right: (["harmful"] if "poison" in left else [], ["harmful"] if "poison" in right else [])  # noqa: E731
    with BackgroundServer(create_app(tmp_path / "run", log=lambda m: None)) as server:
        ann = Reviewer(server.url, "ann", prefer_marked(0.0), seed=1, flags=harm)
        ben = Reviewer(server.url, "ben", prefer_marked(0.5), seed=2)
        ann.rate(24)
        ben.rate(18)
        ann.close(), ben.close()
    code, out, err = cli(monkeypatch, capsys, ["export", str(tmp_path / "run"), "--prefer", "human", "--out", str(tmp_path / "gold")])
    assert code == 0, err
    ai, gold = rows_of(tmp_path / "run"), rows_of(tmp_path / "gold")
    verdicts = {}
    for k in set(ann.chose) | set(ben.chose):
        said = {r.chose[k] for r in (ann, ben) if k in r.chose}
        verdicts[k] = said.pop() if len(said) == 1 else None  # two reviewers who disagree (both strong): no verdict
    dropped = {k for k, v in verdicts.items() if v is not None and "poison" in v and k in ann.chose}
    assert dropped and set(gold) == set(ai) - dropped
    split = {k for k, v in verdicts.items() if v is None}
    assert split, "the test needs a pair the two reviewers split"
    for k, r in gold.items():
        if k in verdicts and k not in split:
            assert r["label_source"] == "human" and text(r["chosen"]) == verdicts[k]
            assert r["chosen_prob"] == 0.9375 and r["likert"] == 8 and r["human_likerts"] == [8] * r["human_ratings"]
            assert r["ai_label_source"] == "ai" and r["ai_agrees"] == (text(ai[k]["chosen"]) == verdicts[k])
            ai_p = ai[k]["chosen_prob"] if r["ai_agrees"] else 1 - ai[k]["chosen_prob"]
            assert r["ai_chosen_prob"] == pytest.approx(ai_p)
            assert sorted(r["human_reviewers"]) == sorted(n for n, who in (("ann", ann), ("ben", ben)) if k in who.chose)
        else:
            assert r["label_source"] == "ai" and text(r["chosen"]) == text(ai[k]["chosen"]) and r["chosen_prob"] == ai[k]["chosen_prob"]
            assert ("humans-split" in r["flags"]) == (k in split) and r["human_ratings"] == (2 if k in split else 0)
    n_human = len([k for k in verdicts if k not in split and k not in dropped])
    assert f"human labels: {n_human} of 40 pairs" in out
    # --rated-only: the rated pairs alone
    code, _, err = cli(monkeypatch, capsys, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "only"), "--rated-only"])
    assert code == 0, err
    assert set(rows_of(tmp_path / "only")) == set(verdicts) - dropped
    code, _, err = cli(monkeypatch, capsys, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "only")])
    assert code == 2 and "--overwrite" in err
    # --drop-flags without a flag keeps every pair
    code, _, err = cli(monkeypatch, capsys, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "all"), "--drop-flags"])
    assert code == 0 and set(rows_of(tmp_path / "all")) == set(ai)

    # every other command reads the gold folder: train's loader, review, report
    from rlaif.report import build_report
    from rlaif.train.data import load_rows, to_preference_example

    examples = [to_preference_example(r) for r in load_rows(tmp_path / "gold", "preference")]
    assert len(examples) == len(gold) and all(0.5 <= e.chosen_prob <= 1 for e in examples)
    state = create_app(tmp_path / "gold", log=lambda m: None).state.review
    assert {p.label_source for p in state.pairs} == {"human", "ai"}
    page = build_report([tmp_path / "gold"]).read_text()
    assert 'id="gold-counts"' in page and f"{n_human} of 40 pairs carry the human verdict" in page
