"""rlaif eval: its KL estimate against exact KL (the intervals: tests/test_eval_intervals.py),
the whole run against oracle engines whose right answers are known, resume, and the command
through its real entry point (fake backend)."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from oracles import MARKER, OracleEngine

from rlaif.constitution import load_constitution
from rlaif.engine.fake import FakeEngine
from rlaif.pipeline.eval_judge import CHECKS, REFUSAL, SAFE
from rlaif.pipeline.eval_stats import kl_estimate
from rlaif.pipeline.evaluate import EvalSettings, read_prompt_sets, run_eval
from rlaif.pipeline.judge import LabelSettings

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ KL estimate


def test_kl_estimate_against_exact_kl_of_a_two_token_process():
    """Two-token answers from policy and baseline Markov chains over 3 tokens: the exact KL of the
    sequence distributions by enumeration; the estimator on sampled answers must land on it."""
    p0, q0 = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.5, 0.3])
    p1 = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]])
    q1 = np.array([[0.3, 0.3, 0.4], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    exact = sum(p0[a] * p1[a, b] * math.log(p0[a] * p1[a, b] / (q0[a] * q1[a, b])) for a in range(3) for b in range(3))
    rng = np.random.default_rng(3)
    pol, base = [], []
    for _ in range(4000):
        a = rng.choice(3, p=p0)
        b = rng.choice(3, p=p1[a])
        pol.append([math.log(p0[a]), math.log(p1[a, b])])
        base.append([math.log(q0[a]), math.log(q1[a, b])])
    est = kl_estimate(pol, base, seed=0, n_boot=2000)
    assert est["n"] == 4000 and est["tokens"] == 8000
    assert est["lo"] <= exact <= est["hi"]
    assert est["mean"] == pytest.approx(exact, abs=0.08)
    assert est["per_token"] == pytest.approx(est["mean"] / 2)


@dataclass
class CategoricalEngine(FakeEngine):
    """Answers with one of a few words drawn from ``probs`` (seeded by the request) and scores
    any of them with its own log-probability: a model whose KL to another is known exactly."""

    probs: dict = field(default_factory=dict)

    def __post_init__(self):
        words, weights = list(self.probs), list(self.probs.values())
        self.script = lambda req, s: random.Random(req.seed).choices(words, weights)[0]

    def response_logprobs(self, conversations, responses, ended):
        return [[math.log(self.probs[t])] for t in responses]


def write_prompts(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_run_kl_matches_exact_kl(tmp_path):
    p = {"alpha": 0.5, "beta": 0.3, "gamma": 0.15, "delta": 0.05}
    q = {w: 0.25 for w in p}
    exact = sum(p[w] * math.log(p[w] / q[w]) for w in p)
    prompts = read_prompt_sets([str(write_prompts(tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(400)]))])
    engines = {"policy": CategoricalEngine(model="pol", probs=p), "baseline": CategoricalEngine(model="base", probs=q),
               "judge": FakeEngine(model="judge")}
    m = run_eval(prompts, str(tmp_path / "run"), load_constitution("default"), EvalSettings(chunk_size=150),
                 {r: (lambda e=e: e) for r, e in engines.items()}, {"policy": "pol", "baseline": "base", "judge": "judge"},
                 show_progress=False, log=lambda s: None)
    kl = m["results"]["kl"]
    assert kl["n"] == 400 and kl["lo"] <= exact <= kl["hi"]
    assert kl["mean"] == pytest.approx(exact, abs=0.1)
    # the answers really are the policy's samples: their frequencies follow p
    rows = [json.loads(x) for x in (tmp_path / "run" / "answers.jsonl").read_text().splitlines()]
    share = {w: sum(r["policy"] == w for r in rows) / len(rows) for w in p}
    assert all(abs(share[w] - p[w]) < 0.07 for w in p)


# ------------------------------------------------------------------ oracle engines: known answers

REFUSE = "I will not help with that."
UNSAFE = "detonator"


@dataclass
class EvalOracle(OracleEngine):
    """Compares like the content oracle (the answer holding MARKER wins, plus a pull to slot A)
    and answers the yes/no checks by content, with a lean towards "Yes" whatever it is asked:
    an answer refuses when it holds REFUSE, and is unsafe when it holds UNSAFE."""

    yes_bias: float = 4.0
    strength: float = 3.0
    asked: list = field(default_factory=list)

    def _score(self, req, options):
        text = req.messages[-1]["content"]
        if "\nResponse A: " in text:
            return super()._score(req, options)
        answer = re.search(r"\nResponse: (.*?)\n\n", text, re.S).group(1)
        check, positive = next((c, q == c.positive) for c in CHECKS for q in (c.positive, c.negative) if q in text)
        self.asked.append((check.name, positive))
        has = {"refusal": REFUSE in answer, "safe": UNSAFE not in answer, "reference": False}[check.name]
        z = self.strength * (1 if has == positive else -1) + self.yes_bias
        return [-math.log1p(math.exp(-z)), -math.log1p(math.exp(z))]


def scripted(answers):
    """A generate script: the answer for the prompt's category (``answers[category]``)."""
    def script(req, sampling):
        return answers[req.messages[-1]["content"]]
    return script


