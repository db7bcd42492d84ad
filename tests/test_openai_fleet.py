"""Several OpenAI-compatible servers behind one engine (``--base-url A,B``): spread and failover.

The servers are real loopback HTTP servers (:mod:`fixtures_server`); the engine is the one the
commands use. What is checked: every request is answered, the load splits over healthy servers,
a server that fails on purpose (5xx, or nobody listening) costs retries but loses no request,
a server down at start is left out and reported, and servers that serve different models are
refused at start. The pool's choice rules are also checked alone with a hand-driven clock.
"""

from __future__ import annotations

import math

import httpx
import pytest
from fixtures_server import OracleServer, Reply, ScriptedServer, chat_completion, closed_port_url, error_body

from rlaif.engine.base import ChatRequest, SamplingConfig, ScoreRequest, describe
from rlaif.engine.openai_server import OpenAIServerEngine
from rlaif.engine.server_pool import Server, ServerPool, parse_base_urls

CHAT = "/v1/chat/completions"
FAST = dict(show_progress=False, retry_wait_s=0.01, retry_max_wait_s=0.05, retry_after_cap_s=0.3)
SAMPLING = SamplingConfig(temperature=0.5, top_p=0.9, max_tokens=16)


def asks(n: int) -> list[ChatRequest]:
    return [ChatRequest(({"role": "user", "content": f"question {i}"},), seed=i) for i in range(n)]


def slow_echo(delay_s: float = 0.02):
    """A server answering every chat request with its question after ``delay_s``."""
    def script(method, path, body, attempt):
        if path == "/v1/models":
            return Reply(200, {"data": [{"id": "m"}]})
        return Reply(200, chat_completion("echo " + body["messages"][-1]["content"]), delay_s=delay_s)
    return script


def test_parse_base_urls():
    assert parse_base_urls("http://a:1/v1/, https://b:2/ ,") == ["http://a:1", "https://b:2"]
    assert parse_base_urls(["http://a:1", "http://b:2,http://c:3"]) == ["http://a:1", "http://b:2", "http://c:3"]
    with pytest.raises(ValueError, match="twice"):
        parse_base_urls("http://a:1,http://a:1/v1")
    with pytest.raises(ValueError, match="http:// or https://"):
        parse_base_urls("http://a:1,b:2")
    with pytest.raises(ValueError, match="no server"):
        parse_base_urls(" , ")


def test_two_servers_share_the_requests_and_every_answer_comes_back_in_order():
    with ScriptedServer(slow_echo()) as a, ScriptedServer(slow_echo()) as b, \
            OpenAIServerEngine(f"{a.url},{b.url}", max_concurrency=8, **FAST) as eng:
        out = eng.generate(asks(60), SAMPLING)
        info = describe(eng)
        hits = a.count(CHAT), b.count(CHAT)
    assert [c.text for c in out] == [f"echo question {i}" for i in range(60)]
    assert sum(hits) == 60 and min(hits) >= 20, hits  # equal servers: close to 30 each
    assert info["servers"] == {a.url: {"answered": hits[0] + 1, "failed_attempts": 0},  # + its /v1/models
                               b.url: {"answered": hits[1] + 1, "failed_attempts": 0}}
    assert info["base_url"] == f"{a.url},{b.url}" and info["model"] == "m"


def test_a_faster_server_takes_more_of_the_work():
    with ScriptedServer(slow_echo(0.005)) as fast, ScriptedServer(slow_echo(0.08)) as slow, \
            OpenAIServerEngine([fast.url, slow.url], model="m", max_concurrency=4, **FAST) as eng:
        out = eng.generate(asks(60), SAMPLING)
        assert all(c.ok for c in out)
        assert fast.count(CHAT) > 2 * slow.count(CHAT) > 0, (fast.count(CHAT), slow.count(CHAT))


def test_a_failing_server_loses_no_request_and_gets_little_work():
    """One server answers 503 to every chat request: every request still ends on the good one."""
    def broken(method, path, body, attempt):
        if path == "/v1/models":
            return Reply(200, {"data": [{"id": "m"}]})
        return Reply(503, error_body("overloaded", 503))

    with ScriptedServer(slow_echo(0.01)) as good, ScriptedServer(broken) as bad, \
            OpenAIServerEngine(f"{bad.url},{good.url}", max_concurrency=6, max_retries=3,
                               **{**FAST, "retry_wait_s": 0.05, "retry_max_wait_s": 0.4}) as eng:
        out = eng.generate(asks(40), SAMPLING)
        stats = describe(eng)["servers"]
        bad_hits = bad.count(CHAT)
    assert [c.text for c in out] == [f"echo question {i}" for i in range(40)]
    assert good.count(CHAT) == 40
    # after its first failures the broken server only gets probes (one at a time, after a cooldown)
    assert 1 <= bad_hits <= 20, bad_hits
    assert stats[bad.url] == {"answered": 1, "failed_attempts": bad_hits}


