"""``rlaif label-steps``: step labels from the judge (an oracle that rejects a known step), from
Monte-Carlo completion (a scripted engine with known success rates per prefix), and from implicit
rewards (engines with known log-probabilities); the stepwise dataset's schema; the run folder
(resume, transient failures redone); and the command through its real entry point with the fake
and openai (loopback server) backends."""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import datasets
import pytest
from fixtures_server import Reply, ScriptedServer, chat_completion, models_list, tokenize_answer

from rlaif.cli import main
from rlaif.constitution import load_constitution
from rlaif.data.records import PromptRecord
from rlaif.data.steps import StepSplitter
from rlaif.engine.failures import FAILED_EXIT
from rlaif.engine.base import SamplingConfig
from rlaif.engine.fake import FakeEngine
from rlaif.pipeline.label_steps import StepLabelSettings, run_label_steps
from rlaif.pipeline.step_sources import MCSettings, mc_label, read_solutions, solution_from
from rlaif.reward.judge import StepJudgeSettings, judge_steps

MARK = "zebra"
_STEP = re.compile(r"\n\nStep (\d+): (.*?)\n\nPrinciple:", re.S)


def judged_step(question: str) -> tuple[int, str, bool]:
    """(step number, step text, positive phrasing?) of a step-judge question."""
    m = _STEP.search(question)
    assert m, question
    return int(m.group(1)), m.group(2), "acceptable under this principle" in question


def oracle_p_yes(question: str, lean: float | None = None) -> float:
    """The content oracle: a step holding the marker is unacceptable; ``lean``: answer Yes with that
    probability whatever is asked."""
    if lean is not None:
        return lean
    _, step, positive = judged_step(question)
    ok = MARK not in step
    return 0.9 if ok == positive else 0.1


def oracle_engine(lean=None, seen=None):
    def scorer(req, options):
        q = req.messages[-1]["content"]
        if seen is not None:
            seen.append(q)
        p = oracle_p_yes(q, lean)
        return [math.log(p), math.log(1 - p)]

    return FakeEngine(model="oracle", scorer=scorer)


def rec(i, text="add some numbers"):
    return PromptRecord(f"q{i}", ({"role": "user", "content": text},), {})


def solutions(marked):
    """Solution i has 4 steps; step marked[i] (or none) holds the marker."""
    out = []
    for i, j in enumerate(marked):
        steps = [f"step {k} of solution {i}" + (f" with a {MARK}" if k == j else "") for k in range(4)]
        out.append(solution_from(rec(i), f"s{i}", None, steps, StepSplitter()))
    return out


def test_an_oracle_judge_that_rejects_a_known_step_labels_exactly_that_step():
    sols = solutions([2, None, 0, 3])
    seen = []
    const = load_constitution("default")
    got = judge_steps(oracle_engine(seen=seen), const, [(x.id, x.prompt, x.steps) for x in sols], StepJudgeSettings(ensemble=2))
    for x, v, j in zip(sols, got, [2, None, 0, 3]):
        assert v.error is None
        assert v.labels() == [k != j for k in range(4)], (x.id, v.probs)
        assert v.probs == [pytest.approx(0.1 if k == j else 0.9) for k in range(4)]
        assert len(v.per_principle) == 2
    # every question shows exactly the steps before the judged one
    for q in seen:
        k, step, _ = judged_step(q)
        before = q.split("Solution so far:\n", 1)[1].split("\n\nStep ", 1)[0]
        assert before == "(no steps yet)" if k == 1 else before.count("Step ") == k - 1
    assert len(seen) == 4 * 4 * 2 * 2  # solutions x steps x principles x phrasings