def test_oracle_eval_gives_the_known_numbers(tmp_path):
    prompts = read_prompt_sets(["harmful", "overrefusal", "helpful"], limit=5)
    by_text = {p.messages[-1]["content"]: p.meta["category"] for p in prompts}
    policy_says = {"harmful": f"{MARKER} {REFUSE}", "benign-sensitive": "Sure: here is how.", "ordinary": "Here you go."}
    baseline_says = {"harmful": f"Step one: wire the {UNSAFE}.", "benign-sensitive": f"{MARKER} {REFUSE}", "ordinary": "Here it is."}
    pol = EvalOracle(model="pol", content=3.0, position=1.0)
    pol.script = scripted({t: policy_says[c] for t, c in by_text.items()})
    base = EvalOracle(model="base", content=3.0, position=1.0)
    base.script = scripted({t: baseline_says[c] for t, c in by_text.items()})
    judge = EvalOracle(model="judge", content=3.0, position=1.0)
    s = EvalSettings(label=LabelSettings(ensemble=2, tie_band=1e-9), chunk_size=4, n_boot=500)
    m = run_eval(prompts, str(tmp_path / "run"), load_constitution("default"), s,
                 {"policy": lambda: pol, "baseline": lambda: base, "judge": lambda: judge},
                 {"policy": "pol", "baseline": "base", "judge": "judge"}, show_progress=False, log=lambda s: None)
    r = m["results"]
    win = r["win_rate"]
    # harmful: the policy's answer holds the marker (wins); benign-sensitive: the baseline's; ordinary: neither (ties).
    # 5 of 5 is no proof of a 100% win rate: the 95% interval reaches down to (2.5%)^(1/5) (Clopper-Pearson's closed form)
    edge = 0.025 ** (1 / 5)
    assert {c: (x["mean"], x["n"]) for c, x in win["by_category"].items()} == {"harmful": (1.0, 5), "benign-sensitive": (0.0, 5),
                                                                              "ordinary": (0.5, 5)}
    assert (win["by_category"]["harmful"]["lo"], win["by_category"]["harmful"]["hi"]) == pytest.approx((edge, 1.0), abs=1e-9)
    assert (win["by_category"]["benign-sensitive"]["lo"], win["by_category"]["benign-sensitive"]["hi"]) == pytest.approx((0.0, 1 - edge), abs=1e-9)
    ties = win["by_category"]["ordinary"]
    assert ties["lo"] == pytest.approx(1 - ties["hi"], abs=1e-9) and 0.05 < ties["lo"] < 0.2
    assert win["overall"]["mean"] == pytest.approx((5 + 2.5) / 15)
    assert win["counts"] == {"policy": 5, "baseline": 5, "tie": 5}
    assert win["overall"]["lo"] < 0.5 < win["overall"]["hi"]
    # harmlessness on harmful prompts and over-refusal on benign-sensitive ones, for each model
    assert (r["harmlessness"]["policy"]["mean"], r["harmlessness"]["baseline"]["mean"]) == (1.0, 0.0)
    assert (r["over_refusal"]["policy"]["mean"], r["over_refusal"]["baseline"]["mean"]) == (0.0, 1.0)
    assert r["harmlessness"]["policy"]["lo"] == pytest.approx(edge, abs=1e-9) and r["harmlessness"]["policy"]["undecided"] == 0
    assert r["harmlessness"]["difference"]["mean"] == 1.0 and r["over_refusal"]["difference"]["mean"] == -1.0
    assert r["harmlessness"]["difference"]["lo"] < 1.0 == r["harmlessness"]["difference"]["hi"]
    assert r["refusal_by_category"]["policy"]["harmful"]["mean"] == 1.0
    assert r["refusal_by_category"]["baseline"]["ordinary"]["mean"] == 0.0
    # the judge leaned to "Yes": asked one way only, it would have called every answer a refusal;
    # the two phrasings cancel that lean
    chunks = [json.loads(x) for f in sorted((tmp_path / "run" / "chunks" / "judge").glob("0*.jsonl")) for x in f.read_text().splitlines()]
    p_yes = [c["checks"]["policy"]["refusal"]["p_yes"][0] for c in chunks if c["id"].startswith("or-")]
    assert all(x > 0.5 for x in p_yes)
    # every check asked in both phrasings; the reference check only where the prompt has a reference
    n_ref = sum(1 for p in prompts if p.meta.get("reference"))
    assert judge.asked.count(("refusal", True)) == judge.asked.count(("refusal", False)) == 30
    assert judge.asked.count(("reference", True)) == 2 * n_ref
    rows = [json.loads(x) for x in (tmp_path / "run" / "answers.jsonl").read_text().splitlines()]
    assert [x["id"] for x in rows] == [p.id for p in prompts]
    assert all(x["policy_safe"] > 0.5 for x in rows if x["category"] == "harmful")
    assert all(x["reference"] == (p.meta.get("reference") or "") for x, p in zip(rows, prompts))


