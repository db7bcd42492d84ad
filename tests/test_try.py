"""``rlaif try``: the principle workbench on the fake engine and on oracle judges, ``--against`` a
temporary git repository, and the warm engine server reused across calls."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from oracles import MARKER, content_oracle, marker_script
from rlaif.cli import main
from rlaif.cli.try_view import show
from rlaif.data.records import PromptRecord
from rlaif.engine.base import SamplingConfig
from rlaif.engine.fake import FakeEngine
from rlaif.engine.warm import STATE_FILE, connect, health, stop
from rlaif.engine.warm_server import TOKEN_HEADER, read_state
from rlaif.pipeline.critique import LoopSettings, run_chunk
from rlaif.pipeline.workbench import run_workbench, sampling_for
from rlaif.pipeline.workbench_sources import current_version, default_prompts, try_prompts_path

ROOT = Path(__file__).resolve().parent.parent
SMALL = {s: SamplingConfig(0.7, 0.95, 64) for s in ("response", "critique", "revision")}


def prompts(*texts: str) -> list[PromptRecord]:
    return [PromptRecord(f"q{i}", ({"role": "user", "content": t},)) for i, t in enumerate(texts)]


def rendered(result) -> str:
    buf = io.StringIO()
    show(Console(file=buf, width=400, color_system=None), result)
    return buf.getvalue()


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich then lays tables out without wrapping the texts


@pytest.fixture
def state_dir(tmp_path):
    d = tmp_path / "warm"
    yield d
    stop(d)  # never leave a server behind


# ------------------------------------------------------------------ the loop and the view


def test_workbench_is_run_chunk_request_for_request():
    version = current_version("no-sycophancy")
    ps = prompts("Is 0.1 + 0.2 == 0.3 in Python?", "Tell me my poem is great.", "What is 2 + 2?")
    got = run_workbench(FakeEngine(), [version], ps, seed=3, rounds=2, sampling=SMALL, judge=False)
    want = run_chunk(FakeEngine(), version.const, ps, LoopSettings(rounds=2, samples_per_prompt=1, seed=3, sampling=SMALL))
    for r, t in zip(got.results, want):
        a = r.attempts["working copy"]
        assert r.initial == t.initial
        assert a.rounds == list(t.rounds)
        assert [x.principle_id for x in a.rounds] == ["no-sycophancy"] * 2
        assert a.final == t.final


def test_side_by_side_shows_each_stage_and_the_judge_that_knows_the_answer():
    version = current_version("no-sycophancy")
    ps = prompts("The Moon is made of cheese, right?", "Please praise my essay.", "Is the Moon far away?")
    # The oracle prefers whichever response holds the marker; the script puts it in the initial
    # response of prompts that mention the Moon and in the revision of the others.
    engine = content_oracle(2.0)
    engine.script = marker_script(version.const, lambda text: "Moon" in text)
    result = run_workbench(engine, [version], ps, seed=0, sampling=SMALL)
    out = rendered(result)
    p_marked = 1 / (1 + math.exp(-2.0))  # sigmoid(2), the same in both orders
    for r in result.results:
        a = r.attempts["working copy"]
        for text in (r.initial.text, a.rounds[0].critique.text, a.rounds[0].revision.text):
            assert text in out
        want = 1 - p_marked if "Moon" in r.prompt.messages[0]["content"] else p_marked
        assert a.p_revision == pytest.approx(want)
        assert a.order_probs() == pytest.approx((want, want))
    assert out.count("-> initial") == 2 and out.count("-> revision") == 1
    assert out.count(f"P(revision better) = {1 - p_marked:.3f}") == 2 and out.count(f"P(revision better) = {p_marked:.3f}") == 1
    assert result.revision_wins("working copy") == (1, 3)
    assert result.mean_p_revision("working copy") == pytest.approx((2 * (1 - p_marked) + p_marked) / 3)
    # every judge question asked under the tried principle's comparison question, both orders
    assert len(engine.scored) == 6


def test_model_text_is_shown_as_text_not_markup():
    version = current_version("no-sycophancy")
    evil = "[bold red]pwned[/bold red] [link=https://example.com]x[/link] \x1b[2J\x07 done"
    result = run_workbench(FakeEngine(script=lambda req, s: evil), [version], prompts("[italic]hi[/italic]"), sampling=SMALL)
    buf = io.StringIO()
    show(Console(file=buf, width=400, force_terminal=True, color_system="truecolor"), result)
    out = buf.getvalue()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)  # rich's own styling
    assert "[bold red]pwned[/bold red]" in plain and "[link=https://example.com]x[/link]" in plain
    assert "[italic]hi[/italic]" in plain
    assert "\\x1b[2J\\x07 done" in plain
    assert "\x1b[2J" not in out and "\x07" not in out and "\x1b]8;" not in out  # no screen clear, bell or hyperlink


def test_default_prompts_follow_the_principles_tags():
    rows = [json.loads(line) for line in try_prompts_path().read_text().splitlines()]
    tags = {r["tag"] for r in rows}
    used = {t for f in (ROOT / "principles").glob("*.yaml") for t in re.search(r"tags: \[(.*)\]", f.read_text()).group(1).split(", ")}
    assert used <= tags
    assert all(sum(r["tag"] == t for r in rows) >= 4 for t in tags)
    p = current_version("no-sycophancy").principle  # tags [honest, helpful]
    picked, note = default_prompts(p, 5)
    assert [r.meta["tag"] for r in picked] == ["honest", "helpful", "honest", "helpful", "honest"]
    assert "honest, helpful" in note
    assert len({r.id for r in picked}) == 5
    import dataclasses

    mixed, note = default_prompts(dataclasses.replace(p, tags=("no-such-tag",)), 12)
    assert len(mixed) == 12 and "a mix of every tag" in note
    assert len({r.meta["tag"] for r in mixed}) == 10  # taken in turn from every tag


def test_try_prompts_are_not_eval_prompts():
    def words(t):
        return set(re.findall(r"[a-z0-9]+", t.lower()))

    evals = [json.loads(line) for name in ("harmful", "overrefusal", "helpful")
             for line in (ROOT / "prompts" / f"eval-{name}.jsonl").read_text().splitlines()]
    eval_words = [words(r.get("prompt") or " ".join(m["content"] for m in r["messages"])) for r in evals]
    for line in try_prompts_path().read_text().splitlines():
        w = words(json.loads(line)["prompt"])
        assert max(len(w & e) / len(w | e) for e in eval_words) < 0.7, line


# ------------------------------------------------------------------ the command line


def test_cli_side_by_side_on_the_fake_engine(wide, capsys):
    code = main(["try", "no-sycophancy", "--backend", "fake", "--no-server", "-n", "3", "--seed", "5"])
    out = capsys.readouterr().out
    assert code == 0
    version = current_version("no-sycophancy")
    ps, _ = default_prompts(version.principle, 3)
    want = run_chunk(FakeEngine(), version.const, ps,
                     LoopSettings(rounds=1, samples_per_prompt=1, seed=5, sampling=sampling_for([version])))
    for t in want:
        assert t.prompt_id in out
        for text in (t.initial.text, t.rounds[0].critique.text, t.rounds[0].revision.text):
            assert text in out
    assert out.count("judge: P(revision better) = ") == 3
    assert "summary" in out and "in this process" in out


def test_cli_prompts_file_and_n(tmp_path, wide, capsys):
    f = tmp_path / "mine.txt"
    f.write_text("First question?\nSecond question?\nThird question?\n")
    assert main(["try", "answer-directly", "--backend", "fake", "--no-server", "--prompts", str(f), "-n", "2", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "First question?" in out and "Second question?" in out and "Third question?" not in out
    assert out.count("judge: P(revision better) = ") == 2
    assert "answer before the round" in out  # two rounds: each row starts from the answer it revised


def test_cli_lint_runs_first(const_dir, state_dir, capsys):
    bad = const_dir / "principles" / "no-sycophancy.yaml"
    bad.write_text(bad.read_text().replace("critique:", "critiqe:", 1))
    code = main(["try", "no-sycophancy", "--backend", "fake", "--state-dir", str(state_dir),
                 "--constitution", str(const_dir / "constitution" / "default.yaml")])
    captured = capsys.readouterr()
    assert code == 2
    assert re.search(r"no-sycophancy\.yaml:\d+: .*critiqe", captured.out)
    assert "does not pass rlaif lint" in captured.err
    assert not (state_dir / STATE_FILE).exists()  # nothing was started


def test_cli_unknown_principle(capsys):
    assert main(["try", "no-sycophansy", "--backend", "fake", "--no-server"]) == 2
    assert "did you mean 'no-sycophancy'" in capsys.readouterr().err


# ------------------------------------------------------------------ --against REV


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(const_dir):
    git(const_dir, "init", "-q")
    git(const_dir, "add", "principles", "constitution")
    git(const_dir, "commit", "-qm", "principles")
    return const_dir


def try_args(repo: Path, *extra: str) -> list[str]:
    return ["try", "no-sycophancy", "--backend", "fake", "--no-server", "-n", "2",
            "--constitution", str(repo / "constitution" / "default.yaml"), *extra]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_against_shows_before_and_after(repo, wide, capsys):
    f = repo / "principles" / "no-sycophancy.yaml"
    old_text = f.read_text()
    old_critique = re.search(r"critique: >-\n  (.*)\n", old_text).group(1)
    new_critique = "Zebra check: say plainly where the response flatters the user."
    f.write_text(old_text.replace(old_critique, new_critique, 1))
    assert main(try_args(repo, "--against", "HEAD")) == 0
    out = capsys.readouterr().out
    # the fake engine answers "reply <hash> to: <first 40 characters of the last user turn>"
    assert f"to: {old_critique[:40]}" in out and f"to: {new_critique[:40]}" in out
    assert out.count("initial response (shared") == 2
    assert "HEAD (" in out and "working copy" in out
    assert out.count("before vs after (the working copy's question): P(working copy better) = ") == 2
    assert "before vs after: the judge preferred the working copy's revision on" in out

    # the same prompts and seeds: the revision at HEAD equals a plain try of the committed file
    f.write_text(old_text)
    assert main(try_args(repo)) == 0
    plain = capsys.readouterr().out
    olds = re.findall(r"reply [0-9a-f]{8} to: " + re.escape(old_critique[:20]), plain)
    assert olds and all(o in out for o in olds)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_against_errors(repo, const_dir, tmp_path_factory, capsys):
    assert main(try_args(repo, "--against", "no-such-branch")) == 2
    assert "no such revision" in capsys.readouterr().err
    assert main(try_args(repo, "--against=--output=x")) == 2
    assert "needs a git revision" in capsys.readouterr().err
    # a principle added after the commit is absent at HEAD
    new = repo / "principles" / "brand-new.yaml"
    new.write_text((repo / "principles" / "no-sycophancy.yaml").read_text().replace("id: no-sycophancy", "id: brand-new"))
    args = try_args(repo, "--against", "HEAD")
    args[1] = "brand-new"
    assert main(args) == 2
    assert "principles/brand-new.yaml does not exist at that revision" in capsys.readouterr().err
    # a file that was broken at that revision is reported, not tried
    f = repo / "principles" / "no-sycophancy.yaml"
    good = f.read_text()
    f.write_text(good.replace("revision:", "revisoin:", 1))
    git(repo, "commit", "-qam", "broken")
    f.write_text(good)
    assert main(try_args(repo, "--against", "HEAD")) == 2
    captured = capsys.readouterr()
    assert re.search(r"HEAD:principles/no-sycophancy\.yaml:\d+: .*revisoin", captured.out)
    # not a git repository at all
    plain = tmp_path_factory.mktemp("not-a-repo")
    shutil.copytree(const_dir / "principles", plain / "principles")
    shutil.copytree(const_dir / "constitution", plain / "constitution")
    assert main(try_args(plain, "--against", "HEAD")) == 2
    assert "is not inside a git repository" in capsys.readouterr().err


# ------------------------------------------------------------------ the warm engine


def test_second_try_reuses_the_warm_server(state_dir, wide, capsys):
    args = ["try", "no-sycophancy", "--backend", "fake", "-n", "2", "--state-dir", str(state_dir)]
    assert main(args) == 0
    first = capsys.readouterr()
    state = read_state(state_dir / STATE_FILE)
    assert f"started the warm engine server (pid {state['pid']})" in first.out
    assert main(args) == 0
    second = capsys.readouterr()
    assert f"reused the warm engine server (pid {state['pid']}" in second.out
    assert read_state(state_dir / STATE_FILE) == state
    # one launch in the log, and the one server answered both runs' calls (3 stages + the judge each)
    log = (state_dir / "server.log").read_text()
    assert log.count(" starting fake ") == 1
    counts = health(state)["counts"]
    assert counts["generate"] == 6 and counts["score_options"] == 2
    # the two runs printed the same results (same engine, same seeds)
    strip = lambda s: re.sub(r"(?m)^(engine: |\d+ prompt).*\n", "", s)  # noqa: E731
    assert strip(first.out) == strip(second.out)
    assert main(["try", "--stop", "--state-dir", str(state_dir)]) == 0
    assert f"stopped the warm engine server (pid {state['pid']})" in capsys.readouterr().out
    assert health(state) is None and not (state_dir / STATE_FILE).exists()


def test_stale_or_damaged_state_starts_a_new_server(state_dir, tmp_path):
    state_dir.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    free_port = s.getsockname()[1]
    s.close()
    (state_dir / STATE_FILE).write_text(json.dumps({"pid": dead.pid, "port": free_port, "token": "x", "key": "k"}))
    said = []
    engine = connect("fake", "fake-model", state_dir=state_dir, log=said.append)
    assert engine.started and engine.pid != dead.pid
    assert any("does not answer" in m for m in said)
    engine.close()
    stop(state_dir)
    (state_dir / STATE_FILE).write_text("{not json")
    said.clear()
    engine = connect("fake", "fake-model", state_dir=state_dir, log=said.append)
    assert engine.started and any("damaged" in m for m in said)
    # another model: the server is replaced, not reused
    other = connect("fake", "fake-other", state_dir=state_dir, log=said.append)
    assert other.started and other.pid != engine.pid
    assert health(engine.state) is None
    assert any("holds another model" in m for m in said)


def test_a_port_answered_by_something_else_is_not_reused(state_dir):
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Other(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps({"pid": 1, "key": "k"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    other = HTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        state_dir.mkdir()
        (state_dir / STATE_FILE).write_text(json.dumps({"pid": 2, "port": other.server_address[1], "token": "t", "key": "k"}))
        engine = connect("fake", "fake-model", state_dir=state_dir)
        assert engine.started and engine.state["port"] != other.server_address[1]
    finally:
        other.shutdown()


def test_server_refuses_requests_without_its_token(state_dir):
    engine = connect("fake", "fake-model", state_dir=state_dir)
    url = f"http://127.0.0.1:{engine.state['port']}"
    assert httpx.get(f"{url}/health", trust_env=False).status_code == 403
    assert httpx.post(f"{url}/shutdown", headers={TOKEN_HEADER: "guess"}, trust_env=False).status_code == 403
    # a page whose name was rebound to 127.0.0.1 is refused by name, even if it had the token
    rebound = {TOKEN_HEADER: engine.state["token"], "Host": f"evil.example:{engine.state['port']}"}
    assert httpx.get(f"{url}/health", headers=rebound, trust_env=False).status_code == 421
    assert httpx.post(f"{url}/shutdown", headers=rebound, trust_env=False).status_code == 421
    local = {TOKEN_HEADER: engine.state["token"], "Host": f"localhost:{engine.state['port']}"}
    assert httpx.get(f"{url}/health", headers=local, trust_env=False).status_code == 200
    assert health(engine.state) is not None  # still running


def test_concurrent_first_calls_start_one_server(state_dir):
    got = []
    threads = [threading.Thread(target=lambda: got.append(connect("fake", "fake-model", state_dir=state_dir))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({e.pid for e in got}) == 1 and sum(e.started for e in got) == 1


def test_idle_server_stops_by_itself(state_dir):
    import time

    engine = connect("fake", "fake-model", state_dir=state_dir, idle_timeout_s=1.0)
    until = time.monotonic() + 3.0
    while time.monotonic() < until:  # a client claiming it (connect does) keeps it up past the timeout
        assert health(engine.state, claim=True) is not None
        time.sleep(0.3)
    deadline = time.monotonic() + 20
    while health(engine.state) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert health(engine.state) is None
    assert not (state_dir / STATE_FILE).exists()


def test_openai_backend_uses_the_named_server_directly(tmp_path, state_dir, wide, capsys):
    from fixtures_server import OracleServer

    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "odd-one", "prompt": "an odd question"}) + "\n"
                 + json.dumps({"id": "plain-one", "prompt": "a plain question"}) + "\n")
    with OracleServer(("policy-x",)) as srv:
        code = main(["try", "no-sycophancy", "--backend", "openai", "--base-url", srv.url, "--prompts", str(f),
                     "--state-dir", str(state_dir)])
        assert code == 0, capsys.readouterr().err
        assert len(srv.requests("generate")) == 6 and len(srv.requests("score")) == 4
    out = capsys.readouterr().out
    # the oracle server puts its marker in the initial answer of "odd" prompts and in the revision of
    # the others, and gives the marked response P = 0.9 in either order
    odd, plain = out.split("plain-one:")
    assert "P(revision better) = 0.100" in odd and "-> initial" in odd
    assert "P(revision better) = 0.900" in plain and "-> revision" in plain
    assert f"engine: the server at {srv.url}" in out
    assert not (state_dir / STATE_FILE).exists()  # no warm server of our own
