"""OpenAIServerEngine: against scripted loopback servers (fast) and a real vLLM server (marked vllm)."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from fixtures_server import Reply, ScriptedServer, chat_completion, closed_port_url, error_body, vllm_server  # noqa: F401

from rlaif.engine.base import ChatRequest, Engine, OptionScores, SamplingConfig, ScoreRequest, describe
from rlaif.engine.openai_server import OpenAIServerEngine

CHAT = "/v1/chat/completions"
FAST = dict(show_progress=False, retry_wait_s=0.01, retry_max_wait_s=0.05, retry_after_cap_s=0.3)
SAMPLING = SamplingConfig(temperature=0.5, top_p=0.9, max_tokens=16)


def ask(text: str, seed: int | None = 1) -> ChatRequest:
    return ChatRequest(({"role": "user", "content": text},), seed=seed)


def engine_for(server: ScriptedServer, **kw) -> OpenAIServerEngine:
    return OpenAIServerEngine(server.url, model="test-model", **{**FAST, **kw})


# ------------------------------------------------------------------ scripted servers


def test_retries_503_then_succeeds():
    def script(method, path, body, attempt):
        if attempt <= 2:
            return Reply(503, error_body("warming up", 503))
        return Reply(200, chat_completion("fine", "stop", 11, 3))

    with ScriptedServer(script) as srv, engine_for(srv, max_retries=6) as eng:
        out = eng.generate([ask("hi", seed=5)], SAMPLING)
        assert srv.count(CHAT) == 3
        body = srv.hits[-1][2]
    assert out[0].ok and out[0].text == "fine" and out[0].finish_reason == "stop"
    assert (out[0].prompt_tokens, out[0].completion_tokens) == (11, 3)
    assert body["model"] == "test-model" and body["messages"] == [{"role": "user", "content": "hi"}]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.5, 0.9, 16, 5)


def test_always_429_gives_up_after_max_retries():
    with ScriptedServer(lambda *a: Reply(429, error_body("slow down", 429))) as srv, engine_for(srv, max_retries=3) as eng:
        out = eng.generate([ask("hi")], SAMPLING)
        assert srv.count(CHAT) == 4  # one try + max_retries retries
    c = out[0]
    assert not c.ok and c.finish_reason == "error" and c.text == ""
    assert "HTTP 429" in c.error and "slow down" in c.error and "gave up after 4 attempts" in c.error


def test_400_is_not_retried():
    msg = "This model's maximum context length is 4096 tokens. However, your prompt contains at least 5000 input tokens"
    with ScriptedServer(lambda *a: Reply(400, error_body(msg, 400))) as srv, engine_for(srv, max_retries=5) as eng:
        out = eng.generate([ask("very long")], SAMPLING)
        assert srv.count(CHAT) == 1
    assert out[0].finish_reason == "error" and out[0].error == f"HTTP 400: {msg}"


def test_timeout_is_retried_then_recorded():
    with ScriptedServer(lambda *a: Reply(200, chat_completion(), delay_s=30.0)) as srv, engine_for(srv, timeout_s=0.2, max_retries=1) as eng:
        t0 = time.monotonic()
        out = eng.generate([ask("hi")], SAMPLING)
        elapsed = time.monotonic() - t0
        assert srv.count(CHAT) == 2
    assert elapsed < 10  # the server would answer after 30 s
    assert out[0].finish_reason == "error" and "timed out after 0.2s" in out[0].error and "2 attempts" in out[0].error


def test_retry_after_is_honoured_and_capped():
    def script(method, path, body, attempt):
        if attempt == 1:
            return Reply(429, error_body("busy", 429), headers={"Retry-After": "30"})
        return Reply(200, chat_completion("late"))

    with ScriptedServer(script) as srv, engine_for(srv) as eng:  # retry_after_cap_s=0.3
        t0 = time.monotonic()
        out = eng.generate([ask("hi")], SAMPLING)
        elapsed = time.monotonic() - t0
    assert out[0].text == "late"
    assert 0.3 <= elapsed < 5


def test_connection_refused_becomes_error():
    with OpenAIServerEngine(closed_port_url(), model="m", max_retries=2, **FAST) as eng:
        out = eng.generate([ask("a"), ask("b")], SAMPLING)
    assert [c.finish_reason for c in out] == ["error", "error"]
    assert all("ConnectError" in c.error and "3 attempts" in c.error for c in out)


def test_batch_is_ordered_bounded_and_survives_bad_requests():
    def script(method, path, body, attempt):
        text = body["messages"][-1]["content"]
        if text == "bad":
            return Reply(400, error_body("bad request", 400))
        if text == "boom":
            return Reply(500, b"internal error")
        n = int(text)
        # Later requests answer sooner, so completion order differs from request order.
        return Reply(200, chat_completion(f"echo {n}", "length" if n % 2 else "stop"), delay_s=0.02 * (12 - n))

    texts = [str(i) for i in range(6)] + ["bad"] + [str(i) for i in range(6, 10)] + ["boom"]
    with ScriptedServer(script) as srv, engine_for(srv, max_concurrency=3, max_retries=1) as eng:
        out = eng.generate([ask(t) for t in texts], SAMPLING)
        assert srv.max_in_flight <= 3
    assert len(out) == len(texts)
    for t, c in zip(texts, out):
        if t == "bad":
            assert c.error == "HTTP 400: bad request"
        elif t == "boom":
            assert c.error.startswith("HTTP 500: internal error") and "2 attempts" in c.error
        else:
            assert c.ok and c.text == f"echo {t}" and c.finish_reason == ("length" if int(t) % 2 else "stop")


def test_finish_reasons_and_malformed_answers():
    answers = {
        "none": Reply(200, chat_completion("x", None)),
        "tool": Reply(200, chat_completion("x", "tool_calls")),
        "abort": Reply(200, chat_completion("x", "abort")),
        "empty": Reply(200, {"choices": []}),
        "html": Reply(200, b"<html>proxy</html>"),
    }
    with ScriptedServer(lambda m, p, body, a: answers[body["messages"][-1]["content"]]) as srv, engine_for(srv) as eng:
        out = eng.generate([ask(k) for k in answers], SAMPLING)
        assert srv.count(CHAT) == len(answers)  # none of these is retried
    by = dict(zip(answers, out))
    assert by["none"].finish_reason == "stop" and by["tool"].finish_reason == "stop"
    assert by["abort"].finish_reason == "error" and "abort" in by["abort"].error
    assert by["empty"].finish_reason == "error" and "malformed" in by["empty"].error
    assert by["html"].finish_reason == "error" and "not JSON" in by["html"].error


def test_model_is_taken_from_the_server_and_info():
    models = {"object": "list", "data": [{"id": "first-model", "max_model_len": 2048}, {"id": "second"}]}

    def script(method, path, body, attempt):
        if path == "/v1/models":
            return Reply(503, error_body("starting", 503)) if attempt == 1 else Reply(200, models)
        return Reply(200, chat_completion("ok"))

    with ScriptedServer(script) as srv:
        with OpenAIServerEngine(srv.url + "/v1/", api_key="sk-test", max_concurrency=4, **FAST) as eng:
            assert eng.model == "first-model"
            assert isinstance(eng, Engine)
            info = describe(eng)
            assert eng.generate([ask("hi")], SAMPLING)[0].text == "ok"
            assert srv.hits[-1][2]["model"] == "first-model"
    assert info["backend"] == "OpenAIServerEngine"
    assert {k: info[k] for k in ("base_url", "model", "max_concurrency", "max_model_len")} == {
        "base_url": srv.url, "model": "first-model", "max_concurrency": 4, "max_model_len": 2048,
    }


def test_unreachable_server_without_model_raises():
    with pytest.raises(RuntimeError, match="cannot list the models"):
        OpenAIServerEngine(closed_port_url(), max_retries=1, **FAST)


def test_works_from_inside_a_running_event_loop():
    with ScriptedServer(lambda *a: Reply(200, chat_completion("from loop"))) as srv, engine_for(srv) as eng:

        async def main():
            return eng.generate([ask("hi")], SAMPLING)

        assert asyncio.run(main())[0].text == "from loop"
        assert eng.generate([], SAMPLING) == []


def test_closed_engine_refuses_work():
    with ScriptedServer(lambda *a: Reply(200, chat_completion())) as srv:
        eng = engine_for(srv)
        eng.close()
        eng.close()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            eng.generate([ask("hi")], SAMPLING)


# ---- option scoring against a scripted vLLM-like server

VOCAB = {"A": 65, "B": 66, "C": 67}


def fake_tokenize(body):
    """Characters as tokens: the prompt is the rendered conversation's last message."""
    text = body["messages"][-1]["content"] if body.get("continue_final_message") else ""
    return {"count": len(text), "max_model_len": 4096, "tokens": [1, 2, 3] + [VOCAB.get(ch, ord(ch) + 1000) for ch in text]}