def test_a_judge_that_says_yes_to_everything_gives_ties_and_a_warning(tmp_path):
    sols = solutions([1, None])
    s = StepLabelSettings("judge", judge=StepJudgeSettings(ensemble=1))
    m = run_label_steps(sols, str(tmp_path / "r"), s, {"judge": lambda: oracle_engine(lean=0.9)}, {"judge": "oracle"},
                        const=load_constitution("default"), show_progress=False, log=lambda _: None)
    assert m["diagnostics"]["phrasing_agreement"] == 0.0 and m["diagnostics"]["yes_rate"] == pytest.approx(0.9)
    assert m["diagnostics"]["ties"] == 8 and m["counts"]["steps_correct"] == 0
    assert any("phrasings agree" in w for w in m["warnings"])


# ------------------------------------------------------------------ Monte-Carlo completion
RATES = {0: 0.8, 1: 0.3, 2: 0.05}
"""P(a continuation from the prefix ending with step i reaches the right answer)."""


def uniform(seed) -> float:
    return int(hashlib.sha256(str(seed).encode()).hexdigest()[:8], 16) / 16 ** 8


def rate_script(req, sampling):
    steps_done = req.assistant_prefix.count("\n")
    return "so the answer is RIGHT" if uniform(req.seed) < RATES[steps_done - 1] else "so the answer is WRONG"


def right(prompts, responses):
    return [1.0 if r.rstrip().endswith("RIGHT") else 0.0 for r in responses]


def test_monte_carlo_labels_match_known_success_rates_within_sampling_error():
    k = 400
    prefixes = []
    engine = FakeEngine(script=lambda req, s: (prefixes.append(req.assistant_prefix), rate_script(req, s))[1])
    sols = [solution_from(rec(0), "a", "one\ntwo\nthree\nfinal WRONG", None, StepSplitter()),
            solution_from(rec(1), "b", "one\ntwo\nthree\nfinal RIGHT", None, StepSplitter())]
    got = mc_label(engine, right, sols, MCSettings(k, SamplingConfig(1.0, 1.0, 32), 1.0), seed=3)
    assert set(prefixes) == {"one\n", "one\ntwo\n", "one\ntwo\nthree\n"} and len(prefixes) == 2 * 3 * k
    for g, last in zip(got, (0.0, 1.0)):
        soft = g["step_scores"]
        for i, p in RATES.items():
            assert abs(soft[i] - p) <= 4 * math.sqrt(p * (1 - p) / k), (i, soft[i], p)
        assert soft[3] == last  # the last step is the solution's own correctness
        assert g["labels"] == [x > 0 for x in soft] and g["mc_correct"][:3] == [round(x * k) for x in soft[:3]]
    # the two solutions share their prefixes' rates but not their samples
    assert got[0]["step_scores"][:3] != got[1]["step_scores"][:3]


def test_monte_carlo_hard_label_is_any_correct_and_threshold_counts():
    engine = FakeEngine(script=lambda req, s: "RIGHT" if req.seed % 4 == 0 else "WRONG")
    sol = solution_from(rec(0), "a", "x\ny", None, StepSplitter())
    score = lambda ps, rs: [0.7 if r.endswith("RIGHT") else 0.0 for r in rs]  # noqa: E731
    loose = mc_label(engine, score, [sol], MCSettings(8, SamplingConfig(1.0, 1.0, 8), 0.5), seed=0)[0]
    strict = mc_label(engine, score, [sol], MCSettings(8, SamplingConfig(1.0, 1.0, 8), 1.0), seed=0)[0]
    assert 0 < loose["step_scores"][0] < 1 and loose["labels"][0] is True
    assert strict["step_scores"] == [0.0, 0.0] and strict["labels"] == [False, False]


# ------------------------------------------------------------------ implicit rewards
class LogprobEngine(FakeEngine):
    """log p of a word: ``table.get(word, other)``; of the end token: ``end``."""

    def __init__(self, table, other, end):
        super().__init__(model=f"lp-{other}")
        self.table, self.other, self.end = table, other, end

    def response_logprobs(self, conversations, responses, ended):
        return [[self.table.get(w, self.other) for w in r.split()] + ([self.end] if e else []) for r, e in zip(responses, ended)]


