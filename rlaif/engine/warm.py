"""A warm engine for short interactive commands (``rlaif try``): the model loads once per session.

:func:`connect` returns a :class:`WarmEngine`, an :class:`~rlaif.engine.base.Engine` whose
``generate`` and ``score_options`` go to a local engine server
(:mod:`rlaif.engine.warm_server`). The first call starts the server (the model loads: tens of
seconds with vLLM on a CPU); later calls find it through its state file and reuse it, so
they pay only for the requests themselves.

State: ``STATE_DIR/server.json`` (port, pid, token, the settings key), written by the server
once its engine is loaded, mode 0600; ``STATE_DIR/server.log`` is the server's output;
``STATE_DIR/lock`` serialises starting, so two commands at once start one server. The key is
a hash of the backend, the model and every engine setting (and the rlaif version): a server
with another key is stopped and replaced, one that does not answer (dead, or its port taken by
something else, or a damaged state file) is forgotten and a new one started. Nothing is ever
killed on the strength of a pid in the file alone (the pid may belong to another process by
now): a server is asked to stop over its authenticated API.

Why our own server rather than ``vllm serve`` and the openai backend: the server runs the very
engine ``rlaif generate`` runs in-process (same vLLM settings, same chat template handling,
option scores from the same prefill), so what ``rlaif try`` shows is what a run would produce
with the same seeds; it serves any backend (vLLM, transformers, the fake engine in tests);
and it needs no extra server flags (``--logprobs-mode``) or OpenAI-format scoring round trips.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import httpx

from rlaif.data.records import Completion
from rlaif.engine.base import ChatRequest, OptionScores, SamplingConfig, ScoreRequest
from rlaif.engine.warm_server import TOKEN_HEADER, read_state

DEFAULT_IDLE_TIMEOUT_S = 1800.0
STATE_FILE = "server.json"
LOG_FILE = "server.log"
MAX_LOG_BYTES = 10 * 2**20


class WarmServerError(RuntimeError):
    """The warm engine server could not be started or reached; the message says why."""


def default_state_dir() -> Path:
    from rlaif.models.model_zoo import cache_dir

    return cache_dir() / "warm-engine"


def spec_key(backend: str, model: str | None, settings: dict[str, Any]) -> str:
    """The identity of a loaded engine: backend, model, every engine setting, rlaif's version."""
    from rlaif import __version__

    blob = json.dumps({"backend": backend, "model": model, "settings": settings, "version": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class WarmEngine:
    """An engine whose model runs in the warm server. ``started`` says whether this call started it."""

    model: str
    state: dict[str, Any]
    started: bool
    timeout_s: float = 3600.0
    on_call: Callable[[str, int], None] | None = None
    """Called with (desc, batch size) before every request, e.g. to show progress."""
    _client: httpx.Client | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return int(self.state["pid"])

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        if self._client is None:
            self._client = httpx.Client(base_url=f"http://127.0.0.1:{self.state['port']}", timeout=self.timeout_s,
                                        headers={TOKEN_HEADER: self.state["token"]}, trust_env=False)
        try:
            resp = self._client.post(path, content=json.dumps(body))
        except httpx.HTTPError as exc:
            raise WarmServerError(f"the warm engine server (pid {self.pid}) did not answer: {exc}; "
                                  "run the command again to start a new one") from None
        if resp.status_code != 200:
            raise WarmServerError(f"the warm engine server answered {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    def generate(self, requests: Sequence[ChatRequest], sampling: SamplingConfig, desc: str = "") -> list[Completion]:
        if not requests:
            return []
        if self.on_call:
            self.on_call(desc, len(requests))
        body = {"requests": [{"messages": list(r.messages), "seed": r.seed, "assistant_prefix": r.assistant_prefix,
                              "stop": list(r.stop)} for r in requests],
                "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens},
                "desc": desc}
        return [Completion(d["text"], d["finish_reason"], d["prompt_tokens"], d["completion_tokens"], d.get("error"),
                           bool(d.get("retryable"))) for d in self._post("/generate", body)]

    def score_options(self, requests: Sequence[ScoreRequest], options: Sequence[str], desc: str = "") -> list[OptionScores]:
        if not requests:
            return []
        if self.on_call:
            self.on_call(desc or "score", len(requests))
        body = {"requests": [{"messages": list(r.messages), "assistant_prefix": r.assistant_prefix} for r in requests],
                "options": list(options), "desc": desc}
        return [OptionScores(tuple(d["logprobs"]), d["prompt_tokens"], d.get("error"), bool(d.get("retryable")))
                for d in self._post("/score_options", body)]

    def info(self) -> dict[str, Any]:
        return {"warm_server_pid": self.pid, "warm_server_backend": self.state.get("backend")}

    def close(self) -> None:
        """Close the connection; the server keeps running for the next command."""
        if self._client is not None:
            self._client.close()
            self._client = None


def health(state: dict[str, Any], timeout_s: float = 5.0, claim: bool = False) -> dict[str, Any] | None:
    """The server's ``/health`` answer, or None when nothing (or something else) answers there.
    ``claim``: the caller is about to use the server (its idle clock restarts)."""
    try:
        resp = httpx.get(f"http://127.0.0.1:{state['port']}/health{'?claim=1' if claim else ''}", headers={TOKEN_HEADER: state["token"]},
                         timeout=timeout_s, trust_env=False)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    try:
        data = resp.json()
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("pid") != state["pid"] or data.get("key") != state["key"]:
        return None
    return data


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _forget(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


_LAUNCHED: dict[int, subprocess.Popen] = {}
"""Servers this process started, by pid: their exit is read from the process (a server that
exited is a zombie child until then, and would look alive to ``kill(pid, 0)``)."""


def _pid_alive(pid: int) -> bool:
    if pid in _LAUNCHED:
        return _LAUNCHED[pid].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ask_to_stop(state: dict[str, Any], wait_s: float = 60.0) -> bool:
    """Ask a live server to stop and wait for its process to end; True when it has."""
    try:
        httpx.post(f"http://127.0.0.1:{state['port']}/shutdown", headers={TOKEN_HEADER: state["token"]},
                   timeout=10.0, trust_env=False)
    except httpx.HTTPError:
        pass
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not _pid_alive(state["pid"]):
            return True
        time.sleep(0.1)
    return False


def stop(state_dir: Path | None = None) -> str:
    """Stop the warm server of ``state_dir``; returns what happened, in words."""
    state_dir = Path(state_dir or default_state_dir())
    with _locked(state_dir):
        path = state_dir / STATE_FILE
        state = read_state(path)
        if state is None:
            _forget(path)
            return "no warm engine server is running"
        if health(state) is None:
            _forget(path)
            return f"the warm engine server (pid {state['pid']}) was not running; its state file is removed"
        stopped = _ask_to_stop(state)
        _forget(path)
        return f"stopped the warm engine server (pid {state['pid']})" if stopped else \
            f"asked the warm engine server (pid {state['pid']}) to stop; it is still shutting down"


def _log_tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def connect(backend: str, model: str, settings: dict[str, Any] | None = None, *, state_dir: Path | None = None,
            idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S, start_timeout_s: float = 1200.0,
            log: Callable[[str], None] = lambda m: None) -> WarmEngine:
    """A warm engine for (backend, model, settings): the running server when it serves exactly
    that, else a new one (the model loads; this call waits for it)."""
    settings = dict(settings or {})
    state_dir = Path(state_dir or default_state_dir())
    key = spec_key(backend, model, settings)
    path = state_dir / STATE_FILE
    with _locked(state_dir):
        state = read_state(path)
        if state is not None:
            alive = health(state, claim=True)
            if alive is not None and alive["key"] == key:
                return WarmEngine(model, state, started=False)
            if alive is not None:
                log(f"the warm engine server (pid {state['pid']}) holds another model or other settings "
                    f"({alive.get('backend')} {alive.get('model')}); replacing it")
                _ask_to_stop(state)
            else:
                log(f"the warm engine server in the state file (pid {state['pid']}) does not answer; starting a new one")
        elif path.exists():
            log("the warm engine state file is damaged; starting a new server")
        _forget(path)
        return _launch(backend, model, settings, key, state_dir, idle_timeout_s, start_timeout_s, log)


def _launch(backend: str, model: str, settings: dict[str, Any], key: str, state_dir: Path, idle_timeout_s: float,
            start_timeout_s: float, log: Callable[[str], None]) -> WarmEngine:
    path, log_path = state_dir / STATE_FILE, state_dir / LOG_FILE
    launch_id = uuid.uuid4().hex
    spec = {"backend": backend, "model": model, "settings": settings, "key": key}
    cmd = [sys.executable, "-m", "rlaif.engine.warm_server", "--state", str(path), "--launch-id", launch_id,
           "--spec", json.dumps(spec), "--idle-timeout", str(idle_timeout_s)]
    log(f"starting the warm engine server ({backend} {model}); the model loads once, later calls reuse it")
    if log_path.exists() and log_path.stat().st_size > MAX_LOG_BYTES:
        os.replace(log_path, log_path.with_name(LOG_FILE + ".1"))  # keep one older log, not an ever-growing one
    with open(log_path, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {backend} {model}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    _LAUNCHED[proc.pid] = proc
    deadline = time.monotonic() + start_timeout_s
    while True:
        state = read_state(path)
        if state is not None and state.get("launch_id") == launch_id and health(state) is not None:
            return WarmEngine(model, state, started=True)
        code = proc.poll()
        if code is not None:
            raise WarmServerError(f"the warm engine server exited with status {code} while starting; "
                                  f"the end of {log_path}:\n{_log_tail(log_path)}")
        if time.monotonic() > deadline:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise WarmServerError(f"the warm engine server did not start within {start_timeout_s:.0f} s; "
                                  f"the end of {log_path}:\n{_log_tail(log_path)}")
        time.sleep(0.1)
