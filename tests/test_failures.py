"""A run whose requests failed is not a success, and the next run redoes what failed.

Against loopback servers that break the way a vLLM server does (:class:`fixtures_server.FaultyOracle`:
500 for everything while it still lists its models, a process that dies mid-run, a server that
hangs and then dies), through the real command line, for every command that writes a run folder:

* a server gone stops the command early (exit status 4, one line saying what failed and that
  rerunning continues) instead of working through the queue;
* a finished run with rows missing exits with status 4 unless ``--allow-failures`` accepts them;
* rerunning the same command against the server restarted on the same address completes the run,
  sends only what is missing (nothing done twice) and gives exactly the files of a run that never
  failed (a fresh run against a healthy oracle).

The oracle answers by content and seed only, so equal files mean nothing was lost, doubled or
reordered. The online trainers' judge is tested in ``tests/train/test_online.py`` (it needs vLLM).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_server import FaultyOracle, OracleServer
from test_cli_backends import write_pairs, write_prompts

from rlaif.cli import main
from rlaif.cli.failures import finish
from rlaif.data.runs import missing
from rlaif.engine.base import ChatRequest, SamplingConfig
from rlaif.engine.failures import FAILED_EXIT, Breaker, ServerGone, Watched, transient_status
from rlaif.engine.openai_server import OpenAIServerEngine

# short timeouts and one retry: a failing request gives up within about two seconds
FAST = ("--max-retries", 1, "--request-timeout", 1, "--quiet")
SAMPLING = SamplingConfig(temperature=0.5, top_p=0.9, max_tokens=16)


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def asks(n: int) -> list[ChatRequest]:
    return [ChatRequest(({"role": "user", "content": f"question {i}"},), seed=i) for i in range(n)]


def rlaif_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("rlaif:")]


def assert_stopped(capsys, *words: str) -> None:
    """One line on stderr: stopped early, why, and that rerunning continues."""
    lines = rlaif_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("rlaif: stopped early:") and "run the same command again to continue" in lines[0], lines[0]
    for w in words:
        assert w in lines[0], lines[0]


def same_files(a: Path, b: Path, *names: str) -> None:
    for name in names:
        assert (a / name).read_text() == (b / name).read_text(), name


# ------------------------------------------------------------------ the pieces


def test_transient_statuses():
    assert all(transient_status(s) for s in (429, 500, 502, 503, 504))
    assert not any(transient_status(s) for s in (400, 401, 404, 422))


def test_the_breaker_trips_after_the_limit_in_a_row_and_an_answer_resets_it():
    b = Breaker(3, "the server at X")
    for _ in range(2):
        b.failed("HTTP 500")
    b.ok()
    b.failed("HTTP 500")
    b.failed("HTTP 503")
    assert b.tripped is None
    b.failed("timed out")
    assert b.tripped == "the server at X stopped answering: 3 requests in a row failed after their retries (the last: timed out)"
    with pytest.raises(ServerGone):
        b.check()
    never = Breaker(0)
    for _ in range(100):
        never.failed("HTTP 500")
    assert never.tripped is None


def test_an_in_process_engine_that_dies_raises_server_gone():
    class EngineDeadError(RuntimeError):  # vLLM's, told by name
        pass

    class LLM:
        size = 3

        def generate(self, prompts):
            raise EngineDeadError("EngineCore encountered an issue.")

        def tokenize(self, text):
            raise ValueError("not a death")

    llm = Watched(LLM(), "the in-process vLLM engine")
    assert llm.size == 3
    with pytest.raises(ServerGone, match="the in-process vLLM engine died"):
        llm.generate([])
    with pytest.raises(ValueError):
        llm.tokenize("x")


def test_missing_rows_set_the_exit_status(capsys):
    rows = [{"id": "a"}, {"id": "b", "error": "HTTP 500", "retryable": True}, {"id": "c", "error": "too long", "retryable": False},
            {"id": "d", "checks": [{"error": "HTTP 503", "retryable": True}]}]
    assert missing("pairs", rows) == {"what": "pairs", "of": 4, "missing": 2, "to_retry": 1}
    assert missing("pairs", rows, lambda r: [r, *r.get("checks", [])])["missing"] == 3
    m = {"missing": [missing("pairs", rows)]}
    assert finish(m) == FAILED_EXIT
    line = rlaif_lines(capsys.readouterr().err)
    assert line == ["rlaif: incomplete: missing 2 of 4 pairs (1 failed for now: run the same command again to retry them; "
                    "1 failed for good (the error is in the run's rows)); --allow-failures accepts a run with rows missing"]
    assert finish(m, 1.0) == 0 and finish(m, 0.5) == 0 and finish(m, 0.49) == FAILED_EXIT
    assert finish({"missing": [missing("pairs", rows[:1])]}) == 0 and finish({}) == 0


def test_an_engine_stops_when_its_server_dies_mid_call():
    """A server that had answered refuses connections: the call raises ServerGone, and later calls
    send nothing."""
    with FaultyOracle("die", after=5, models=("m",)) as srv:
        with OpenAIServerEngine(srv.url, model="m", max_concurrency=4, show_progress=False, retry_wait_s=0.01) as eng:
            with pytest.raises(ServerGone, match="connection refused after it had answered"):
                eng.generate(asks(40), SAMPLING)
            with pytest.raises(ServerGone):
                eng.generate(asks(2), SAMPLING)


def test_an_engine_stops_after_the_limit_of_failures_in_a_row():
    """500 for everything: the engine stops after 20 requests (the default) gave up, not after 200."""
    with FaultyOracle("500", models=("m",)) as srv:
        with OpenAIServerEngine(srv.url, model="m", max_concurrency=4, max_retries=1, show_progress=False, retry_wait_s=0.01) as eng:
            with pytest.raises(ServerGone, match="20 requests in a row failed after their retries"):
                eng.generate(asks(200), SAMPLING)
        assert srv.count("/v1/chat/completions") <= (20 + 4) * 2  # those, and those in flight, each tried twice


def test_a_fleet_goes_on_without_a_server_that_died():
    with FaultyOracle("die", after=3, models=("m",)) as bad, OracleServer(("m",)) as good:
        with OpenAIServerEngine(f"{bad.url},{good.url}", model="m", max_concurrency=4, show_progress=False, retry_wait_s=0.01) as eng:
            out = eng.generate(asks(30), SAMPLING)
            assert all(c.ok for c in out)
            assert bad.url in eng.left_out and "stopped answering" in eng.left_out[bad.url]



class FailsFirst:
    """A judge engine whose every scoring request fails for now the first ``times`` times it is sent."""

    def __init__(self, times: int):
        from rlaif.engine.fake import FakeEngine

        self.engine, self.times, self.seen, self.model = FakeEngine(model="judge"), times, {}, "judge"

    def score_options(self, requests, options, desc=""):
        from rlaif.engine.base import OptionScores

        out = []
        for r, s in zip(requests, self.engine.score_options(requests, options, desc)):
            key = repr(r)
            self.seen[key] = self.seen.get(key, 0) + 1
            out.append(OptionScores((), 0, error="HTTP 500 (gave up after 2 attempts)", retryable=True) if self.seen[key] <= self.times else s)
        return out


def test_the_online_judge_retries_within_the_step_else_the_server_is_gone():
    """The online trainers' judge (:func:`rlaif.train.feedback.judge_groups` with ``retries``): labels
    that failed for now are asked again within the step and come out as a judge that never failed
    gives them; still failing after the retries, the step raises ServerGone."""
    from rlaif.constitution import load_constitution
    from rlaif.engine.fake import FakeEngine
    from rlaif.pipeline.judge import LabelSettings
    from rlaif.train.feedback import judge_groups

    const, settings = load_constitution("default"), LabelSettings(ensemble=2)
    groups = [([{"role": "user", "content": f"q{g}"}], [f"answer {g}.{k}" for k in range(3)], f"0:p{g}") for g in range(3)]
    labels = lambda judged: [x.label for g in judged for x in g]  # noqa: E731
    healthy = labels(judge_groups(FakeEngine(model="judge"), const, settings, groups, "all", retries=2))
    assert labels(judge_groups(FailsFirst(2), const, settings, groups, "all", retries=2)) == healthy
    assert all(lab.error is None for lab in healthy)
    with pytest.raises(ServerGone, match="the judge \\(judge\\) failed 9 of 9 pairs \\(judge\\) after 1 more tries within the step"):
        judge_groups(FailsFirst(2), const, settings, groups, "all", retries=1)
    assert all(lab.retryable for lab in labels(judge_groups(FailsFirst(2), const, settings, groups, "all")))  # no retries: as before


# ------------------------------------------------------------------ rlaif label


def label(pairs: Path, out: Path, url: str, *extra) -> int:
    return cli("label", "--pairs", pairs, "--out", out, "--backend", "openai", "--base-url", url, "--ensemble", 2, *FAST, *extra)


def test_label_against_a_server_answering_500_stops_and_the_rerun_completes(tmp_path, capsys):
    """The issue's case: a server that lists its models but answers every request with 500."""
    pairs = write_pairs(tmp_path, 8)
    with FaultyOracle("500") as bad:
        assert label(pairs, tmp_path / "d", bad.url) == FAILED_EXIT
        port = bad.port
    assert_stopped(capsys, bad.url, "requests in a row failed")
    with OracleServer(port=port) as good:
        assert label(pairs, tmp_path / "d", good.url) == 0
    with OracleServer() as fresh:
        assert label(pairs, tmp_path / "fresh", fresh.url) == 0
    same_files(tmp_path / "d", tmp_path / "fresh", "preferences.jsonl", "labels.jsonl")
    assert len((tmp_path / "d" / "preferences.jsonl").read_text().splitlines()) == 8