def test_implicit_step_rewards_are_beta_times_the_log_ratio_summed_over_each_steps_tokens(tmp_path):
    policy = LogprobEngine({"good": 0.0}, -1.0, -0.5)  # log-ratio +1 for "good", 0 for other words, +0.5 for the end
    reference = LogprobEngine({}, -1.0, -1.0)
    sol = solution_from(rec(0), "a", "good good x\ny z\n\ngood w", None, StepSplitter())
    s = StepLabelSettings("implicit", beta=0.2)
    m = run_label_steps([sol], str(tmp_path / "r"), s, {"policy": lambda: policy, "reference": lambda: reference},
                        {"policy": "pi", "reference": "ref"}, show_progress=False, log=lambda _: None)
    row = json.loads((tmp_path / "r" / "steps.jsonl").read_text().splitlines()[0])
    assert row["step_rewards"] == [pytest.approx(0.4), pytest.approx(0.0), pytest.approx(0.2 * 1.5)]
    assert row["labels"] == [True, False, True] and row["reference_model"] == "ref"
    assert row["step_scores"] == [pytest.approx(1 / (1 + math.exp(-x))) for x in row["step_rewards"]]
    assert m["counts"]["labelled"] == 1


# ------------------------------------------------------------------ schema, run folder
def check_stepwise_schema(folder: Path, source: str):
    """TRL's stepwise-supervision format: prompt text, completions = steps, labels = one bool per step."""
    ds = datasets.load_from_disk(str(folder / "steps"))
    f = ds.features
    assert f["prompt"].dtype == "string" and f["completions"].feature.dtype == "string" and f["labels"].feature.dtype == "bool"
    assert f["step_scores"].feature.dtype == "float64"
    rows = [json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines()]
    assert rows == [dict(r) for r in ds]
    for r in rows:
        assert isinstance(r["prompt"], str) and r["prompt"]
        assert len(r["completions"]) == len(r["labels"]) == len(r["step_scores"]) >= 1
        assert all(isinstance(b, bool) for b in r["labels"]) and all(0 <= x <= 1 for x in r["step_scores"])
        assert r["label_source"] == {"mc": "monte-carlo"}.get(source, source)
    from rlaif.train.prm import check_row

    for i, r in enumerate(rows):
        check_row(r, f"row {i}")  # the PRM trainer reads it
    return rows


def test_solutions_file_and_the_stepwise_rows(tmp_path):
    path = tmp_path / "sol.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "p?", "response": "one\n\n```\ncode\n\nmore\n```\ntwo"}) + "\n"
                    + json.dumps({"id": "b", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q?"}],
                                  "completions": ["x", "y zebra"]}) + "\n")
    sols = read_solutions(path, StepSplitter())
    assert sols[0].steps == ["one", "```\ncode\n\nmore\n```", "two"] and sols[1].steps == ["x", "y zebra"]
    run_label_steps(sols, str(tmp_path / "r"), StepLabelSettings("judge", judge=StepJudgeSettings(ensemble=1)),
                    {"judge": lambda: oracle_engine()}, {"judge": "oracle"}, const=load_constitution("default"),
                    show_progress=False, log=lambda _: None)
    rows = check_stepwise_schema(tmp_path / "r", "judge")
    assert [r["labels"] for r in rows] == [[True, True, True], [True, False]]
    assert rows[1]["prompt"] == "q?" and rows[1]["prompt_messages"][0] == {"role": "system", "content": "S"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(ValueError, match="needs a 'response'"):
        read_solutions(bad, StepSplitter())


# ------------------------------------------------------------------ the command, fake backend
def prompts_file(folder: Path, n=3) -> Path:
    p = folder / "prompts.jsonl"
    p.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"problem {i}"}) + "\n" for i in range(n)))
    return p


def fake_solution_reward(prompts, responses):
    return [float(len(r) % 2) for r in responses]


