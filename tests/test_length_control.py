"""Length control (rlaif/pipeline/length_control.py), each part checked without its own code:
the maximum-likelihood fit against a generic optimiser (torch's L-BFGS on the same likelihood
written again), the standard error and the z >= 1.96 gate by simulation, and the whole
correction against oracle judges whose length bias and content preference are known, over
several principles (label_run and the ``rlaif label`` command line)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from oracles import MARKER, OracleEngine, oracle_logit, shown_responses
from rlaif.constitution import load_constitution
from rlaif.pipeline.diagnostics import length_feature, log_odds, run_warnings, sigmoid
from rlaif.pipeline.judge import LabelSettings, Pair, PairLabel, likert, margin
from rlaif.pipeline.label import label_run
from rlaif.pipeline.length_control import METHOD, MIN_PAIRS, Z_MIN, apply_length_control, fit_length_model

CONST = load_constitution("default")
Q = ({"role": "user", "content": "q"},)
QUIET = {"log": lambda s: None, "show_progress": False}


def _label(pid, per, flags=()):
    p = sum(per.values()) / len(per)
    return PairLabel(pid, p, dict(per), 1.0, 0.5, likert(p), margin(p), tuple(flags), slot_probs={k: (v, 1 - v) for k, v in per.items()})


def _simulated(rng, n_pairs, beta, b0=0.0, k=2, content_sd=1.5):
    """Comparisons of n_pairs pairs, k each: log-odds = b0 + beta d + the pair's content (shared
    by its comparisons) + a principle's own part; content is normal (not the fit's logistic)."""
    d = rng.normal(0.0, 0.6, n_pairs)
    content = rng.normal(0.0, content_sd, n_pairs)
    ys, ds, cl = [], [], []
    for i in range(n_pairs):
        for _ in range(k):
            ys.append(b0 + beta * d[i] + content[i] + rng.normal(0.0, 0.5))
            ds.append(d[i])
            cl.append(i)
    return ys, ds, cl


# ------------------------------------------------------------------ the fit


def test_ml_fit_matches_a_generic_optimiser():
    """The same likelihood (linear log-odds, logistic content of scale s) written again in torch and
    maximised by L-BFGS: the same b0, beta and s."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    ys, ds, cl = _simulated(rng, 60, beta=1.7, b0=0.4, k=3)
    fit = fit_length_model(ys, ds, remove_intercept=True, clusters=cl)
    y, d = torch.tensor(ys, dtype=torch.float64), torch.tensor(ds, dtype=torch.float64)
    params = torch.zeros(3, dtype=torch.float64, requires_grad=True)   # b0, beta, log s
    opt = torch.optim.LBFGS([params], max_iter=300, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def nll():
        opt.zero_grad()
        r = (y - params[0] - params[1] * d) / params[2].exp()
        # the logistic density of scale s: sigmoid(r) sigmoid(-r) / s
        loss = -(torch.nn.functional.logsigmoid(r) + torch.nn.functional.logsigmoid(-r) - params[2]).sum()
        loss.backward()
        return loss

    opt.step(nll)
    assert fit.applied and fit.with_intercept and fit.n == 60 and fit.comparisons == 180 and fit.clipped == 0
    assert (fit.intercept, fit.coef, fit.scale) == pytest.approx((params[0].item(), params[1].item(), params[2].exp().item()), rel=1e-6)
    assert fit.z == pytest.approx(fit.coef / fit.stderr)
    # what the score equations say: at the fitted scale the corrected probabilities average 1/2 and do not follow d
    corrected = 1 / (1 + np.exp(-(np.array(ys) - fit.intercept - fit.coef * np.array(ds)) / fit.scale))
    assert corrected.mean() == pytest.approx(0.5, abs=1e-8) and float(np.dot(ds, corrected - 0.5)) == pytest.approx(0.0, abs=1e-7)


def test_stderr_and_the_z_gate_hold_their_level_by_simulation():
    """300 seeded runs of 40 pairs, 2 comparisons each. Without a length effect the correction is
    applied in about 5% of them (the gate's level); with one (beta = 1) the interval
    beta +- 1.96 se holds it about 95% of the time, and the clustered standard error is close to
    the estimates' real spread."""
    rng = np.random.default_rng(5)
    null = [_fit(_simulated(rng, 40, beta=0.0)) for _ in range(300)]
    false_rate = sum(f.applied for f in null) / 300
    assert 0.01 <= false_rate <= 0.10, false_rate
    fits = [_fit(_simulated(rng, 40, beta=1.0)) for _ in range(300)]
    cover = sum(abs(f.coef - 1.0) <= Z_MIN * f.stderr for f in fits) / 300
    assert 0.90 <= cover <= 0.99, cover
    spread = float(np.std([f.coef for f in fits]))
    assert np.mean([f.stderr for f in fits]) == pytest.approx(spread, rel=0.2)


def _fit(sim):
    ys, ds, cl = sim
    return fit_length_model(ys, ds, remove_intercept=False, clusters=cl)


def test_clipped_log_odds_do_not_dominate_the_fit():
    """A judge certain of the content of 40% of the pairs (P within 1e-6 of 0 or 1: log-odds at the
    clip, whichever side the length is on): least squares on those log-odds is thrown about by them;
    the fit leaves them out. 100 seeded runs of 80 pairs, true beta 1.2."""
    rng = np.random.default_rng(2)
    err_ml, err_ls = [], []
    for _ in range(100):
        d = rng.normal(0.0, 0.5, 80)
        p = sigmoid_np(1.2 * d + rng.logistic(0.0, 0.5, 80))
        sure = rng.random(80) < 0.4
        p[sure] = np.where(rng.random(sure.sum()) < 0.5, 1.0, 0.0)
        y = np.array([log_odds(v) for v in p])
        fit = fit_length_model(y.tolist(), d.tolist(), remove_intercept=False)
        assert fit.clipped == sure.sum()
        err_ml.append(fit.coef - 1.2)
        err_ls.append(float(np.polyfit(d, y, 1)[0]) - 1.2)
    rmse = lambda e: float(np.sqrt(np.mean(np.square(e))))  # noqa: E731
    assert rmse(err_ml) < rmse(err_ls) / 4, (rmse(err_ml), rmse(err_ls))


def sigmoid_np(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_fit_refuses_when_not_identifiable():
    few = fit_length_model([0.1] * (MIN_PAIRS - 1), [0.5 * (-1) ** i for i in range(MIN_PAIRS - 1)], remove_intercept=False)
    assert not few.applied and "too few" in few.reason and few.z is None
    flat = fit_length_model([0.1 * i for i in range(30)], [0.7] * 30, remove_intercept=False)
    assert not flat.applied and "barely varies" in flat.reason
    # 3 comparisons of each of 10 pairs are still 10 pairs
    assert "too few" in fit_length_model([0.1, 0.2, 0.3] * 10, [0.5, -0.5, 0.2] * 10, False, clusters=[i // 3 for i in range(30)]).reason
    with pytest.raises(ValueError, match="equal lengths"):
        fit_length_model([0.1] * 30, [0.1] * 29, remove_intercept=False)


def test_fit_cautions_when_one_side_is_always_longer():
    # b is the longer response in every pair (like revisions that always grow): d < 0 throughout
    d = [-0.8 - 0.02 * i for i in range(30)]
    fit = fit_length_model([0.5 * x + 0.3 for x in d], d, remove_intercept=False)
    assert fit.applied and fit.stderr == 0.0 and fit.coef == pytest.approx(0.5) and "response b is the longer one" in fit.caution
    balanced = fit_length_model([0.5 * x for x in d[:15] + [-x for x in d[15:]]], d[:15] + [-x for x in d[15:]], remove_intercept=False)
    assert balanced.applied and balanced.caution is None
    manifest = {"diagnostics": {"pairs": 30, "order_consistency": 0.9, "comparisons_both_orders": 60, "length_correlation": 0.0},
                "length_control": fit.to_dict()}
    assert len(run_warnings(manifest)) == 1 and "confounded" in run_warnings(manifest)[0]
    manifest["length_control"] = {"applied": False, "reason": "too few judged pairs to fit (3 < 20)", "z": None}
    assert run_warnings(manifest) == ["warning: --length-control was not applied (too few judged pairs to fit (3 < 20)); "
                                      "the labels are the judge's own."]
    # fitted and found no length preference: nothing to warn about
    manifest["length_control"] = {"applied": False, "reason": "not distinguishable from zero", "z": 0.4}
    assert run_warnings(manifest) == []


# ------------------------------------------------------------------ the correction


def test_corrected_label_is_the_mean_of_its_corrected_principles():
    """Each principle is corrected in log-odds and the label is their mean, as the judge's label is
    the mean of its principles. The issue's example: {0.99, 0.2} moved by 0.5 log-odds gives 0.558
    (their mean), not sigmoid(logit(0.595) - 0.5) = 0.471 on the other side of one half."""
    pairs, labels = [], []
    for i in range(40):
        a, b = "w" * (20 + 7 * i), "w" * 60
        if i % 2:
            a, b = b, a
        c = 1.2 if i % 4 < 2 else -1.2
        per = {"x": sigmoid(c + 1.5 * length_feature(a, b)), "y": sigmoid(-0.5 * c + 1.5 * length_feature(a, b))}
        pairs.append(Pair(f"p{i}", Q, a, b))
        labels.append(_label(f"p{i}", per))
    pairs.append(Pair("issue", Q, "w" * 40, "w" * 20))
    labels.append(_label("issue", {"x": 0.99, "y": 0.2}))
    out, fit = apply_length_control(pairs, labels, both_orders=True, tie_band=0.0)
    assert fit.applied
    for pair, old, new in zip(pairs, labels, out):
        shift = fit.coef * length_feature(pair.response_a, pair.response_b)
        assert new.p_a == pytest.approx(sum(new.per_principle.values()) / 2, rel=1e-12)
        for k in ("x", "y"):
            assert log_odds(old.per_principle[k]) - log_odds(new.per_principle[k]) == pytest.approx(shift, rel=1e-9)
        assert new.length_offset == pytest.approx(log_odds(old.p_a) - log_odds(new.p_a), rel=1e-12) and new.judge_p_a == old.p_a
    # the issue's numbers, at a shift of exactly 0.5 log-odds
    per = [sigmoid(log_odds(p) - 0.5) for p in (0.99, 0.2)]
    assert sum(per) / 2 == pytest.approx(0.558, abs=1e-3) and sigmoid(log_odds(0.595) - 0.5) == pytest.approx(0.471, abs=1e-3)


def test_a_judges_tie_stays_a_tie():
    """A pair the judge scored exactly 0.5 has no preference to correct: the length offset must
    not turn it into a (small) win for the shorter response."""
    pairs, labels = [], []
    for i in range(40):
        a, b = "w" * (30 + 9 * i), "w" * 25
        if i % 2:
            a, b = b, a
        z = 2.0 * length_feature(a, b) + (0.7 if i % 3 else -0.7)
        flags = ()
        if i % 5 == 0:
            z, flags = 0.0, ("tie",)
        pairs.append(Pair(f"p{i}", Q, a, b))
        labels.append(_label(f"p{i}", {"x": sigmoid(z)}, flags=flags))
    out, fit = apply_length_control(pairs, labels, both_orders=True, tie_band=0.0)
    assert fit.applied
    ties = [l for l in out if l.judge_p_a == 0.5]
    assert len(ties) == 8
    for lab in ties:
        assert lab.p_a == 0.5 and "tie" in lab.flags and lab.chosen is None and lab.length_offset == 0.0
    assert all(l.length_offset != 0.0 for l in out if l.judge_p_a != 0.5)


# ------------------------------------------------------------------ oracle judges over several principles


STRENGTHS = (0.5, 1.5, 3.0)


@dataclass
class PrincipledOracle(OracleEngine):
    """The content oracle with a content strength that depends on the principle asked (0.5, 1.5 or
    3 by the principle's place in the constitution), the same length bias for all:
    logit P(A) = strength(principle) * (marked(A) - marked(B)) + length * log((1 + len A) / (1 + len B))."""

    strengths: dict = field(default_factory=lambda: {p.comparison: STRENGTHS[i % 3] for i, p in enumerate(CONST.principles)})

    def _score(self, req, options):
        text = req.messages[-1]["content"]
        first, second = shown_responses(text)
        content = next(v for q, v in self.strengths.items() if q in text)
        z = oracle_logit(first, second, content, self.position, self.length, self.marker)
        return [-math.log1p(math.exp(-z)), -math.log1p(math.exp(z))]


def varied_pairs(n: int = 60) -> list[Pair]:
    """A length-balanced set in blocks of four pairs of the same two lengths (ratios from about 1.3
    to 9): the better response (holding the marker; the other holds a word of the same length)
    is the longer one in two of them and in slot a in two, so that across the set the content
    does not follow the length."""
    out = []
    for i in range(n):
        j = i // 4
        short = f"{i:03d} " + "ok " * (2 + j % 3)
        long_ = f"{i:03d} " + "and more detail " * (1 + j % 7)
        good_is_long, a_good = i % 2 == 0, i % 4 < 2
        good, bad = (long_, short) if good_is_long else (short, long_)
        good, bad = f"{MARKER} {good}", f"{'l' * len(MARKER)} {bad}"
        a, b = (good, bad) if a_good else (bad, good)
        out.append(Pair(f"v{i}", ({"role": "user", "content": f"question {i}"},), a, b, "a" if a_good else "b"))
    return out


def test_oracle_length_bias_is_recovered_and_the_content_survives(tmp_path):
    """Three content strengths over the principles and a length bias of 1.5: the fitted coefficient's
    interval holds 1.5, and after the correction every label follows the content, where the judge
    itself let length decide some of them."""
    pairs = varied_pairs()
    judge = lambda: PrincipledOracle(length=1.5)  # noqa: E731
    raw = label_run(pairs, str(tmp_path / "raw"), CONST, LabelSettings(ensemble=3), judge, "o", **QUIET)
    assert raw["agreement"]["overall"]["agreement"] < 0.9
    m = label_run(pairs, str(tmp_path / "lc"), CONST, LabelSettings(ensemble=3, length_control=True), judge, "o", **QUIET)
    lc = m["length_control"]
    assert lc["applied"] and abs(lc["coef"] - 1.5) <= Z_MIN * lc["stderr"] and lc["stderr"] < 0.3 and lc["z"] > 5
    assert lc["comparisons"] == 3 * 60 and m["finalise"]["length_model"] == METHOD
    assert m["agreement"]["overall"]["agreement"] == 1.0 and abs(lc["after"]["length_correlation"]) < 0.3
    rows = [json.loads(x) for x in (tmp_path / "lc" / "labels.jsonl").read_text().splitlines()]
    assert all(r["p_a"] == pytest.approx(sum(r["per_principle"].values()) / 3, rel=1e-12) for r in rows)
    # the strongly content-driven principles still carry more preference than the weak ones
    by_strength = {s: [] for s in STRENGTHS}
    strength_of = {p.id: STRENGTHS[i % 3] for i, p in enumerate(CONST.principles)}
    for r, pair in zip(rows, pairs):
        for k, v in r["per_principle"].items():
            by_strength[strength_of[k]].append(abs(log_odds(v)))
    assert np.mean(by_strength[3.0]) > np.mean(by_strength[1.5]) > np.mean(by_strength[0.5])


def test_oracle_without_length_bias_keeps_its_labels(tmp_path):
    """The same judges with no length bias: the fitted coefficient is not distinguishable from zero,
    so no label is rewritten, and that is no warning."""
    pairs = varied_pairs()
    m = label_run(pairs, str(tmp_path / "lc"), CONST, LabelSettings(ensemble=3, length_control=True), lambda: PrincipledOracle(), "o", **QUIET)
    raw = label_run(pairs, str(tmp_path / "raw"), CONST, LabelSettings(ensemble=3), lambda: PrincipledOracle(), "o", **QUIET)
    lc = m["length_control"]
    assert not lc["applied"] and abs(lc["z"]) < Z_MIN and "not distinguishable from zero" in lc["reason"]
    assert (tmp_path / "lc" / "labels.jsonl").read_text() == (tmp_path / "raw" / "labels.jsonl").read_text()
    assert run_warnings(m) == []


def _cli(monkeypatch, capsys, argv, engine_factory):
    import rlaif.engine.fake
    from rlaif.cli import main

    monkeypatch.setattr(rlaif.engine.fake, "FakeEngine", lambda model=None, **kw: engine_factory())
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_label_command_length_control_prints_the_coefficient_and_z(tmp_path, monkeypatch, capsys):
    """``rlaif label --length-control --strict`` on the oracle of known length bias (1.5), and on
    the one without: each prints its coefficient and z; neither is a warning."""
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt[0]["content"], "response_a": p.response_a,
                                       "response_b": p.response_b, "label": p.label}) + "\n" for p in varied_pairs()))
    argv = ["label", "--pairs", str(src), "--backend", "fake", "--quiet", "--ensemble", "3", "--length-control", "--strict"]
    code, out, err = _cli(monkeypatch, capsys, argv + ["--out", str(tmp_path / "biased")], lambda: PrincipledOracle(length=1.5))
    lc = json.loads((tmp_path / "biased" / "manifest.json").read_text())["length_control"]
    assert code == 0 and "warning" not in err
    line = next(x for x in out.splitlines() if x.startswith("length control"))
    assert line.startswith(f"length control  {lc['coef']:+.2f} +- {lc['stderr']:.2f} (z {lc['z']:+.1f}) log-odds per log length ratio removed")
    assert abs(lc["coef"] - 1.5) <= Z_MIN * lc["stderr"] and "agreement with reference labels: 100.0% of 60 pairs" in out
    code, out, err = _cli(monkeypatch, capsys, argv + ["--out", str(tmp_path / "fair")], lambda: PrincipledOracle())
    lc = json.loads((tmp_path / "fair" / "manifest.json").read_text())["length_control"]
    assert code == 0 and "warning" not in err
    assert (f"length control  not applied: the length coefficient {lc['coef']:+.2f} +- {lc['stderr']:.2f} is not distinguishable "
            f"from zero (z {lc['z']:+.2f}, |z| < 1.96)") in out


def test_a_run_finalised_by_the_older_fit_is_rebuilt_without_the_model(tmp_path):
    pairs = varied_pairs(24)
    settings = LabelSettings(ensemble=2, length_control=True)
    first = label_run(pairs, str(tmp_path / "r"), CONST, settings, lambda: PrincipledOracle(length=1.5), "o", **QUIET)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    manifest["finalise"].pop("length_model")  # what an older rlaif wrote
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(manifest))
    logs = []
    again = label_run(pairs, str(tmp_path / "r"), CONST, settings, lambda: 1 / 0, "o", log=logs.append, show_progress=False)
    assert "building the outputs again" in logs[0] and again["length_control"] == first["length_control"]