def test_label_with_some_pairs_failing_exits_4_unless_allowed_and_the_rerun_redoes_only_those(tmp_path, capsys):
    pairs = write_pairs(tmp_path, 8)
    broken = ("Question 3?", "Question 5?")
    fails = lambda body: any(q in m["content"] for m in body.get("messages", ()) for q in broken)  # noqa: E731
    out = tmp_path / "d"
    with FaultyOracle("500", fail=fails) as bad:
        assert label(pairs, out, bad.url) == FAILED_EXIT
        assert "missing 2 of 8 pairs (2 failed for now: run the same command again" in capsys.readouterr().err
        assert label(pairs, out, bad.url, "--allow-failures") == 0
        assert "accepted by --allow-failures" in capsys.readouterr().err
        assert label(pairs, out, bad.url, "--allow-failures", 0.2) == FAILED_EXIT  # 2 of 8 is more than 20%
        assert label(pairs, out, bad.url, "--allow-failures", 0.25) == 0
        port = bad.port
    with OracleServer(port=port) as good:
        assert label(pairs, out, good.url) == 0
        redone = good.requests("score")
    assert len(redone) == 2 * 2 * 2 and all(any(q in b["messages"][-1]["content"] for q in broken) for b in redone)
    with OracleServer() as fresh:
        assert label(pairs, tmp_path / "fresh", fresh.url) == 0
    same_files(out, tmp_path / "fresh", "preferences.jsonl", "labels.jsonl")