def logprob_answer(entries: dict[str, float], prompt_tokens: int = 40):
    top = [{"token": k, "logprob": v, "bytes": []} for k, v in entries.items()]
    return chat_completion("x", "length", prompt_tokens, 1, logprobs={"content": [dict(top[0], top_logprobs=top)]})


def test_score_options_uses_token_ids_and_normalises():
    def script(method, path, body, attempt):
        if path == "/tokenize":
            return Reply(200, fake_tokenize(body))
        if body["messages"][0]["content"] == "long":
            return Reply(400, error_body("prompt too long", 400))
        # processed logprobs: already restricted; masked tokens read -9999
        return Reply(200, logprob_answer({"token_id:66": math.log(0.3), "token_id:65": math.log(0.6), "token_id:1": -9999.0}))

    reqs = [ScoreRequest(({"role": "user", "content": "q"},), "The answer is ("), ScoreRequest(({"role": "user", "content": "long"},), "The answer is (")]
    with ScriptedServer(script) as srv, engine_for(srv) as eng:
        out = eng.score_options(reqs * 3, ["A", "B"])
        assert srv.count("/tokenize") == 3  # base + one per option, once per prefix
        eng.score_options(reqs, ["A", "B"])
        assert srv.count("/tokenize") == 3  # cached
        body = next(b for m, p, b in srv.hits if p == CHAT)
    ok, bad = out[0], out[1]
    assert ok.ok and ok.prompt_tokens == 40
    assert ok.logprobs == pytest.approx((math.log(2 / 3), math.log(1 / 3)))
    assert sum(math.exp(x) for x in ok.logprobs) == pytest.approx(1)
    assert bad == OptionScores((), 0, error="HTTP 400: prompt too long")
    assert out[2:] == out[:2] * 2
    assert body["messages"][-1] == {"role": "assistant", "content": "The answer is ("}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["allowed_token_ids"] == [65, 66] and body["return_tokens_as_token_ids"] is True
    assert (body["max_tokens"], body["temperature"], body["logprobs"], body["top_logprobs"]) == (1, 1.0, True, 20)