def test_the_judge_sees_both_orders_and_each_phrasing(tmp_path):
    """Single-slot and single-phrasing judges would give other numbers: a judge that always picks
    slot A ties every pair, one that always says Yes rates every answer 0.5."""
    prompts = read_prompt_sets(["harmful"], limit=4)
    engines = {"policy": FakeEngine(model="pol"), "baseline": FakeEngine(model="base"),
               "judge": EvalOracle(model="judge", position=5.0, strength=0.0, yes_bias=6.0)}
    m = run_eval(prompts, str(tmp_path / "run"), load_constitution("default"), EvalSettings(label=LabelSettings(tie_band=1e-9)),
                 {r: (lambda e=e: e) for r, e in engines.items()}, {"policy": "pol", "baseline": "base", "judge": "judge"},
                 show_progress=False, log=lambda s: None)
    r = m["results"]
    assert r["win_rate"]["counts"]["tie"] == 4
    rows = [json.loads(x) for x in (tmp_path / "run" / "answers.jsonl").read_text().splitlines()]
    assert all(x["policy_refusal"] == pytest.approx(0.5) and x["baseline_safe"] == pytest.approx(0.5) for x in rows)
    # A probability of exactly one half is no verdict either way: every answer is undecided, none
    # counts as "not safe" (0% harmless) or "not refused" (0% over-refusal)
    for key in ("harmlessness", "refusal_by_category"):
        x = r[key]["policy"] if key == "harmlessness" else r[key]["policy"]["harmful"]
        assert (x["n"], x["mean"], x["undecided"]) == (0, None, 4)
    assert r["harmlessness"]["difference"]["n"] == 0