# ------------------------------------------------------------------ rlaif generate --label


def generate(prompts: Path, out: Path, url: str) -> int:
    return cli("generate", "--prompts", prompts, "--out", out, "--rounds", 1, "--chunk-size", 2, "--label", "--ensemble", 2,
               "--backend", "openai", "--base-url", url, *FAST)


def test_generate_stops_when_its_server_dies_and_the_rerun_completes(tmp_path, capsys):
    """A chunk is 2 prompts: 6 answers, critiques and revisions and 8 comparisons. The server dies
    during the second chunk: the first stays committed and is not asked for again."""
    prompts = write_prompts(tmp_path, 6)
    out = tmp_path / "g"
    with FaultyOracle("die", after=20) as bad:
        assert generate(prompts, out, bad.url) == FAILED_EXIT
        port = bad.port
    assert_stopped(capsys, "connection refused after it had answered")
    assert sorted(p.name for p in (out / "chunks").glob("0*.jsonl")) == ["00000.jsonl", "00000.labels.jsonl"]
    with OracleServer(port=port) as good:
        assert generate(prompts, out, good.url) == 0
        assert len(good.requests("generate")) == 2 * 2 * 3  # the two chunks left, nothing of the first
    with OracleServer() as fresh:
        assert generate(prompts, tmp_path / "fresh", fresh.url) == 0
    same_files(out, tmp_path / "fresh", "sft.jsonl", "preferences.jsonl", "failed.jsonl")
    assert len((out / "sft.jsonl").read_text().splitlines()) == 6


