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

Option scoring (the AI-feedback labeller), matching :mod:`rlaif.engine.vllm_local`
    The prompt is ``chat_template(messages, add_generation_prompt=True) + assistant_prefix``.
    We do not have the tokenizer here, so the server applies the template: the request
    carries ``messages`` plus a final assistant message holding ``assistant_prefix`` with the
    vLLM extensions ``continue_final_message: true, add_generation_prompt: false`` (with an
    empty prefix: ``add_generation_prompt: true`` and no extra message), ``max_tokens: 1``,
    ``temperature: 1``, ``top_p: 1``, ``logprobs: true`` and ``top_logprobs``.

    The options' first tokens are found once per distinct ``assistant_prefix`` through vLLM's
    ``POST /tokenize`` (chat form, same template flags): tokenize the prompt ending in
    ``prefix`` and the prompt ending in ``prefix + option``; the option's first token is the
    first token past the common part. Like the in-process engine, an option that merges with
    the text before it, or two options sharing a first token, is an error. (The token ids are
    computed on a one-message stand-in conversation; this is exact for every template whose
    generation prompt does not depend on the conversation, i.e. all common ones.)

    With the ids known, the scoring request adds ``allowed_token_ids`` (the options' first
    tokens) and ``return_tokens_as_token_ids: true`` (top-logprob entries read
    ``"token_id:<id>"``), and the option log-probabilities are read from ``top_logprobs`` by
    id and normalised over the options with :func:`normalise_logprobs`.

    What vLLM 0.32's server does (checked against ``--model SmolLM2-135M-Instruct``):
    ``continue_final_message`` renders exactly ``template(add_generation_prompt) + prefix``
    (checked token for token, trailing spaces and newlines included); ``/tokenize`` accepts
    the chat form; ``allowed_token_ids`` restricts the sampled token; with
    ``--logprobs-mode processed_logprobs`` the returned log-probabilities are already
    normalised over the allowed tokens (masked tokens read -9999.0, treated as -inf here);
    with the default raw mode they are the unmasked log-probabilities, and normalising over
    the options gives the same numbers as long as every option is among ``top_logprobs``
    (at most 20, the server's default ``--max-logprobs``). An option missing from
    ``top_logprobs`` scores -inf; if all are missing the request gets an error.

    Fallback: a server without ``/tokenize`` (404/405/501 there) is scored without
    ``allowed_token_ids`` and without token ids, matching ``top_logprobs`` entries by text
    (the longest entry that is a prefix of the option). ``continue_final_message`` is still
    needed for a non-empty ``assistant_prefix``; a server that rejects it answers 400, which
    becomes the request's error.

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

from rlaif.engine.base import ChatRequest, OptionScores, SamplingConfig, ScoreRequest, normalise_logprobs
from rlaif.engine.failures import (DEFAULT_LIMIT, TRANSIENT_ERRORS, Breaker, GaveUp, Permanent, Transient, refused,
                                   transient_finish, transient_status)
from rlaif.engine.structured import missing_logprobs, openai_fields, permanent_score_error
from rlaif.engine.server_pool import Server, ServerPool, describe_error, parse_base_urls, retry_after_s, server_message
from rlaif.data.records import Completion

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Most ``top_logprobs`` vLLM serves by default (``--max-logprobs 20``) and the OpenAI API allows.
MAX_TOP_LOGPROBS = 20
#: vLLM reports masked tokens (outside ``allowed_token_ids``) with this log-probability.
_MASKED = -9999.0
#: A short conversation on which option tokens are computed (see the module docstring).
_STAND_IN = ({"role": "user", "content": "Hi"},)


class OpenAIServerEngine:
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

    async def _list_models(self, server: Server, retries: int | None = None) -> list[dict[str, Any]]:
        try:
            data = await self._request("GET", "/v1/models", pin=server, retries=retries)
        except (Permanent, GaveUp) as exc:
            raise RuntimeError(f"cannot list the models of {server.url}: {exc}") from None
        models = [m for m in (data.get("data") or []) if isinstance(m, dict) and "id" in m]
        if not models:
            raise RuntimeError(f"{server.url}/v1/models lists no model")
        return models

    def _note_max_len(self, models: list[dict[str, Any]], name: str | None) -> None:
        for m in models:
            if m["id"] == name and isinstance(m.get("max_model_len"), int):
                self.server_max_model_len = m["max_model_len"]

    async def _start(self, model: str | None) -> str:
        """The model requests ask for; with several servers, each is asked for its models first."""
        assert self._pool is not None
        servers = list(self._pool.servers)
        if len(servers) == 1:
            if model is not None:
                return model
            models = await self._list_models(servers[0])
            self._note_max_len(models, models[0]["id"])
            return str(models[0]["id"])
        # One retry per server: a server that is down should not hold up the start for long.
        found = await asyncio.gather(*(self._list_models(s, retries=min(self.max_retries, 1)) for s in servers),
                                     return_exceptions=True)
        listed: dict[str, list[dict[str, Any]]] = {}
        down: dict[Server, str] = {}
        for server, got in zip(servers, found):
            if isinstance(got, RuntimeError):
                if model is None or "HTTP 404" not in str(got):  # 404: answers, but lists nothing (name used as given)
                    down[server] = str(got)
            elif isinstance(got, BaseException):
                raise got
            else:
                listed[server.url] = got
        if len(down) == len(servers) or (model is None and not listed):
            raise RuntimeError("no server answers: " + "; ".join(down.values()))
        for server, why in down.items():  # reported by the caller (``left_out``), e.g. the command line
            self._pool.leave_out(server, why)
        if model is None:
            model = str(next(iter(listed.values()))[0]["id"])
        for url, models in listed.items():
            names = [str(m["id"]) for m in models]
            if model not in names:
                raise RuntimeError(f"{url} does not serve a model named {model!r} (it serves {names}); "
                                   "every server in base_url must serve the same model")
            self._note_max_len(models, model)
        return model

    @property
    def left_out(self) -> dict[str, str]:
        """Servers that did not answer at start and get no requests, with the reason."""
        return dict(self._pool.left_out) if self._pool is not None else {}

    def served_models(self) -> list[str]:
        """The model names every server lists (``GET /v1/models``); RuntimeError when none can say."""
        assert self._pool is not None
        servers = list(self._pool.servers)

        async def all_lists():
            return await asyncio.gather(*(self._list_models(s) for s in servers), return_exceptions=True)

        lists = [got for got in self._run(all_lists()) if not isinstance(got, BaseException)]
        if not lists:
            return [str(m["id"]) for m in self._run(self._list_models(servers[0]))]  # raises the reason
        for models in lists:
            self._note_max_len(models, self.model)
        common = set.intersection(*({str(m["id"]) for m in ms} for ms in lists))
        return [str(m["id"]) for m in lists[0] if str(m["id"]) in common]

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
        return Completion(text, "length" if reason == "length" else "stop", prompt_tokens, completion_tokens)

    # ---------------------------------------------------------------- option scoring

    def score_options(self, requests: Sequence[ScoreRequest], options: Sequence[str], desc: str = "") -> list[OptionScores]:
        options = tuple(options)
        if not options:
            raise ValueError("score_options needs at least one option")
        requests = list(requests)
        if not requests:
            return []
        prefixes = sorted({r.assistant_prefix for r in requests})
        # Option token ids, once per distinct assistant prefix (a handful per batch).
        found = self._map(prefixes, lambda p: self._option_ids(p, options), "tokenize", show=False)
        ids_by_prefix = dict(zip(prefixes, found))
        return self._map(requests, lambda r: self._score_one(r, options, ids_by_prefix[r.assistant_prefix]), desc or "score")

    @staticmethod
    def _chat_body(messages: Sequence[Any], prefix: str) -> dict[str, Any]:
        msgs = [dict(m) for m in messages]
        if prefix:
            msgs.append({"role": "assistant", "content": prefix})
            return {"messages": msgs, "continue_final_message": True, "add_generation_prompt": False}
        return {"messages": msgs, "add_generation_prompt": True}

    async def _tokenize(self, prefix: str) -> list[int]:
        data = await self._request("POST", "/tokenize", {"model": self.model, **self._chat_body(_STAND_IN, prefix)})
        return [int(t) for t in data["tokens"]]

    async def _option_ids(self, prefix: str, options: tuple[str, ...]) -> list[int] | str | GaveUp | None:
        """First token id of each option after ``prefix``; an error message (GaveUp: for now); None without /tokenize."""
        key = (prefix, options)
        if key in self._option_cache:
            return self._option_cache[key]
        if self._tokenize_supported is False:
            return None
        try:
            base = await self._tokenize(prefix)
            ids = []
            for opt in options:
                full = await self._tokenize(prefix + opt)
                if full[: len(base)] != base or len(full) == len(base):
                    ids = f"option {opt!r} merges with the text before it; end the prompt so the option starts a token"
                    break
                ids.append(full[len(base)])
            if isinstance(ids, list) and len(set(ids)) != len(ids):
                ids = f"options {list(options)} share a first token"
            self._tokenize_supported = True
        except Permanent as exc:
            if exc.status in (404, 405, 501):
                log.warning("%s has no /tokenize; option scores come from top_logprobs matched by text", self.base_url)
                self._tokenize_supported = False
                return None
            ids = f"cannot tokenize the options: {exc}"
        except GaveUp as exc:
            return GaveUp(f"cannot tokenize the options: {exc}")  # not cached: the server may recover
        except (KeyError, TypeError, ValueError) as exc:
            ids = f"malformed /tokenize answer from the server: {exc!r}"
        except Exception as exc:  # noqa: BLE001 - reported per request, never raised
            log.exception("unexpected error from %s/tokenize", self.base_url)
            return f"cannot tokenize the options: {exc!r}"
        self._option_cache[key] = ids
        return ids

    async def _score_one(self, req: ScoreRequest, options: tuple[str, ...], opt_ids: list[int] | str | GaveUp | None) -> OptionScores:
        if isinstance(opt_ids, GaveUp):  # failed for now, like the request would have: counted as one
            self.breaker.failed(str(opt_ids))
            return OptionScores((), 0, error=str(opt_ids), retryable=True)
        if isinstance(opt_ids, str):
            return OptionScores((), 0, error=opt_ids)
        body: dict[str, Any] = {
            "model": self.model,
            **self._chat_body(req.messages, req.assistant_prefix),
            "max_tokens": 1,
            "temperature": 1.0,
            "top_p": 1.0,
            "seed": 0,
            "logprobs": True,
            "top_logprobs": max(self.top_logprobs, min(len(options), MAX_TOP_LOGPROBS)),
        }
        if opt_ids is not None:
            body["allowed_token_ids"] = opt_ids
            body["return_tokens_as_token_ids"] = True
        try:
            data = await self._request("POST", "/v1/chat/completions", body)
            self._note_model(data)
            prompt_tokens = int((data.get("usage") or {}).get("prompt_tokens") or 0)
            if missing := missing_logprobs(data):
                return OptionScores((), prompt_tokens, error=missing)
            first = data["choices"][0]["logprobs"]["content"][0]
            table: dict[str, float] = {}
            for entry in [first, *(first.get("top_logprobs") or [])]:
                lp = float(entry["logprob"])
                table[str(entry["token"])] = float("-inf") if lp <= _MASKED else lp
        except GaveUp as exc:
            return OptionScores((), 0, error=str(exc), retryable=True)
        except Permanent as exc:
            return OptionScores((), 0, error=permanent_score_error(exc))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            return OptionScores((), 0, error=f"the server returned no usable logprobs: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - one bad request never fails the batch
            log.exception("unexpected error from %s", self.base_url)
            return OptionScores((), 0, error=f"unexpected error: {exc!r}")
        if opt_ids is not None:
            raw = [table.get(f"token_id:{t}", float("-inf")) for t in opt_ids]
        else:
            raw = [_match_by_text(table, opt) for opt in options]
        if all(x == float("-inf") for x in raw):
            return OptionScores(
                (), prompt_tokens,
                error=f"none of the options {list(options)} is among the {len(table)} top log-probabilities the server returned",
            )
        return OptionScores(normalise_logprobs(raw), prompt_tokens)

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


def _match_by_text(table: dict[str, float], option: str) -> float:
    """Fallback without token ids: the longest top-logprob token that starts the option."""
    best, best_len = float("-inf"), 0
    for tok, lp in table.items():
        if tok and option.startswith(tok) and len(tok) > best_len:
            best, best_len = lp, len(tok)
    return best


def _progress(total: int, desc: str, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


__all__ = ["OpenAIServerEngine", "MAX_TOP_LOGPROBS"]