def test_score_options_empty_prefix_uses_generation_prompt():
    def script(method, path, body, attempt):
        if path == "/tokenize":
            return Reply(200, fake_tokenize(body))
        return Reply(200, logprob_answer({"token_id:65": -0.1}))  # raw mode: B not in top_logprobs

    with ScriptedServer(script) as srv, engine_for(srv) as eng:
        out = eng.score_options([ScoreRequest(({"role": "user", "content": "q"},))], ["A", "B"])
        body = next(b for m, p, b in srv.hits if p == CHAT)
    assert out[0].logprobs == (0.0, float("-inf"))
    assert body["add_generation_prompt"] is True and "continue_final_message" not in body
    assert body["messages"] == [{"role": "user", "content": "q"}]


def test_score_options_errors_for_bad_options_and_missing_logprobs():
    def script(method, path, body, attempt):
        if path == "/tokenize":
            return Reply(200, fake_tokenize(body))
        return Reply(200, logprob_answer({"token_id:67": -0.1}))

    req = [ScoreRequest(({"role": "user", "content": "q"},), "(")]
    with ScriptedServer(script) as srv, engine_for(srv) as eng:
        shared = eng.score_options(req, ["Ax", "Ay"])
        missing = eng.score_options(req, ["A", "B"])
        assert srv.count(CHAT) == 1  # the option error is found before any scoring request
    assert "share a first token" in shared[0].error
    assert "none of the options" in missing[0].error and missing[0].prompt_tokens == 40


def test_score_options_without_tokenize_matches_by_text():
    def script(method, path, body, attempt):
        if path == "/tokenize":
            return Reply(404, {"detail": "Not Found"})
        return Reply(200, logprob_answer({"B": math.log(0.5), "A": math.log(0.25), " A": math.log(0.2)}))

    req = [ScoreRequest(({"role": "user", "content": "q"},), "(")]
    with ScriptedServer(script) as srv, engine_for(srv) as eng:
        out = eng.score_options(req * 2, ["A", "B"])
        eng.score_options(req, ["A", "B"])
        assert srv.count("/tokenize") == 1  # probed once
        body = next(b for m, p, b in srv.hits if p == CHAT)
    assert "allowed_token_ids" not in body and "return_tokens_as_token_ids" not in body
    assert out[0].logprobs == pytest.approx((math.log(1 / 3), math.log(2 / 3)))


def test_score_options_retries_and_gives_up():
    def script(method, path, body, attempt):
        if path == "/tokenize":
            return Reply(200, fake_tokenize(body))
        return Reply(503, error_body("overloaded", 503))

    with ScriptedServer(script) as srv, engine_for(srv, max_retries=2) as eng:
        out = eng.score_options([ScoreRequest(({"role": "user", "content": "q"},), "(")], ["A", "B"])
        assert srv.count(CHAT) == 3
    assert out[0].error.startswith("HTTP 503: overloaded") and "3 attempts" in out[0].error