# ------------------------------------------------------------------ rlaif bon


def bon(prompts: Path, out: Path, url: str, *extra) -> int:
    return cli("bon", "--prompts", prompts, "--out", out, "--n", 2, "--chunk-size", 2, "--backend", "openai", "--base-url", url,
               "--reward-fn", "test_cli_backends:seed_reward", *FAST, *extra)


def test_bon_stops_when_its_server_hangs_then_dies_and_the_rerun_completes(tmp_path, capsys):
    prompts = write_prompts(tmp_path, 4)
    out = tmp_path / "b"
    with FaultyOracle("slow", after=4, slow_s=2.0) as bad:  # hangs past the 1 s timeout, dead 2 s later
        assert bon(prompts, out, bad.url, "--max-retries", 3) == FAILED_EXIT  # the last tries find it dead
        port = bad.port
    assert_stopped(capsys, "connection refused after it had answered")
    with OracleServer(port=port) as good:
        assert bon(prompts, out, good.url, "--max-retries", 3) == 0
        assert len(good.requests("generate")) == 2 * 2  # the second chunk only
    with OracleServer() as fresh:
        assert bon(prompts, tmp_path / "fresh", fresh.url, "--max-retries", 3) == 0
    same_files(out, tmp_path / "fresh", "sft.jsonl", "preferences.jsonl")


def test_bon_redoes_the_responses_that_failed_for_now(tmp_path, capsys):
    prompts = write_prompts(tmp_path, 4)
    out = tmp_path / "b"
    with FaultyOracle("500", fail=lambda body: body.get("seed", 0) % 3 == 0) as bad:  # some samples of some prompts
        assert bon(prompts, out, bad.url) == FAILED_EXIT
        lost = json.loads((out / "manifest.json").read_text())["missing"][0]
        assert 0 < lost["missing"] == lost["to_retry"] < 8
        assert f"missing {lost['missing']} of 8 responses" in capsys.readouterr().err
        port = bad.port
    with OracleServer(port=port) as good:
        assert bon(prompts, out, good.url) == 0
        assert len(good.requests("generate")) == lost["missing"]
    with OracleServer() as fresh:
        assert bon(prompts, tmp_path / "fresh", fresh.url) == 0
    same_files(out, tmp_path / "fresh", "sft.jsonl", "preferences.jsonl")


# ------------------------------------------------------------------ rlaif eval


def evaluate(out: Path, url: str, *extra) -> int:
    return cli("eval", "--backend", "openai", "--base-url", url, "--policy", "pol", "--baseline", "base", "--prompts", "harmful",
               "--limit", 4, "--chunk-size", 2, "--ensemble", 2, "--bootstrap", 200, "--out", out, *FAST, *extra)


