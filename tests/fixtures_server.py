"""Test helpers for the OpenAI-server engine: a scripted loopback HTTP server and a real vLLM server.

``ScriptedServer`` is a stdlib ``http.server`` on 127.0.0.1 (random port) in a thread. Its
``script(method, path, body, attempt)`` returns a :class:`Reply`; every call is recorded in
``hits`` so tests can count attempts. ``vllm_server`` is a session fixture that starts
the README's CPU server command (:func:`rlaif.engine.server_recipe.vllm_server_argv`) on the
default model (float32, like ``conftest.vllm_engine``) and yields its URL.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from rlaif.engine.server_recipe import vllm_server_argv

SERVER_START_TIMEOUT_S = 240


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    """A JSON-able value (sent as JSON) or bytes (sent as is)."""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    """Sleep this long before answering (woken early when the server stops)."""
    drop: bool = False
    """Close the connection without answering (a server that died mid-request)."""


Script = Callable[[str, str, Any, int], Reply]


def chat_completion(text: str = "hello", finish_reason: str = "stop", prompt_tokens: int = 7, completion_tokens: int = 2, logprobs: Any = None) -> dict[str, Any]:
    """A valid OpenAI chat completion body."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }


def models_list(*names: str) -> dict[str, Any]:
    """A ``GET /v1/models`` answer listing ``names``, each with a 4096-token context."""
    return {"object": "list", "data": [{"id": m, "object": "model", "max_model_len": 4096} for m in names]}


def tokenize_answer(body: dict[str, Any]) -> dict[str, Any]:
    """A ``POST /tokenize`` answer: three template tokens, then one token per character of a continued final message."""
    text = body["messages"][-1]["content"] if body.get("continue_final_message") else ""
    return {"count": len(text) + 3, "max_model_len": 4096, "tokens": [1, 2, 3] + [ord(ch) for ch in text]}


