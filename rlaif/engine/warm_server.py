"""The warm engine server: one loaded engine behind a tiny local HTTP API (``rlaif try``).

Run as ``python -m rlaif.engine.warm_server --state FILE --launch-id ID --spec JSON``; started
by :func:`rlaif.engine.warm.connect`, never by hand. It

1. builds the engine the spec names (:func:`rlaif.engine.create_engine`: vLLM, transformers or
   the fake engine) -- the slow part, done once;
2. binds ``127.0.0.1`` on a free port and writes the state file (port, pid, a random token,
   the spec's key) atomically, readable by its owner only;
3. answers ``GET /health`` (``?claim=1``: a client is about to use it, which restarts the idle
   clock) and ``POST /generate``, ``/score_options``, ``/shutdown``; every
   request must carry the token (``X-Rlaif-Token``), so another local user or a web page
   posting to localhost cannot use it, and name ``127.0.0.1`` or ``localhost`` as its Host
   (421 otherwise: a page whose name was rebound to this machine never gets further). Engine calls run one at a time (a lock); ``/health``
   answers while one runs;
4. exits after ``--idle-timeout`` seconds without a request, on ``/shutdown`` or SIGTERM, and
   then removes the state file if it is still its own.

The wire format is plain JSON of the engine protocol's records (:mod:`rlaif.engine.base`).
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import secrets
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rlaif.engine.base import ChatRequest, SamplingConfig, ScoreRequest

TOKEN_HEADER = "X-Rlaif-Token"
LOCAL_NAMES = {"127.0.0.1", "localhost"}


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write the state file atomically (temp file, fsync, rename), mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any] | None:
    """The state file's contents; None when it is missing or unreadable (a half-written or damaged file)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    needed = {"pid": int, "port": int, "token": str, "key": str}
    if not isinstance(data, dict) or any(not isinstance(data.get(k), t) for k, t in needed.items()):
        return None
    return data