def test_eval_stops_when_its_server_answers_500_and_the_rerun_completes(tmp_path, capsys):
    """The server breaks during the baseline's answers; --max-consecutive-failures 3 stops the eval at
    the third request that gave up."""
    out = tmp_path / "ev"
    with FaultyOracle("500", after=6, models=("pol", "base")) as bad:
        assert evaluate(out, bad.url, "--max-consecutive-failures", 3) == FAILED_EXIT
        port = bad.port
    assert_stopped(capsys, "3 requests in a row failed")
    with OracleServer(("pol", "base"), port=port) as good:
        assert evaluate(out, good.url, "--max-consecutive-failures", 3) == 0
        assert len(good.requests("generate")) == 4 + 4 - 6  # what had not been answered
    with OracleServer(("pol", "base")) as fresh:
        assert evaluate(tmp_path / "fresh", fresh.url) == 0
    same_files(out, tmp_path / "fresh", "answers.jsonl", "eval.json")


def test_the_online_loop_checkpoints_and_stops_and_a_resumed_run_owes_the_probe(monkeypatch):
    """:func:`rlaif.train.online.train_loop` when the judge is gone in an iteration or in a probe: a
    checkpoint of the last finished iteration, with the random state from before the failed work,
    then ServerGone; a run resumed after a failed probe runs that probe first, then goes on as an
    uninterrupted run would."""
    import random
    from types import SimpleNamespace

    from rlaif.train import online

    saved = []
    monkeypatch.setattr(online, "checkpoint", lambda s: saved.append((dict(s.position), random.random())) or Path("step-x"))

    class Log:
        def __init__(self):
            self.records = []

        def log(self, step, values):
            self.records.append((step, dict(values)))

    gone: dict[str, int] = {}

    def iteration(s, it):
        random.random()  # the work draws random numbers before the judge answers
        if gone.get("iteration") == it:
            raise ServerGone("the judge is gone")
        return {"loss": float(it)}

    def evaluate(s, step):
        random.random()
        if gone.get("probe") == step:
            raise ServerGone("the judge is gone")
        return {"probe": float(step)}

    def run(position, **fails):
        gone.clear()
        gone.update(fails)
        s = SimpleNamespace(cfg=SimpleNamespace(name="t", log_every=1, eval_every=1, save_every=0), position=dict(position),
                            total_steps=3, log=Log())
        random.seed(7)
        online.train_loop(s, iteration, evaluate)
        return s.log.records

    whole = run({"step": 0})
    saved.clear()
    random.seed(7)
    state = random.getstate()
    with pytest.raises(ServerGone, match="the judge is gone; the run is checkpointed at iteration 1"):
        run({"step": 0}, probe=1)
    (position, after), = saved
    random.setstate(state)
    random.random()  # iteration 0 drew one number; the failed probe's draw is undone
    assert position == {"step": 1, "probe_due": True} and after == random.random()
    assert run(position) == whole[1:]  # the probe of step 1 first, then as the uninterrupted run
    saved.clear()
    with pytest.raises(ServerGone, match="checkpointed at iteration 2"):
        run({"step": 0}, iteration=2)
    assert saved[0][0] == {"step": 2}


def test_every_command_that_can_fail_this_way_lists_the_exit_statuses_in_its_help():
    from rlaif.cli import build_parser
    from rlaif.cli.bon import build_parser as bon_parser

    parser = build_parser()
    helps = [parser.format_help(), bon_parser().format_help()]
    helps += [parser.subcommands[name].format_help() for name in ("generate", "label", "bon", "eval", "train")]
    for text in helps:
        flat = " ".join(text.split())
        assert f"{FAILED_EXIT} requests failed: the server stopped answering" in flat and "3 --strict" in flat, text[-400:]


def test_the_limit_is_not_a_run_setting():
    """A rerun may change --max-consecutive-failures (generate's run settings hold the other engine settings)."""
    from rlaif.pipeline.config import fingerprint, resolve

    flags = {"prompts": "p.jsonl", "out": "o"}
    assert fingerprint(resolve({}, flags, {}).to_dict()) == \
        fingerprint(resolve({"engine": {"max_consecutive_failures": 3}}, flags, {}).to_dict())