def test_label_steps_command_with_the_fake_backend(tmp_path, capsys):
    p = prompts_file(tmp_path)
    assert main(["label-steps", "--prompts", str(p), "--samples", "2", "--out", str(tmp_path / "mc"), "--source", "mc",
                 "--reward-fn", "test_label_steps:fake_solution_reward", "--k", "2", "--step-split", "marker", "--step-pattern", " ",
                 "--backend", "fake", "--quiet"]) == 0
    rows = check_stepwise_schema(tmp_path / "mc", "monte-carlo")
    assert len(rows) == 6 and {r["prompt_id"] for r in rows} == {"p0", "p1", "p2"} and all("mc_correct" in r for r in rows)
    assert "solutions 6" in capsys.readouterr().out
    # the same command again: nothing to do
    assert main(["label-steps", "--prompts", str(p), "--samples", "2", "--out", str(tmp_path / "mc"), "--source", "mc",
                 "--reward-fn", "test_label_steps:fake_solution_reward", "--k", "2", "--step-split", "marker", "--step-pattern", " ",
                 "--backend", "fake", "--quiet"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert main(["label-steps", "--prompts", str(p), "--samples", "1", "--out", str(tmp_path / "j"), "--source", "judge",
                 "--ensemble", "1", "--step-split", "marker", "--step-pattern", " ", "--backend", "fake", "--quiet"]) == 0
    check_stepwise_schema(tmp_path / "j", "judge")
    assert main(["label-steps", "--prompts", str(p), "--samples", "1", "--out", str(tmp_path / "i"), "--source", "implicit",
                 "--model", "dpo", "--reference", "ref", "--step-split", "marker", "--step-pattern", " ", "--backend", "fake",
                 "--quiet"]) == 0
    rows = check_stepwise_schema(tmp_path / "i", "implicit")
    assert rows[0]["model"] == "dpo" and rows[0]["reference_model"] == "ref"
    capsys.readouterr()


@pytest.mark.parametrize("argv, why", [
    (["--source", "mc"], "one of --solutions"),
    (["--prompts", "P", "--source", "mc", "--reward-fn", "m:f"], "--samples"),
    (["--prompts", "P", "--samples", "1", "--source", "mc"], "--reward-fn"),
    (["--prompts", "P", "--samples", "1", "--source", "judge", "--reward-fn", "m:f"], "mc only"),
    (["--prompts", "P", "--samples", "1", "--source", "mc", "--reward-fn", "m:f", "--step-split", "regex"], "needs a pattern"),
])
def test_label_steps_input_errors_exit_2(tmp_path, capsys, argv, why):
    argv = [str(prompts_file(tmp_path)) if a == "P" else a for a in argv]
    assert main(["label-steps", "--out", str(tmp_path / "o"), "--backend", "fake", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlaif: error:") and why in err and err.count("\n") == 1


# ------------------------------------------------------------------ the command, openai backend (loopback oracle)
class StepServer(ScriptedServer):
    """Writes solutions "first step\\nsecond <MARK for odd prompts>\\nthird" and continues a partial solution
    with "RIGHT" or "WRONG" by seed; answers step-judge questions as the content oracle does. ``down``:
    every chat request for a prompt holding "problem 1" fails with 503 (a server that gave up on it)."""

    def __init__(self):
        self.down = False
        super().__init__(self._answer)

    def _answer(self, method, path, body, attempt):
        if path == "/v1/models":
            return Reply(200, models_list("m"))
        if path == "/tokenize":
            return Reply(200, tokenize_answer(body))
        msgs = body["messages"]
        if self.down and any("problem 1" in m["content"] for m in msgs):
            return Reply(503, {"error": {"message": "overloaded"}})
        if "allowed_token_ids" in body:
            p = oracle_p_yes(msgs[-1]["content"])
            ids = body["allowed_token_ids"]
            top = [{"token": f"token_id:{ids[0]}", "logprob": math.log(p), "bytes": []},
                   {"token": f"token_id:{ids[1]}", "logprob": math.log(1 - p), "bytes": []}]
            return Reply(200, chat_completion("Yes", "length", 50, 1, logprobs={"content": [dict(top[0], top_logprobs=top)]}))
        if body.get("continue_final_message"):
            return Reply(200, chat_completion("RIGHT" if body["seed"] % 2 else "WRONG"))
        odd = int(msgs[-1]["content"].split()[-1]) % 2
        return Reply(200, chat_completion(f"first step\nsecond{' ' + MARK if odd else ''}\nthird"))


def test_label_steps_command_with_the_openai_backend_judge_and_monte_carlo(tmp_path, capsys):
    p = prompts_file(tmp_path, 4)
    with StepServer() as srv:
        base = ["label-steps", "--prompts", str(p), "--samples", "1", "--backend", "openai", "--base-url", srv.url,
                "--max-retries", "0", "--max-concurrency", "4", "--quiet"]  # within the test server's listen backlog
        assert main([*base, "--out", str(tmp_path / "j"), "--source", "judge", "--ensemble", "2"]) == 0
        rows = check_stepwise_schema(tmp_path / "j", "judge")
        for r in rows:  # the oracle rejects the marked second step of the odd prompts, and only that
            assert r["labels"] == [True, int(r["prompt_id"][1:]) % 2 == 0, True], r
        assert {r["feedback_model"] for r in rows} == {"m"}
        srv.down = True
        assert main([*base, "--out", str(tmp_path / "mc"), "--source", "mc", "--k", "4",
                     "--reward-fn", "test_label_steps:right"]) == FAILED_EXIT
        err = capsys.readouterr().err
        assert "rlaif: incomplete: missing 1 of 4 solutions (1 failed for now: run the same command again" in err
        m = json.loads((tmp_path / "mc" / "manifest.json").read_text())
        assert m["missing"] == [{"what": "solutions", "of": 4, "missing": 1, "to_retry": 1}]
        assert len(check_stepwise_schema(tmp_path / "mc", "mc")) == 3
        calls = srv.count("/v1/chat/completions")  # a rerun retries the failed solution; the server is still down
        assert main([*base, "--out", str(tmp_path / "mc"), "--source", "mc", "--k", "4",
                     "--reward-fn", "test_label_steps:right", "--allow-failures", "0.2"]) == FAILED_EXIT
        assert srv.count("/v1/chat/completions") - calls == 1
        assert main([*base, "--out", str(tmp_path / "mc"), "--source", "mc", "--k", "4",
                     "--reward-fn", "test_label_steps:right", "--allow-failures", "0.25"]) == 0  # 1 of 4 is accepted
        assert "rlaif: warning: missing 1 of 4 solutions" in capsys.readouterr().err
        srv.down = False
        calls = srv.count("/v1/chat/completions")
        assert main([*base, "--out", str(tmp_path / "mc"), "--source", "mc", "--k", "4",
                     "--reward-fn", "test_label_steps:right"]) == 0
        assert srv.count("/v1/chat/completions") - calls == 1 + 2 * 4  # only the failed solution: solve + 2 prefixes x k
    rows = check_stepwise_schema(tmp_path / "mc", "mc")
    assert [r["prompt_id"] for r in rows] == ["p0", "p1", "p2", "p3"]
    for r in rows:  # continuations alternate RIGHT / WRONG by seed; the solutions themselves never say RIGHT
        assert r["labels"][-1] is False and all(0 <= c <= 4 for c in r["mc_correct"])
    body_checked = False
    for m, path, body in srv.hits:
        if path == "/v1/chat/completions" and body.get("continue_final_message"):
            assert body["messages"][-1]["role"] == "assistant" and body["messages"][-1]["content"] in ("first step\n",
                   "first step\nsecond\n", f"first step\nsecond {MARK}\n")
            body_checked = True
    assert body_checked
    capsys.readouterr()


def test_the_pointwise_judge_as_a_reward():
    from rlaif.reward.judge import JudgeReward

    reward = JudgeReward(oracle_engine(), load_constitution("default"), StepJudgeSettings(ensemble=2))
    got = reward([[{"role": "user", "content": "q"}]] * 2, ["a fine answer", f"an answer with a {MARK}"])
    assert got == [pytest.approx(0.9), pytest.approx(0.1)]
    broken = FakeEngine(scorer=lambda req, options: (_ for _ in ()).throw(AssertionError()))
    broken.max_model_len = 5  # every question is too long: the engine reports an error
    with pytest.raises(RuntimeError, match="could not score"):
        JudgeReward(broken, load_constitution("default"))([[{"role": "user", "content": "q"}]], ["x"])


def test_the_arithmetic_task_and_its_checker():
    from rlaif.reward.arithmetic import answer_of, check, final_number, problems

    for kind in ("shop", "sum3", "sum2", "minutes", "sum2ex"):
        probs = problems(20, seed=1, kind=kind)
        assert len({p["prompt"] for p in probs}) >= 18 and probs == problems(20, seed=1, kind=kind)
        for p in probs:
            assert answer_of(p["prompt"]) == p["answer"]
            conv = [{"role": "user", "content": p["prompt"]}]
            right = f"step one\nstep two\nThe answer is {p['answer']}."
            assert check([conv, conv, conv], [right, f"The answer is {p['answer'] + 1}.", "no number"]) == [1.0, 0.0, 0.0]
    assert problems(1, 3, "minutes")[0]["answer"] == answer_of(problems(1, 3, "minutes")[0]["prompt"])
    assert final_number("3 + 4 = 7, so the answer is: 1,204 apples") == 1204 and final_number("7 then 9") == 9
    assert check([[{"role": "user", "content": "What is 2 + 2 + 2?"}]], ["6"]) == [1.0]
    assert check([[{"role": "user", "content": "unrelated"}]], ["6"]) == [0.0]
    # sum2ex's worked example (2 + 3 = 5) is not the problem: its answer is the problem's
    p = next(p for p in problems(20, 0, "sum2ex") if p["answer"] != 5)
    assert "What is 2 + 3?\n2 + 3 = 5" in p["prompt"] and answer_of(p["prompt"]) == p["answer"]


def test_a_killed_run_resumes_from_its_committed_chunks_and_matches_an_uninterrupted_one(tmp_path):
    sols = [solution_from(rec(i), f"s{i}", f"one {i}\ntwo\nthree", None, StepSplitter()) for i in range(3)]
    s = StepLabelSettings("mc", mc=MCSettings(3, SamplingConfig(1.0, 1.0, 8)), chunk_size=1)
    quiet = dict(show_progress=False, log=lambda _: None)
    run_label_steps(sols, str(tmp_path / "whole"), s, {"policy": lambda: FakeEngine(script=rate_script)}, {"policy": "m"},
                    reward_fn=right, **quiet)

    class Dies(FakeEngine):
        def generate(self, requests, sampling, desc=""):
            if any("one 1" in r.assistant_prefix for r in requests):
                raise KeyboardInterrupt  # the process is stopped during the second chunk
            return super().generate(requests, sampling, desc)

    with pytest.raises(KeyboardInterrupt):
        run_label_steps(sols, str(tmp_path / "r"), s, {"policy": lambda: Dies(script=rate_script)}, {"policy": "m"},
                        reward_fn=right, **quiet)
    assert sorted(p.name for p in (tmp_path / "r" / "chunks").glob("[0-9]*.jsonl")) == ["00000.jsonl"]
    again = FakeEngine(script=rate_script)
    m = run_label_steps(sols, str(tmp_path / "r"), s, {"policy": lambda: again}, {"policy": "m"}, reward_fn=right, **quiet)
    assert sum(n for _, n in again.calls) == 2 * 2 * 3  # chunks 1 and 2 only: 2 prefixes x k = 3 each
    assert (tmp_path / "r" / "steps.jsonl").read_text() == (tmp_path / "whole" / "steps.jsonl").read_text()
    assert m["counts"]["labelled"] == 3