class _Handler(BaseHTTPRequestHandler):
    server: "WarmServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # requests are not logged one by one
        pass

    def _reply(self, status: int, body: dict[str, Any] | list[Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
        if host not in LOCAL_NAMES:
            self._reply(421, {"error": "this server answers only to 127.0.0.1 and localhost"})
            return False
        given = self.headers.get(TOKEN_HEADER, "")
        if hmac.compare_digest(given.encode(), self.server.token.encode()):
            return True
        self._reply(403, {"error": "wrong or missing token"})
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._authorised():
            return
        if self.path not in ("/health", "/health?claim=1"):
            self._reply(404, {"error": f"no route {self.path}"})
            return
        if self.path.endswith("claim=1"):
            self.server.touch()  # a client that found the server is about to use it: no idle exit under it
        self._reply(200, self.server.health())

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorised():
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._reply(400, {"error": "the body is not JSON"})
            return
        self.server.touch()
        try:
            if self.path == "/generate":
                self._reply(200, self.server.generate(body))
            elif self.path == "/score_options":
                self._reply(200, self.server.score_options(body))
            elif self.path == "/shutdown":
                self._reply(200, {"stopping": True, "pid": os.getpid()})
                self.server.stop()
            else:
                self._reply(404, {"error": f"no route {self.path}"})
        except (KeyError, TypeError, ValueError) as exc:
            self._reply(400, {"error": f"bad request: {exc}"})
        finally:
            self.server.touch()


class WarmServer(ThreadingHTTPServer):
    """The HTTP server around one engine."""

    daemon_threads = True

    def __init__(self, engine: Any, key: str, spec: dict[str, Any], idle_timeout_s: float):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.engine = engine
        self.key = key
        self.spec = spec
        self.token = secrets.token_hex(16)
        self.idle_timeout_s = idle_timeout_s
        self.started_at = time.time()
        self.last_used = time.monotonic()
        self.busy = 0
        self.counts = {"generate": 0, "score_options": 0, "requests": 0}
        self._engine_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._stopping = threading.Event()

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def health(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "key": self.key, "model": self.spec.get("model"), "backend": self.spec.get("backend"),
            "started_at": self.started_at, "idle_timeout_s": self.idle_timeout_s, "counts": dict(self.counts),
        }

    def _count(self, what: str, n: int) -> None:
        with self._count_lock:
            self.counts[what] += 1
            self.counts["requests"] += n

    def generate(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        reqs = [ChatRequest(tuple({"role": m["role"], "content": m["content"]} for m in r["messages"]), r.get("seed"),
                            assistant_prefix=str(r.get("assistant_prefix") or ""), stop=tuple(r.get("stop") or ()))
                for r in body["requests"]]
        sampling = SamplingConfig(**body["sampling"])
        with self._engine_lock:
            self.busy += 1
            try:
                outs = self.engine.generate(reqs, sampling, desc=str(body.get("desc", "")))
            finally:
                self.busy -= 1
        self._count("generate", len(reqs))
        return [{"text": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                 "completion_tokens": c.completion_tokens, "error": c.error, "retryable": c.retryable} for c in outs]

    def score_options(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        reqs = [ScoreRequest(tuple({"role": m["role"], "content": m["content"]} for m in r["messages"]),
                             r.get("assistant_prefix", "")) for r in body["requests"]]
        with self._engine_lock:
            self.busy += 1
            try:
                outs = self.engine.score_options(reqs, list(body["options"]), desc=str(body.get("desc", "")))
            finally:
                self.busy -= 1
        self._count("score_options", len(reqs))
        return [{"logprobs": list(s.logprobs), "prompt_tokens": s.prompt_tokens, "error": s.error,
                 "retryable": s.retryable} for s in outs]

    def stop(self) -> None:
        """Stop serving (from any thread but the serving one: ``shutdown`` waits for the loop)."""
        if not self._stopping.is_set():
            self._stopping.set()
            threading.Thread(target=self.shutdown, daemon=True).start()

    def watch_idle(self) -> None:
        """Stop after ``idle_timeout_s`` without a request (never while an engine call runs)."""
        while not self._stopping.wait(min(5.0, max(0.05, self.idle_timeout_s / 4))):
            if self.busy == 0 and time.monotonic() - self.last_used > self.idle_timeout_s:
                print(f"idle for {self.idle_timeout_s:.0f} s: stopping", flush=True)
                self.stop()
                return


def _build_engine(spec: dict[str, Any]):
    from rlaif.engine import create_engine

    settings = {k: v for k, v in (spec.get("settings") or {}).items() if v is not None}
    if spec["backend"] == "fake":
        return create_engine(spec.get("model"), "fake")
    return create_engine(spec["model"], spec["backend"], show_progress=False, **settings)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlaif.engine.warm_server", description=__doc__.splitlines()[0])
    ap.add_argument("--state", required=True, help="state file to write once the engine is loaded")
    ap.add_argument("--launch-id", required=True, help="written into the state file, so the launcher knows it is this server")
    ap.add_argument("--spec", required=True, help="JSON: backend, model, settings, key")
    ap.add_argument("--idle-timeout", type=float, default=1800.0, help="seconds without a request before it exits")
    args = ap.parse_args(argv)
    spec = json.loads(args.spec)
    state_path = Path(args.state)
    started = time.monotonic()
    engine = _build_engine(spec)
    print(f"engine ready in {time.monotonic() - started:.1f} s: {spec['backend']} {spec.get('model')}", flush=True)
    server = WarmServer(engine, spec["key"], spec, args.idle_timeout)
    state = {"pid": os.getpid(), "port": server.server_address[1], "token": server.token, "key": spec["key"],
             "model": spec.get("model"), "backend": spec["backend"], "launch_id": args.launch_id,
             "started_at": server.started_at, "load_s": round(time.monotonic() - started, 3)}
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    write_state(state_path, state)
    print(f"serving on 127.0.0.1:{state['port']} (pid {state['pid']})", flush=True)
    threading.Thread(target=server.watch_idle, daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        current = read_state(state_path)
        if current is not None and current.get("pid") == os.getpid() and current.get("launch_id") == args.launch_id:
            try:
                state_path.unlink()
            except FileNotFoundError:
                pass
        try:
            engine.close()
        except Exception as exc:  # noqa: BLE001 - exiting anyway; say what happened
            print(f"engine close failed: {exc}", file=sys.stderr, flush=True)
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