def error_body(message: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": "BadRequestError", "param": None, "code": code}}


class ScriptedServer:
    """A loopback HTTP server answering by script; records (method, path, body) of every call."""

    def __init__(self, script: Script, port: int = 0):
        """``port``: 0 picks a free one; a port a stopped server used starts it again there (a restarted server)."""
        self.script = script
        self.dead = False
        self.hits: list[tuple[str, str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self, method: str) -> None:
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = raw
                with outer._lock:
                    outer.hits.append((method, self.path, body))
                    attempt = sum(1 for m, p, _ in outer.hits if (m, p) == (method, self.path))
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    reply = outer.script(method, self.path, body, attempt) if not outer.dead else Reply(drop=True)
                    if reply.delay_s:
                        outer._stop.wait(reply.delay_s)
                    if reply.drop or outer.dead:
                        self.close_connection = True
                        return
                    data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with outer._lock:
                        outer.in_flight -= 1

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def die(self) -> None:
        """The server process is gone: requests in flight are dropped unanswered, new connections refused."""
        with self._lock:
            if self.dead:
                return
            self.dead = True
        self._stop.set()

        def close() -> None:
            self.httpd.shutdown()
            self.httpd.server_close()

        threading.Thread(target=close, daemon=True).start()

    def count(self, path: str) -> int:
        with self._lock:
            return Counter(p for _, p, _ in self.hits)[path]

    def __enter__(self) -> "ScriptedServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL (Linux), so a
    killed test run leaves no server holding gigabytes behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port_url() -> str:
    """A loopback URL nobody listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def vllm_server(default_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real vLLM OpenAI-compatible server on loopback with the default model; yields its URL."""
    import httpx

    port = free_port()
    log_path: Path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    # the README's CPU command (rlaif.engine.server_recipe, checked against the README by
    # tests/test_server_recipe.py), on the prepared default model and a free port. Its float32 is
    # the shared in-process engine's too (conftest.vllm_engine): vLLM's CPU kernels are then
    # batch-invariant, so concurrent requests and the two engines agree token for token.
    cmd = vllm_server_argv(default_model, "cpu", port=port, python=sys.executable)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=die_with_parent)
    url = f"http://127.0.0.1:{port}"

    def stop() -> None:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def tail() -> str:
        return log_path.read_text(errors="replace")[-3000:]

    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    t0 = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode} during start-up:\n{tail()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not healthy after {SERVER_START_TIMEOUT_S}s:\n{tail()}")
            time.sleep(1)
        print(f"\nvLLM server ready on {url} in {time.monotonic() - t0:.1f}s")
    except BaseException:
        stop()
        raise
    try:
        yield url
    finally:
        stop()


# -------------------------------------------------------------------- a position-blind oracle server

ORACLE_MARKER = "zebra"


def _between(text: str, start: str, end: str | None) -> str:
    """The text after ``start`` and before ``end`` (or to the end); '' when ``start`` is absent."""
    if start not in text:
        return ""
    rest = text.split(start, 1)[1]
    return rest.split(end, 1)[0] if end and end in rest else rest


class OracleServer(ScriptedServer):
    """A loopback OpenAI-compatible server that judges by content, never by position.

    It speaks what :class:`rlaif.engine.openai_server.OpenAIServerEngine` uses of vLLM's server:
    ``GET /v1/models`` (the names in ``models``), ``POST /tokenize`` (one token per character,
    "A" = 65, "B" = 66) and ``POST /v1/chat/completions``:

    * a scoring request (``allowed_token_ids``): the user turn's "Response A: ..." and
      "Response B: ..." texts are read, and the option whose response contains
      :data:`ORACLE_MARKER` gets probability ``confidence`` (0.5 each when both or neither do);
    * a generation request: a conversation with no assistant turn gets ``"ANSWER to <prompt>"``,
      plus the marker when the prompt holds "odd", then ``"#<seed>"``; a request whose previous assistant turn is a
      critique gets ``"REVISION ..."`` with the marker exactly when the answer it revises had
      none; any other request (a critique) gets ``"CRITIQUE ..."``. So in ``rlaif generate
      --label`` the oracle prefers the initial answer for "odd" prompts and the revision for
      the others.

    Every answer reports ``reports.get(name, name)`` as its ``model``, where ``name`` is the
    model the request asked for; a request for a name not in ``models`` gets 404, as vLLM does.
    """

    def __init__(self, models: tuple[str, ...] = ("oracle",), confidence: float = 0.9, reports: dict[str, str] | None = None,
                 port: int = 0, marker: str = ORACLE_MARKER):
        self.models = tuple(models)
        self.confidence = confidence
        self.reports = dict(reports or {})
        self.marker = marker
        """The word the judge prefers (generation always uses :data:`ORACLE_MARKER`)."""
        super().__init__(self._answer, port)

    # which requests came in, by kind and model name
    def requests(self, kind: str) -> list[dict[str, Any]]:
        """Bodies of the chat requests of one kind: 'score' or 'generate'."""
        with self._lock:
            bodies = [b for m, p, b in self.hits if p == "/v1/chat/completions" and isinstance(b, dict)]
        return [b for b in bodies if ("allowed_token_ids" in b) == (kind == "score")]

    def _answer(self, method: str, path: str, body: Any, attempt: int) -> Reply:
        if method == "GET" and path == "/v1/models":
            return Reply(200, models_list(*self.models))
        if path == "/tokenize":
            return Reply(200, tokenize_answer(body))
        if path != "/v1/chat/completions":
            return Reply(404, {"detail": "Not Found"})
        name = body.get("model")
        if name not in self.models:
            return Reply(404, error_body(f"The model `{name}` does not exist.", 404))
        reported = self.reports.get(name, name)
        if "allowed_token_ids" in body:
            return Reply(200, dict(self._score(body), model=reported))
        return Reply(200, dict(chat_completion(self._generate(body["messages"], body.get("seed"))), model=reported))

    def _score(self, body: dict[str, Any]) -> dict[str, Any]:
        user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        a = self.marker in _between(user, "Response A:", "Response B:")
        b = self.marker in _between(user, "Response B:", None)
        p_a = 0.5 if a == b else (self.confidence if a else 1 - self.confidence)
        ids = body["allowed_token_ids"]
        top = [{"token": f"token_id:{ids[0]}", "logprob": math.log(p_a), "bytes": []},
               {"token": f"token_id:{ids[1]}", "logprob": math.log(1 - p_a), "bytes": []}]
        return chat_completion("A", "length", 50, 1, logprobs={"content": [dict(top[0], top_logprobs=top)]})

    @staticmethod
    def _generate(messages: list[dict[str, Any]], seed: int | None) -> str:
        assistant = [m["content"] for m in messages if m["role"] == "assistant"]
        if not assistant:
            prompt = messages[-1]["content"]
            return f"ANSWER to {prompt}" + (f" {ORACLE_MARKER}" if "odd" in prompt else "") + f" #{seed}"
        if assistant[-1].startswith("CRITIQUE"):
            answer = next((t for t in reversed(assistant) if t.startswith(("ANSWER", "REVISION"))), "")
            return "REVISION of the answer" + ("" if ORACLE_MARKER in answer else f" {ORACLE_MARKER}")
        return "CRITIQUE: it could be better"


class FaultyOracle(OracleServer):
    """An :class:`OracleServer` that breaks the way a vLLM server does, after answering ``after`` chat
    requests (``/v1/chat/completions``) well; what it answers before is the oracle's, so a rerun
    against a healthy oracle on the same ``port`` must give what a run that never failed gives.

    * ``"500"``: every later request gets HTTP 500, and it still lists its models (a vLLM server
      whose engine died);
    * ``"die"``: the process is gone: requests in flight are dropped, new connections refused;
    * ``"slow"``: later requests hang (past any short client timeout), and ``slow_s`` seconds after
      the first of them the server dies.

    ``fail`` (a function of the request body) picks the requests that break instead, ``"500"`` only:
    a server that fails some requests and answers the others.
    """

    def __init__(self, mode: str, after: int = 0, slow_s: float = 3.0, fail: Callable[[Any], bool] | None = None, **kw: Any):
        assert mode in ("500", "die", "slow")
        self.mode, self.after, self.slow_s, self.fail = mode, after, slow_s, fail
        self.answered = 0
        self.broke_at: int | None = None
        """How many requests had come in (``len(hits)``) when it broke."""
        self._timer: threading.Timer | None = None
        super().__init__(**kw)

    def break_now(self) -> None:
        """Break from the next request on (instead of after ``after`` chat requests)."""
        with self._lock:
            self.after = min(self.after, self.answered)

    def _answer(self, method: str, path: str, body: Any, attempt: int) -> Reply:
        if method == "GET" and path == "/v1/models" and self.mode == "500":
            return super()._answer(method, path, body, attempt)
        with self._lock:
            if self.fail is not None:
                broken = isinstance(body, dict) and self.fail(body)
            else:
                if path == "/v1/chat/completions" and self.answered < self.after:
                    self.answered += 1
                    return super()._answer(method, path, body, attempt)
                broken = self.answered >= self.after
            if broken and self.broke_at is None:
                self.broke_at = len(self.hits)
        if not broken:
            return super()._answer(method, path, body, attempt)
        if self.mode == "500":
            return Reply(500, error_body("EngineCore encountered an issue. See stack trace (above) for the root cause.", 500))
        if self.mode == "die":
            self.die()
            return Reply(drop=True)
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(self.slow_s, self.die)
                self._timer.daemon = True
                self._timer.start()
        return Reply(delay_s=60)

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().__exit__(*exc)


def write_pairs(folder: Path, n: int = 6, categories: bool = False) -> Path:
    """Pairs whose better response (the reference label) holds ORACLE_MARKER: in a for even i, in b
    for odd i; ``categories``: each row gets category "even" or "odd"."""
    path = folder / "pairs.jsonl"
    rows = []
    for i in range(n):
        good, bad = f"A fine answer with a {ORACLE_MARKER} in it ({i}).", f"A plain answer ({i})."
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        rows.append({"id": f"x{i}", **({"category": "even" if i % 2 == 0 else "odd"} if categories else {}),
                     "prompt": f"Question {i}?", "response_a": a, "response_b": b, "label": "a" if i % 2 == 0 else "b"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