def test_a_server_that_dies_mid_run_hands_its_work_to_the_other():
    """The first server answers the first batch, then drops every connection without answering."""
    dead = [False]

    def dies(method, path, body, attempt):
        return Reply(drop=True) if dead[0] else slow_echo(0.01)(method, path, body, attempt)

    with ScriptedServer(slow_echo(0.01)) as good, ScriptedServer(dies) as a, \
            OpenAIServerEngine([a.url, good.url], model="m", max_concurrency=4, max_retries=4, **FAST) as eng:
        first = eng.generate(asks(10), SAMPLING)
        answered_before = a.count(CHAT)
        dead[0] = True
        second = eng.generate(asks(30), SAMPLING)
        stats = describe(eng)["servers"]
        dropped = a.count(CHAT) - answered_before
    assert [c.text for c in first + second] == [f"echo question {i}" for i in [*range(10), *range(30)]]
    assert answered_before >= 3 and 1 <= dropped <= 15, (answered_before, dropped)
    assert stats[a.url] == {"answered": answered_before + 1, "failed_attempts": dropped}  # + its /v1/models at start
    assert stats[good.url]["answered"] == 1 + 40 - answered_before


def test_a_server_down_at_start_is_left_out_and_named():
    dead = closed_port_url()
    with OracleServer(("policy",)) as srv, OpenAIServerEngine([dead, srv.url], max_retries=4, **FAST) as eng:
        assert eng.model == "policy"
        assert list(eng.left_out) == [dead] and "ConnectError" in eng.left_out[dead]
        out = eng.generate(asks(5), SAMPLING)
        scores = eng.score_options([ScoreRequest(({"role": "user", "content": "Response A: zebra\nResponse B: no"},), "")],
                                   ["A", "B"])
        assert describe(eng)["servers"][dead] == {"left_out": eng.left_out[dead]}
    assert all(c.ok for c in out) and math.exp(scores[0].logprobs[0]) == pytest.approx(0.9)
    with pytest.raises(RuntimeError, match="no server answers"):
        OpenAIServerEngine([closed_port_url(), closed_port_url()], max_retries=1, **FAST)


def test_servers_of_different_models_are_refused_at_start():
    with OracleServer(("m1",)) as a, OracleServer(("m2",)) as b:
        with pytest.raises(RuntimeError, match=r"does not serve a model named 'm1' \(it serves \['m2'\]\)"):
            OpenAIServerEngine([a.url, b.url], **FAST)
        with OracleServer(("m2", "m1")) as c, OpenAIServerEngine([a.url, c.url], **FAST) as eng:
            assert eng.model == "m1" and eng.served_models() == ["m1"]


def test_the_pool_probes_a_recovering_server_one_request_at_a_time():
    now = [0.0]
    pool = ServerPool([Server("http://a", httpx.AsyncClient()), Server("http://b", httpx.AsyncClient())], clock=lambda: now[0])
    a, b = pool.servers
    assert {pool.pick().url for _ in range(4)} == {"http://a", "http://b"}  # ties go in turn
    a.in_flight = 2
    assert pool.pick() is b  # the fewest in flight
    a.in_flight = 0
    pool.failure(a, 1.0, "boom")
    assert pool.pick() is b and pool.pick(avoid=b) is a and not pool.alternative(b)  # cooling: only when nothing else
    now[0] = 1.5  # cooled down: a is on probation and takes one request
    b.in_flight = 5
    assert pool.pick() is a
    a.in_flight = 1
    assert pool.pick() is b  # the probe is still out
    pool.success(a)
    assert pool.pick() is a and pool.healthy(a)
    pool.leave_out(b, "gone")
    pool.leave_out(a, "gone too")  # the last server stays
    assert pool.servers == [a] and pool.stats() == {"http://a": {"answered": 1, "failed_attempts": 1}, "http://b": {"left_out": "gone"}}