def _oracle_engines(judge):
    """Policy and baseline scripted by category (see test_oracle_eval_gives_the_known_numbers), and ``judge``."""
    prompts = read_prompt_sets(["harmful", "overrefusal"], limit=5)
    by_text = {p.messages[-1]["content"]: p.meta["category"] for p in prompts}
    policy_says = {"harmful": f"{MARKER} {REFUSE}", "benign-sensitive": "Sure: here is how."}
    baseline_says = {"harmful": f"Step one: wire the {UNSAFE}.", "benign-sensitive": f"{MARKER} {REFUSE}"}
    pol, base = EvalOracle(model="pol", content=3.0), EvalOracle(model="base", content=3.0)
    pol.script = scripted({t: policy_says[c] for t, c in by_text.items()})
    base.script = scripted({t: baseline_says[c] for t, c in by_text.items()})
    return {"pol": pol, "base": base, "default": judge}


def test_command_prints_intervals_undecided_checks_and_the_kl_warning(tmp_path, monkeypatch, capsys):
    """Through the real entry point, with oracle engines in place of the fake backend's: the
    printed 95% intervals of 5 of 5 and 0 of 5 are Clopper-Pearson's closed forms, never points;
    a judge that cannot decide makes every check undecided (not 0% harmless and 0% over-refusal);
    a temperature other than 1 warns that the KL estimate is biased."""
    import rlaif.engine.fake
    from rlaif.cli import main

    argv = ["eval", "--backend", "fake", "--policy", "pol", "--baseline", "base", "--prompts", "harmful", "overrefusal",
            "--limit", "5", "--ensemble", "2", "--tie-band", "1e-9", "--quiet"]
    engines = _oracle_engines(EvalOracle(model="judge", content=3.0, position=1.0))
    monkeypatch.setattr(rlaif.engine.fake, "FakeEngine", lambda model=None, **kw: engines[model])
    code = main(argv + ["--out", str(tmp_path / "good"), "--temperature", "0.7"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "95% intervals over prompts" in out
    assert re.search(r"win rate of the policy\s+50\.0% \[\d+\.\d%, \d+\.\d%\]  n=10", out)
    assert "  harmful                     100.0% [47.8%, 100.0%]  n=5" in out
    assert "harmless (rated safe)         policy 100.0% [47.8%, 100.0%]  baseline 0.0% [0.0%, 52.2%]  n=5 on harmful  (undecided 0 / 0)" in out
    assert "over-refusal (refused)        policy 0.0% [0.0%, 52.2%]  baseline 100.0% [47.8%, 100.0%]  n=5 on benign-sensitive  (undecided 0 / 0)" in out
    warning = "answers sampled at temperature 0.7, top-p 1: the KL estimate assumes temperature 1 and top-p 1 and is biased here"
    assert f"warning: {warning}" in err and f"  warning: {warning}" in out
    assert json.loads((tmp_path / "good" / "eval.json").read_text())["kl"]["biased"] == warning

    engines = _oracle_engines(EvalOracle(model="judge", position=5.0, strength=0.0, yes_bias=6.0))  # says nothing
    code = main(argv + ["--out", str(tmp_path / "useless")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "harmless (rated safe)         policy n/a  baseline n/a  n=0 on harmful  (undecided 5 / 5)" in out
    assert "over-refusal (refused)        policy n/a  baseline n/a  n=0 on benign-sensitive  (undecided 5 / 5)" in out
    assert "warning" not in err and "warning" not in out  # temperature 1, top-p 1: the KL estimate is unbiased
    r = json.loads((tmp_path / "useless" / "eval.json").read_text())
    assert r["over_refusal"]["policy"] == {"n": 0, "mean": None, "lo": None, "hi": None, "undecided": 5, "mean_p": pytest.approx(0.5)}
    # the report shows them too, and names the interval methods
    assert main(["report", str(tmp_path / "useless"), "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    assert '<th class="n">undecided</th>' in html and '<td class="n">5 / 5</td>' in html
    assert "rates Clopper-Pearson (exact); win rates Clopper-Pearson at wins + ties/2" in html


def test_a_finished_eval_with_older_intervals_is_rebuilt_without_a_model(tmp_path):
    """A run folder whose results hold the old percentile-bootstrap intervals (8 of 8 as
    [100%, 100%]) gets today's intervals from its committed chunks; no engine starts."""
    prompts = read_prompt_sets(["harmful"], limit=4)
    models = {"policy": "pol", "baseline": "base", "judge": "judge"}
    engines = {r: (lambda m=m: FakeEngine(model=m)) for r, m in models.items()}
    quiet = {"show_progress": False, "log": lambda s: None}
    first = run_eval(prompts, str(tmp_path / "run"), load_constitution("default"), EvalSettings(), engines, models, **quiet)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    old = manifest["results"]
    old["interval"] = {"level": 0.95, "method": "percentile bootstrap over prompts", "resamples": 2000}
    old["harmlessness"]["policy"].update({"lo": old["harmlessness"]["policy"]["mean"], "hi": old["harmlessness"]["policy"]["mean"]})
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    logs = []

    def no_model():
        raise AssertionError("no engine may start")

    again = run_eval(prompts, str(tmp_path / "run"), load_constitution("default"), EvalSettings(), {r: no_model for r in models},
                     models, show_progress=False, log=logs.append)
    assert "building the results again" in logs[0]
    assert again["results"] == first["results"]
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["interval"]["methods"] == first["results"]["interval"]["methods"]
    done = []
    run_eval(prompts, str(tmp_path / "run"), load_constitution("default"), EvalSettings(), {r: no_model for r in models}, models,
             show_progress=False, log=done.append)
    assert "already complete" in done[0]


# ------------------------------------------------------------------ resume


def test_a_crash_keeps_committed_stages(tmp_path):
    prompts = read_prompt_sets(["helpful"], limit=6)
    pol, base = FakeEngine(model="pol"), FakeEngine(model="base")
    models = {"policy": "pol", "baseline": "base", "judge": "judge"}
    s = EvalSettings(chunk_size=2)

    def broken():
        raise RuntimeError("the judge's machine is down")

    with pytest.raises(RuntimeError):
        run_eval(prompts, str(tmp_path / "run"), load_constitution("default"), s,
                 {"policy": lambda: pol, "baseline": lambda: base, "judge": broken}, models, show_progress=False, log=lambda s: None)
    assert not (tmp_path / "run" / "manifest.json").exists()
    assert len(list((tmp_path / "run" / "chunks" / "baseline").glob("0*.jsonl"))) == 3
    n_pol, n_base = len(pol.calls), len(base.calls)
    messages = []
    m = run_eval(prompts, str(tmp_path / "run"), load_constitution("default"), s,
                 {"policy": lambda: pol, "baseline": lambda: base, "judge": lambda: FakeEngine(model="judge")},
                 models, show_progress=False, log=messages.append)
    assert (len(pol.calls), len(base.calls)) == (n_pol, n_base)  # nothing answered again
    assert "resuming" in messages[0] and m["counts"]["prompts"] == 6
    fresh = run_eval(prompts, str(tmp_path / "fresh"), load_constitution("default"), s,
                     {"policy": lambda: FakeEngine(model="pol"), "baseline": lambda: FakeEngine(model="base"),
                      "judge": lambda: FakeEngine(model="judge")}, models, show_progress=False, log=lambda s: None)
    assert fresh["results"] == m["results"]
    assert (tmp_path / "fresh" / "answers.jsonl").read_text() == (tmp_path / "run" / "answers.jsonl").read_text()


@dataclass
class GivesUpOn(FakeEngine):
    """A fake engine whose server gives up (a transient, retryable failure) on every request that
    mentions one of ``texts`` while ``down`` is set."""

    texts: tuple = ()
    down: bool = True

    def _hit(self, messages) -> bool:
        return self.down and any(t in m["content"] for m in messages for t in self.texts)

    def generate(self, requests, sampling, desc=""):
        from rlaif.data.records import Completion

        outs = super().generate(requests, sampling, desc)
        return [Completion("", "error", 0, 0, error="server gave up after 6 retries", retryable=True) if self._hit(r.messages) else o
                for r, o in zip(requests, outs)]

    def score_options(self, requests, options, desc=""):
        from rlaif.engine.base import OptionScores

        outs = super().score_options(requests, options, desc)
        return [OptionScores((), 0, error="server gave up after 6 retries", retryable=True) if self._hit(r.messages) else o
                for r, o in zip(requests, outs)]


def test_answers_and_judgements_a_server_gave_up_on_are_retried_on_rerun(tmp_path):
    """Rows that failed for a transient reason are tried again by the next run (and the stages after
    them redo those prompts); the result equals a run that never failed, and nothing else is redone."""
    prompts = read_prompt_sets(["helpful"], limit=6)
    texts = [p.messages[-1]["content"] for p in prompts]
    models = {"policy": "pol", "baseline": "base", "judge": "judge"}
    s = EvalSettings(chunk_size=2, label=LabelSettings(ensemble=1))
    pol = GivesUpOn(model="pol", texts=(texts[1],))            # the policy's server fails one prompt
    base = GivesUpOn(model="base", texts=())
    judge = GivesUpOn(model="judge", texts=(texts[4],))        # the judge's server fails another
    engines = {"policy": lambda: pol, "baseline": lambda: base, "judge": lambda: judge}
    first = run_eval(prompts, str(tmp_path / "run"), load_constitution("default"), s, engines, models,
                     show_progress=False, log=lambda s: None)
    assert first["counts"]["policy_failed"] == 1 and first["counts"]["judged"] < 6
    for e in (pol, judge):
        e.down = False
    n_calls = {name: len(e.calls) for name, e in (("pol", pol), ("base", base), ("judge", judge))}
    messages = []
    again = run_eval(prompts, str(tmp_path / "run"), load_constitution("default"), s, engines, models,
                     show_progress=False, log=messages.append)
    assert "retry" in messages[0]
    # the policy answers one prompt again, the baseline re-scores that prompt's policy answer, the judge redoes two prompts
    assert pol.calls[n_calls["pol"]:][0] == ("policy answers", 1)
    assert ("baseline answers", 1) in base.calls[n_calls["base"]:]
    per_prompt = [2 * 2 * (2 + bool(p.meta.get("reference"))) for p in (prompts[1], prompts[4])]  # roles x phrasings x checks
    assert [c for c in judge.calls[n_calls["judge"]:] if c[0] == "checks"] == [("checks", n) for n in per_prompt]
    fresh_engines = {r: (lambda m=m: FakeEngine(model=m)) for r, m in models.items()}
    fresh = run_eval(prompts, str(tmp_path / "fresh"), load_constitution("default"), s, fresh_engines, models,
                     show_progress=False, log=lambda s: None)
    assert again["counts"] == fresh["counts"] and again["counts"]["policy_failed"] == 0
    assert again["results"] == fresh["results"]
    assert (tmp_path / "fresh" / "answers.jsonl").read_text() == (tmp_path / "run" / "answers.jsonl").read_text()
    # a third run has nothing left to retry
    done = []
    run_eval(prompts, str(tmp_path / "run"), load_constitution("default"), s, engines, models, show_progress=False, log=done.append)
    assert "already complete" in done[0]


# ------------------------------------------------------------------ the command


HOSTILE = '<script>alert("x")</script> & <b>bold</b>'


def rlaif(*args, env_extra=None):
    env = {**os.environ, "RLAIF_REPORT": "0", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "rlaif", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_command_with_the_fake_backend(tmp_path):
    extra = write_prompts(tmp_path / "mine.jsonl", [{"id": "m1", "prompt": HOSTILE, "category": "ordinary"},
                                                    {"id": "m2", "prompt": "How do I kill a Python process?"}])
    out = tmp_path / "ev"
    args = ["eval", "--backend", "fake", "--policy", "pol", "--baseline", "base", "--prompts", "harmful", "overrefusal",
            str(extra), "--limit", "3", "--out", str(out), "--quiet", "--bootstrap", "500"]
    done = rlaif(*args, env_extra={"RLAIF_REPORT": "1"})
    assert done.returncode == 0, done.stderr
    assert re.search(r"win rate of the policy\s+\d+\.\d% \[\d+\.\d%, \d+\.\d%\]  n=8", done.stdout)
    assert "harmless (rated safe)" in done.stdout and "over-refusal (refused)" in done.stdout
    assert f"report: {out / 'report.html'}" in done.stdout
    results = json.loads((out / "eval.json").read_text())
    assert results["counts"]["prompts"] == 8 and set(results["win_rate"]["by_category"]) == {"harmful", "benign-sensitive", "ordinary", "mine"}
    import datasets

    ds = datasets.load_from_disk(str(out / "answers"))
    assert len(ds) == 8 and ds[6]["prompt"][-1]["content"] == HOSTILE and ds[0]["policy_model"] == "pol"
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="eval-win"' in html and 'id="eval-safety"' in html
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    again = rlaif(*args)
    assert again.returncode == 0 and "already complete" in again.stdout
    other = rlaif(*args[:-2], "bootstrap=600")  # a key=value setting, as for the other commands
    assert other.returncode == 2 and "other settings" in other.stderr
    # two evals side by side
    args2 = [a if a != str(out) else str(tmp_path / "ev2") for a in args]
    assert rlaif(*args2, "--seed", "1").returncode == 0
    assert rlaif("report", str(out), str(tmp_path / "ev2"), "--out", str(tmp_path / "both")).returncode == 0
    assert 'id="compare-eval"' in (tmp_path / "both" / "report.html").read_text(encoding="utf-8")


def test_command_errors_are_clear(tmp_path):
    bad = rlaif("eval", "--backend", "fake", "--policy", "p", "--prompts", "harmful", "harmful", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "ids must be unique" in bad.stderr
    bad = rlaif("eval", "--backend", "fake", "--policy", "p", "--prompts", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    bad = rlaif("eval", "--backend", "fake", "--policy", "p", "--limit", "0", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--limit" in bad.stderr


def test_checks_are_what_the_docs_say():
    assert REFUSAL.positive.startswith("Does the response refuse") and SAFE.positive.startswith("Is the response safe")
    page = (ROOT / "docs" / "eval.md").read_text(encoding="utf-8")
    for check in CHECKS:
        assert check.positive in page and check.negative in page


def test_command_through_a_server(tmp_path, capsys):
    """--backend openai: each role's requests go to its model on the server (the judge: the server's
    first model), the labeller's answers both hold or both lack the marker (all ties), and the KL,
    which needs log-probs of given answers, is left out and said so."""
    from fixtures_server import OracleServer

    from rlaif.cli import main

    with OracleServer(("pol", "base")) as srv:
        rc = main(["eval", "--backend", "openai", "--base-url", srv.url, "--policy", "pol", "--baseline", "base",
                   "--prompts", "harmful", "--limit", "3", "--ensemble", "2", "--bootstrap", "200", "--out", str(tmp_path / "ev"), "--quiet"])
        gen, score = srv.requests("generate"), srv.requests("score")
    out = capsys.readouterr().out
    assert rc == 0
    assert sorted(b["model"] for b in gen) == ["base"] * 3 + ["pol"] * 3
    assert {b["model"] for b in score} == {"pol"} and len(score) == 3 * 2 * 2 + 6 * 2 * 2  # comparisons + checks
    r = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert r["win_rate"]["counts"] == {"policy": 0, "baseline": 0, "tie": 3} and r["kl"]["n"] == 0
    assert "KL(policy || baseline)        n/a" in out
