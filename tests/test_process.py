"""Step scores in use: beam search with an oracle PRM against best-of-N at the same token budget; a PRM
trained by ``rlaif train prm`` (tiny random-init model) learns "a step holding X is wrong"; and
``rlaif bon --prm`` / ``rlaif bon --search beam`` through the real entry point (fake and openai
backends) pick the solution without a wrong step."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import datasets
import pytest
from fixtures_server import Reply, ScriptedServer, chat_completion, models_list
from process_fixtures import WRONG, make_tiny_lm, rule_rows, rule_solution

from rlaif.cli import main
from rlaif.data.records import PromptRecord
from rlaif.data.steps import StepSplitter
from rlaif.engine.base import SamplingConfig
from rlaif.engine.fake import FakeEngine
from rlaif.pipeline.bon import BonSettings, build_rows, sample_and_score
from rlaif.pipeline.search import SearchSettings, search_prompt_batch
from rlaif.reward.prm import aggregate

DEPTH = 8


def coin(*parts) -> bool:
    return hashlib.sha256("|".join(map(str, parts)).encode()).digest()[0] < 128


def step_script(req, sampling):
    """Each step is "good" or "bad" with probability 1/2 (by seed); a solution has DEPTH steps. With a
    prefix, the rest of the solution from there (the engine cuts it at the stop string)."""
    done = req.assistant_prefix.count("\n")
    return "\n".join("good" if coin(req.seed, i) else "bad" for i in range(done, DEPTH))


class OraclePRM:
    """P(step correct) is 1 for "good" and 0 for anything else."""

    splitter = StepSplitter()

    def step_probs(self, prompts, steps):
        return [[1.0 if s == "good" else 0.0 for s in ss] for ss in steps]

    def __call__(self, prompts, responses):
        return [aggregate(p, "min") for p in self.step_probs(prompts, [self.splitter.split(r) for r in responses])]


def test_beam_search_with_an_oracle_prm_finds_the_one_correct_path_best_of_n_misses_at_the_same_budget():
    """Only the all-good path of 2^8 is correct: best-of-8 finds it with probability 1 - (255/256)^8 = 3%;
    the beam search (2 beams x 4 expansions = 8 requests a round, 8 rounds) keeps a good prefix each round."""
    prompts = [PromptRecord(f"q{i}", ({"role": "user", "content": f"problem {i}"},), {}) for i in range(6)]
    sampling = SamplingConfig(1.0, 1.0, 64)
    prm = OraclePRM()
    bon_engine = FakeEngine(script=step_script)
    bon_rows = sample_and_score(bon_engine, prm, prompts, BonSettings(8, sampling, seed=1))
    beam_engine = FakeEngine(script=step_script)
    beam_rows = search_prompt_batch(beam_engine, prm, prompts, SearchSettings(beam=2, expand=4, max_steps=DEPTH), sampling, seed=1)
    correct = "\n".join(["good"] * DEPTH)

    def best(rows):
        sft = build_rows(rows, BonSettings(2, sampling), "m", "oracle")[0]
        return [r["messages"][-1]["content"] for r in sft]

    bon_best, beam_best = best(bon_rows), best(beam_rows)
    assert sum(t == correct for t in beam_best) >= 5 and sum(t == correct for t in bon_best) <= 1
    bon_tokens = sum(c["completion_tokens"] for r in bon_rows for c in r["candidates"])
    beam_tokens = sum(r["generated_tokens"] for r in beam_rows)
    assert bon_tokens == 6 * 8 * DEPTH and beam_tokens <= bon_tokens
    # 8 requests a round for each prompt, each one step (one token) long
    assert sum(n for d, n in beam_engine.calls if d == "beam search") == 6 * 8 * DEPTH == beam_tokens


# ------------------------------------------------------------------ a trained PRM
@pytest.fixture(scope="module")
def prm(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("prm")
    lm = make_tiny_lm(d / "lm")
    (d / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rule_rows(200)))
    assert main(["train", "prm", f"model={lm}", f"data={d / 'steps.jsonl'}", f"runs_dir={d}", "name=prm", "epochs=3",
                 "lr=2e-3", "batch_size=16", "eval_fraction=0.2", "warmup_ratio=0.0", "tensorboard=false"]) == 0
    return d / "prm"


def test_a_trained_prm_learns_that_a_step_holding_the_marker_is_wrong(prm):
    from rlaif.reward.prm import ProcessRewardModel

    metrics = [json.loads(line) for line in (prm / "metrics.jsonl").read_text().splitlines()]
    final = {k: v for m in metrics for k, v in m.items()}
    assert final["eval/step_accuracy"] >= 0.9 and final["eval/processbench_f1"] >= 0.7
    scorer = ProcessRewardModel(str(prm / "final"))
    assert json.loads((prm / "final" / "rlaif_prm.json").read_text())["splitter"] == {"mode": "lines", "pattern": ""}
    rng = random.Random(99)  # fresh solutions the PRM never saw
    sols = [rule_solution(rng) for _ in range(40)]
    probs = scorer.step_probs([f"add {i}" for i in range(40)], [s for s, _ in sols])
    pairs = [(p, ok) for ps, (_, labels) in zip(probs, sols) for p, ok in zip(ps, labels)]
    assert sum((p > 0.5) == ok for p, ok in pairs) / len(pairs) >= 0.9
    # as a reward: a solution's min over its steps ranks the solutions without a wrong step first
    texts = ["\n".join(s) for s, _ in sols]
    scores = scorer([[{"role": "user", "content": "add"}]] * 40, texts).tolist()
    clean = [sc for sc, (_, labels) in zip(scores, sols) if all(labels)]
    dirty = [sc for sc, (_, labels) in zip(scores, sols) if not all(labels)]
    assert clean and dirty and sum(c > d for c in clean for d in dirty) / (len(clean) * len(dirty)) >= 0.9


class SolutionServer(ScriptedServer):
    """Whole solutions (no assistant turn) of 3 steps, each holding the marker word by seed; continuations of a
    partial solution: the next step (with the marker by seed), the third step ending the solution."""

    def __init__(self):
        self.down = False
        super().__init__(self._answer)

    def _answer(self, method, path, body, attempt):
        if path == "/v1/models":
            return Reply(200, models_list("m"))
        if self.down and body["messages"][0]["content"] == "add 1" and body.get("continue_final_message"):
            return Reply(503, {"error": {"message": "overloaded"}})  # prompt p1's second round fails
        seed = body["seed"]
        done = body["messages"][-1]["content"].count("\n") if body.get("continue_final_message") else 0
        steps = [f"one two{' ' + WRONG if coin(seed, i) else ''}" for i in range(done, 3)]
        return Reply(200, chat_completion("\n".join(steps), "stop", 10, 3 * len(steps)))


def test_bon_with_a_prm_and_beam_search_through_the_command(prm, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"add {i}"}) + "\n" for i in range(4)))
    with SolutionServer() as srv:
        base = ["bon", "--prompts", str(prompts), "--backend", "openai", "--base-url", srv.url, "--prm", str(prm / "final"), "--quiet"]
        assert main([*base, "--out", str(tmp_path / "bon"), "--n", "8"]) == 0
        assert main([*base, "--out", str(tmp_path / "beam"), "--search", "beam", "--beam", "2", "--expand", "2", "--max-steps", "3"]) == 0
        assert main([*base, "--out", str(tmp_path / "x"), "--reward-fn", "m:f"]) == 2
        assert main([*base[:-3], "--out", str(tmp_path / "x"), "--search", "beam", "--reward-fn", "m:f", "--quiet"]) == 2
    for run in ("bon", "beam"):
        sft = datasets.load_from_disk(str(tmp_path / run / "sft"))
        chunks = [json.loads(line) for f in sorted((tmp_path / run / "chunks").glob("[0-9]*.jsonl")) for line in f.read_text().splitlines()]
        assert len(sft) == 4
        for row, chunk in zip(sft, chunks):
            best = row["messages"][-1]["content"]
            has_clean = any(WRONG not in c["text"] for c in chunk["candidates"])
            assert WRONG not in best or not has_clean, (run, best)
            assert best.count("\n") == 2  # three steps
        m = json.loads((tmp_path / run / "manifest.json").read_text())
        assert m["settings"]["reward_model"].startswith("prm:") and m["counts"]["generated_tokens"] > 0
    assert json.loads((tmp_path / "beam" / "manifest.json").read_text())["settings"]["search"]["beam"] == 2
    assert "generated tokens" in capsys.readouterr().out


def test_a_beam_search_whose_requests_failed_exits_4_and_a_rerun_searches_those_prompts_again(prm, tmp_path, capsys):
    from rlaif.engine.failures import FAILED_EXIT

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"add {i}"}) + "\n" for i in range(3)))
    argv = ["bon", "--prompts", str(prompts), "--backend", "openai", "--prm", str(prm / "final"), "--out", str(tmp_path / "beam"),
            "--search", "beam", "--beam", "2", "--expand", "2", "--max-steps", "3", "--max-retries", "0",
            "--max-concurrency", "4", "--quiet"]
    with SolutionServer() as srv:
        assert main([*argv, "--base-url", srv.url, "--out", str(tmp_path / "whole")]) == 0
    with SolutionServer() as srv:
        srv.down = True
        assert main([*argv, "--base-url", srv.url]) == FAILED_EXIT
        assert "rlaif: incomplete: missing 2 of 6 responses (2 failed for now: run the same command again" in capsys.readouterr().err
        m = json.loads((tmp_path / "beam" / "manifest.json").read_text())
        assert m["missing"] == [{"what": "responses", "of": 6, "missing": 2, "to_retry": 2}]  # p1's two final beams
        assert len(datasets.load_from_disk(str(tmp_path / "beam" / "sft"))) == 2
        srv.down = False
        first = len(srv.hits)
        assert main([*argv, "--base-url", srv.url]) == 0
        again = {b["messages"][0]["content"] for _, path, b in srv.hits[first:] if path == "/v1/chat/completions"}
        assert again == {"add 1"}  # only the failed prompt is searched again
    assert (tmp_path / "beam" / "sft.jsonl").read_text() == (tmp_path / "whole" / "sft.jsonl").read_text()
    capsys.readouterr()


def test_bon_with_a_prm_and_the_fake_backend(prm, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "p", "prompt": "add"}) + "\n")
    assert main(["bon", "--prompts", str(prompts), "--out", str(tmp_path / "b"), "--n", "3", "--backend", "fake",
                 "--prm", str(prm / "final"), "--aggregate", "prod", "--quiet"]) == 0
    sft = datasets.load_from_disk(str(tmp_path / "b" / "sft"))
    assert len(sft) == 1 and sft[0]["reward_model"].endswith(":prod")
    capsys.readouterr()