# ------------------------------------------------------------------ a real vLLM server

FRUIT = ({"role": "user", "content": "Which is a fruit? (A) apple (B) car. Answer with the letter."},)


@pytest.fixture(scope="module")
def server_engine(vllm_server):
    eng = OpenAIServerEngine(vllm_server, show_progress=False, max_concurrency=8)
    yield eng
    eng.close()


@pytest.mark.vllm
def test_server_generate_ordered_seeded_and_too_long(server_engine, default_model):
    assert server_engine.model == default_model  # the server's first (only) model
    assert server_engine.info()["max_model_len"] == 4096
    chats = [ask("Name a colour.", 1), ask("What is 2 + 2? Answer with a number.", 2), ask("hello " * 5000, 3), ask("Name a colour.", 1)]
    out = server_engine.generate(chats, SamplingConfig(temperature=0.8, top_p=0.95, max_tokens=24))
    assert len(out) == 4
    for i in (0, 1, 3):
        assert out[i].ok and out[i].text.strip() and out[i].finish_reason in ("stop", "length")
        assert out[i].prompt_tokens > 0 and 0 < out[i].completion_tokens <= 24
    assert out[0].text == out[3].text  # same request + seed -> same text (float32 server: batch-invariant)
    assert out[0].text != out[1].text
    bad = out[2]
    assert bad.finish_reason == "error" and bad.error.startswith("HTTP 400") and "context length" in bad.error


@pytest.mark.vllm
def test_server_honours_the_seed(vllm_server):
    """The seed reaches the server: same seed -> same text, another seed -> another text.

    (On a bfloat16 server, identical requests sent concurrently can land in differently shaped
    batches and diverge after a few tokens; the test server runs float32, which is batch-invariant.)
    """
    chats = [ask("Name a colour.", 1), ask("Name a colour.", 2), ask("Name a colour.", 1)]
    chats += [ask(f"Tell me about the number {i}.", i) for i in range(6)] + [ask("Name a colour.", 1)]
    with OpenAIServerEngine(vllm_server, show_progress=False, max_concurrency=4) as eng:
        out = eng.generate(chats, SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=24))
    assert all(c.ok and c.text.strip() for c in out)
    assert out[0].text == out[2].text == out[-1].text
    assert out[0].text != out[1].text


@pytest.mark.vllm
def test_server_score_options(server_engine):
    reqs = [ScoreRequest(FRUIT, "The answer is ("), ScoreRequest(FRUIT, ""), ScoreRequest((FRUIT[0] | {"content": "x " * 5000},), "(")]
    out = server_engine.score_options(reqs, ["A", "B"])
    for s in out[:2]:
        assert s.ok and s.prompt_tokens > 40 and len(s.logprobs) == 2
        assert all(math.isfinite(x) for x in s.logprobs)
        assert sum(math.exp(x) for x in s.logprobs) == pytest.approx(1, abs=1e-6)
    # SmolLM2-135M prefers "B" after "The answer is (" (P(A) = 0.12, the same in-process), but
    # starts its answer with "A" without a prefix (P(A) = 0.92). Only normalisation is asserted.
    assert out[2].error and out[2].error.startswith("HTTP 400")


@pytest.mark.vllm
def test_server_matches_in_process_engine(server_engine, vllm_engine):
    """Same model, same settings: the server gives the in-process engine's scores and texts."""
    reqs = [ScoreRequest(FRUIT, "The answer is ("), ScoreRequest(FRUIT, ""), ScoreRequest(FRUIT, "Answer:\n")]
    remote = server_engine.score_options(reqs, ["A", "B"])
    local = vllm_engine.score_options(reqs, ["A", "B"])
    for r, l in zip(remote, local):
        assert r.ok and l.ok and r.prompt_tokens == l.prompt_tokens
        assert r.logprobs == pytest.approx(l.logprobs, abs=1e-3)
    # "Answer: " + "A" tokenizes as "Answer", ":", " A": both engines refuse it the same way.
    merged = [ScoreRequest(FRUIT, "Answer: ")]
    r, l = server_engine.score_options(merged, ["A", "B"])[0], vllm_engine.score_options(merged, ["A", "B"])[0]
    assert r.error and r.error == l.error
    chats = [ask("Name a colour.", 7)]
    sampling = SamplingConfig(temperature=0.8, top_p=0.95, max_tokens=16)
    assert server_engine.generate(chats, sampling)[0].text == vllm_engine.generate(chats, sampling)[0].text
