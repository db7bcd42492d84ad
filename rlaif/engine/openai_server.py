"""Engine that talks to a model server speaking the OpenAI API (first of all ``vllm serve``).

``OpenAIServerEngine`` sends one HTTP request per conversation, at most ``max_concurrency``
at a time, and returns the results in request order. It runs its own asyncio event loop in
a background thread, so it works from plain synchronous code, including code that is itself
running inside an event loop (a notebook).

``base_url`` is the server's root (``http://host:8000``); a trailing ``/v1`` is accepted and
dropped, because vLLM's ``/tokenize`` lives outside ``/v1``. Several servers of the same model
(``"http://a:8000,http://b:8000"`` or a list) share the requests: each attempt goes to the
healthy server with the fewest requests in flight, and a failed attempt is retried on another
server at once (:mod:`rlaif.engine.server_pool`). With several servers the engine asks each for
its models at start: one that does not answer (after one retry) is reported in ``left_out`` and
gets no requests; one that does not serve the model is an error.

Generation
    ``POST /v1/chat/completions`` with ``messages``, ``temperature``, ``top_p``,
    ``max_tokens`` and (when the request has one) ``seed``. Standard OpenAI API; any
    compatible server works. ``finish_reason`` "length" stays "length"; "stop", tool calls,
    content filters and a missing reason become "stop"; "abort"/"error" become an error
    completion. Token counts come from ``usage``. vLLM caps ``max_tokens`` at the room left
    in the context itself and answers 400 for a prompt that does not fit.

    Seeds: the server honours each request's ``seed``. Whether the same request and seed give
    the same text whatever else is in flight depends on the server's kernels being
    batch-invariant: on CPU, a ``--dtype float32`` server is (checked: identical texts across
    differently composed concurrent batches, and the same texts and option scores as the
    in-process engine in float32); a bfloat16 one is not (identical concurrent requests were
    seen to diverge after a few tokens).

Option scoring (the AI-feedback labeller)
    See :mod:`rlaif.engine.openai_scoring` (how option log-probabilities are asked for and read).

Provenance
    ``model`` is the name requests ask for (given, or the server's first). Every answer names
    the model that produced it; those names are counted in ``reported_models`` (and shown by
    ``info()``), and :func:`rlaif.engine.answered_by` turns them into the name rows record, so a
    server that answers with another model than the one asked for is recorded as it answered.
    ``served_models()`` lists what the server serves (the commands refuse a name not listed).

Robustness
    Every request has a ``timeout_s`` timeout. Connection errors, timeouts, HTTP 429 and 5xx
    are retried with exponential backoff and jitter (``retry_wait_s`` doubling up to
    ``retry_max_wait_s``), at most ``max_retries`` times (``max_retries + 1`` attempts); a
    ``Retry-After`` header is honoured, capped at ``retry_after_cap_s``. Other 4xx answers
    (a prompt longer than the context: 400) are not retried. A failed request comes back as
    ``Completion(finish_reason="error", error=...)`` / ``OptionScores(error=...)``, ``retryable``
    when it failed for now; one bad request never fails the batch. A server gone (``breaker``,
    :mod:`rlaif.engine.failures`) sends nothing more: the call raises ``ServerGone``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from collections import Counter
from concurrent.futures import Future
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import httpx

from rlaif.engine.base import ChatRequest, SamplingConfig, cut_at_stop
from rlaif.engine.failures import (DEFAULT_LIMIT, TRANSIENT_ERRORS, Breaker, GaveUp, Permanent, Transient, refused,
                                   transient_finish, transient_status)
from rlaif.engine.openai_models import ServerModels
from rlaif.engine.openai_scoring import MAX_TOP_LOGPROBS, OptionScoring
from rlaif.engine.structured import missing_logprobs, openai_fields, permanent_score_error
from rlaif.engine.server_pool import Server, ServerPool, describe_error, parse_base_urls, retry_after_s, server_message
from rlaif.data.records import Completion

log = logging.getLogger(__name__)

T = TypeVar("T")


class OpenAIServerEngine(ServerModels, OptionScoring):
    """Chat generation and option scoring through an OpenAI-compatible HTTP server."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 32,
        timeout_s: float = 120,
        max_retries: int = 6,
        show_progress: bool = True,
        *,
        retry_wait_s: float = 0.5,
        retry_max_wait_s: float = 30.0,
        retry_after_cap_s: float = 60.0,
        top_logprobs: int = MAX_TOP_LOGPROBS,
        max_consecutive_failures: int = DEFAULT_LIMIT,
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if not 1 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [1, {MAX_TOP_LOGPROBS}], got {top_logprobs}")
        self.base_urls = parse_base_urls(base_url)
        self.base_url = ",".join(self.base_urls)
        self.max_concurrency = max_concurrency
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.show_progress = show_progress
        self.retry_wait_s = retry_wait_s
        self.retry_max_wait_s = retry_max_wait_s
        self.retry_after_cap_s = retry_after_cap_s
        self.top_logprobs = top_logprobs
        self.breaker = Breaker(max_consecutive_failures, f"the server{'s' * (len(self.base_urls) > 1)} at {self.base_url}")
        """Stops the engine when the server is gone (:mod:`rlaif.engine.failures`): calls then raise ServerGone."""
        self.server_max_model_len: int | None = None
        self.reported_models: Counter[str] = Counter()
        """The ``model`` each answer named, counted: what really answered (see :func:`rlaif.engine.answered_by`)."""
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._option_cache: dict[tuple[str, tuple[str, ...]], list[int] | str | None] = {}
        self._tokenize_supported: bool | None = None
        self._pool: ServerPool | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rlaif-openai-client", daemon=True)
        self._thread.start()
        try:
            self._run(self._open())
            self.model = self._run(self._start(model))
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- plumbing

    def _run(self, coro: Awaitable[T]) -> T:
        if self._loop.is_closed():
            if asyncio.iscoroutine(coro):
                coro.close()
            raise RuntimeError("the engine is closed")
        fut: Future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    async def _open(self) -> None:
        limits = httpx.Limits(max_connections=self.max_concurrency + 4, max_keepalive_connections=self.max_concurrency + 4)
        self._pool = ServerPool([
            Server(url, httpx.AsyncClient(base_url=url, headers=self._headers, timeout=httpx.Timeout(self.timeout_s), limits=limits))
            for url in self.base_urls
        ])

    def _backoff(self, n: int, exc: BaseException) -> float:
        """Exponential backoff with jitter after the n-th failed attempt; a Retry-After is honoured (capped)."""
        backoff = min(self.retry_max_wait_s, self.retry_wait_s * 2.0**min(n - 1, 30) + random.uniform(0, self.retry_wait_s))
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return max(backoff, min(exc.retry_after, self.retry_after_cap_s))
        return backoff

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                       pin: Server | None = None, retries: int | None = None) -> dict[str, Any]:
        """One call with retries (on another server when one is healthy); the JSON answer, or Permanent / GaveUp.

        ``pin`` sends every attempt to that server; ``retries`` replaces ``max_retries``.
        """
        pool = self._pool
        assert pool is not None
        last = (self.max_retries if retries is None else retries) + 1
        failed_on: Server | None = None
        for attempt in range(1, last + 1):
            if self.breaker.tripped:  # the server is gone: nothing more is sent
                raise GaveUp(self.breaker.tripped)
            server = pin or pool.pick(avoid=failed_on)
            server.in_flight += 1
            try:
                data = await self._once(server, method, path, body)
            except TRANSIENT_ERRORS as exc:
                error: BaseException = exc
            except Permanent:
                pool.success(server)  # it answered: the request, not the server, is at fault
                self.breaker.ok()
                raise
            else:
                pool.success(server)
                self.breaker.ok()
                return data
            finally:
                server.in_flight -= 1
            why = describe_error(error, self.timeout_s) + (f" from {server.url}" if len(pool) > 1 else "")
            if refused(error) and server.answered and pool.lost(server, why):
                self.breaker.trip(f"{server.url} stopped answering: connection refused after it had answered ({why})")
            pool.failure(server, self._backoff(server.consecutive + 1, error), why)
            if attempt == last or self.breaker.tripped:
                if pin is None:
                    self.breaker.failed(why)
                raise GaveUp(f"{why} (gave up after {attempt} attempt{'s' * (attempt != 1)})") from error
            if pin is not None or not pool.alternative(server):
                await self.breaker.sleep(self._backoff(attempt, error))
            failed_on = server
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, server: Server, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        try:
            resp = await server.client.request(method, path, json=body)
        except httpx.TransportError:
            raise  # connection errors and timeouts: retried
        except httpx.HTTPError as exc:  # e.g. too many redirects: not worth retrying
            raise Permanent(f"{type(exc).__name__}: {exc}") from None
        if transient_status(resp.status_code):
            raise Transient(resp.status_code, server_message(resp), retry_after_s(resp))
        if resp.status_code >= 400:
            raise Permanent(f"HTTP {resp.status_code}: {server_message(resp)}", resp.status_code)
        try:
            data = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise Permanent(f"the server's answer to {path} is not JSON: {resp.text[:200]!r}") from None
        if not isinstance(data, dict):
            raise Permanent(f"the server's answer to {path} is not a JSON object")
        return data

    def _note_model(self, data: dict[str, Any]) -> None:
        # Runs on the event-loop thread only, so the counter needs no lock.
        name = data.get("model")
        if isinstance(name, str) and name:
            self.reported_models[name] += 1

    def _map(self, items: Sequence[Any], work: Callable[[Any], Awaitable[T]], desc: str, show: bool = True) -> list[T]:
        """Run ``work`` on every item, at most max_concurrency at a time; results in order."""
        if not items:
            return []

        async def main() -> list[T]:
            self.breaker.check()
            sem = asyncio.Semaphore(self.max_concurrency)
            bar = _progress(len(items), desc, self.show_progress and show)

            async def one(item: Any) -> T:
                async with sem:
                    result = await work(item)
                if bar is not None:
                    bar.update(1)
                return result

            try:
                out = list(await asyncio.gather(*(one(it) for it in items)))
                self.breaker.check()  # gone mid-call: the command stops here (ServerGone)
                return out
            finally:
                if bar is not None:
                    bar.close()

        return self._run(main())

    # ---------------------------------------------------------------- generation

    def generate(self, requests: Sequence[ChatRequest], sampling: SamplingConfig, desc: str = "") -> list[Completion]:
        return self._map(list(requests), lambda req: self._generate_one(req, sampling), desc or "generate")

    async def _generate_one(self, req: ChatRequest, sampling: SamplingConfig) -> Completion:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in req.messages],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "n": 1,
            "stream": False,
        }
        if req.seed is not None:
            body["seed"] = req.seed
        if req.assistant_prefix:  # continue the partial assistant turn (vLLM's continue_final_message)
            body.update(self._chat_body(req.messages, req.assistant_prefix))
        if req.stop:  # the stop string stays in the text (vLLM's include_stop_str_in_output)
            body.update(stop=list(req.stop), include_stop_str_in_output=True)
        body.update(openai_fields(req.constraint))
        try:
            data = await self._request("POST", "/v1/chat/completions", body)
            self._note_model(data)
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
            usage = data.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
            reason = choice.get("finish_reason")
        except GaveUp as exc:
            return Completion("", "error", 0, 0, error=str(exc), retryable=True)
        except Permanent as exc:
            return Completion("", "error", 0, 0, error=str(exc))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            return Completion("", "error", 0, 0, error=f"malformed chat completion from the server: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - one bad request never fails the batch
            log.exception("unexpected error from %s", self.base_url)
            return Completion("", "error", 0, 0, error=f"unexpected error: {exc!r}")
        if transient_finish(reason):
            return Completion(text, "error", prompt_tokens, completion_tokens, retryable=True,
                              error=f"the server ended the request with finish_reason={reason!r}")
        if req.stop:
            hit = choice.get("stop_reason")  # a server that left the stop string out names it here
            if isinstance(hit, str) and hit in req.stop and not text.endswith(hit):
                text += hit
            text, cut = cut_at_stop(text, req.stop)  # a server that ignored the field
            reason = "stop" if cut else reason
        return Completion(text, "length" if reason == "length" else "stop", prompt_tokens, completion_tokens)

    # ---------------------------------------------------------------- the rest

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "base_url": self.base_url,
            "model": self.model,
            "max_concurrency": self.max_concurrency,
            "timeout_s": self.timeout_s,
            "max_retries": self.max_retries,
        }
        if self.server_max_model_len is not None:
            out["max_model_len"] = self.server_max_model_len
        if self.reported_models:
            out["reported_models"] = dict(sorted(self.reported_models.items()))
        if len(self.base_urls) > 1 and self._pool is not None:
            out["servers"] = self._pool.stats()
        return out

    def close(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is None or loop.is_closed():
            return
        if self._pool is not None:
            servers = self._pool.every
            self._pool = None
            for server in servers:
                try:
                    asyncio.run_coroutine_threadsafe(server.client.aclose(), loop).result(timeout=10)
                except Exception:  # noqa: BLE001 - best effort on shutdown
                    pass
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            loop.close()

    def __enter__(self) -> "OpenAIServerEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -------------------------------------------------------------------- helpers


def _progress(total: int, desc: str, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


__all__ = ["OpenAIServerEngine", "MAX_TOP_LOGPROBS"]
