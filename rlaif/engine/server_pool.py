"""Several OpenAI-compatible servers behind one engine: which server gets the next request.

``--backend openai --base-url URL1,URL2,...`` (or the flag repeated) names a fleet of servers
that serve the same model (``vllm serve`` on several hosts or GPUs). :class:`ServerPool` keeps
one HTTP client per server and answers, for every attempt of every request, which server to use:

* **spread**: the healthy server with the fewest requests in flight (ties go round-robin), so
  a faster server takes more of the work and concurrent requests split evenly;
* **failover**: a server that fails an attempt with a connection error, a timeout, 429 or 5xx
  *cools down* (the request's own back-off, or the server's Retry-After) and gets no new work
  while another server is healthy; the failed request is tried again on another server at once
  instead of waiting. A cooled-down server gets **one** probe request after its cooldown; it is
  healthy again when that succeeds, and cools down longer (the back-off doubles) when it fails;
* with every server cooling down (or just one server), a request waits its back-off as before;
* a server that had answered and now refuses connections is gone: it leaves the run (:meth:`ServerPool.lost`),
  and when it was the last one the engine's breaker trips (:mod:`rlaif.engine.failures`).

The failover attempts count against the request's ``max_retries``. A server that does not
answer when the engine starts is reported and left out of the run (its model list is unknown);
see :class:`rlaif.engine.openai_server.OpenAIServerEngine`.

Also here: the HTTP helpers both modules use (error messages, Retry-After, error descriptions).
"""

from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import httpx


def parse_base_urls(spec: str | Sequence[str]) -> list[str]:
    """Server roots from ``--base-url``: one URL, URLs separated by commas, or a list of them.

    A trailing ``/`` or ``/v1`` is dropped (vLLM's ``/tokenize`` lives outside ``/v1``). Empty
    items are skipped; a URL that is not http(s) or that is named twice is refused.
    """
    items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in str(s).split(",")]
    roots: list[str] = []
    for item in items:
        root = item.strip().rstrip("/")
        if not root:
            continue
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        if not root.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {item.strip()!r}")
        if root in roots:
            raise ValueError(f"base_url names {root} twice")
        roots.append(root)
    if not roots:
        raise ValueError(f"base_url names no server: {spec!r}")
    return roots


@dataclass(eq=False)
class Server:
    """One server of the pool and what happened to it."""

    url: str
    client: httpx.AsyncClient
    in_flight: int = 0
    answered: int = 0
    """Attempts that got an answer (any HTTP status the request does not retry)."""
    failed: int = 0
    """Attempts that failed with a connection error, a timeout, 429 or 5xx."""
    consecutive: int = 0
    """Failed attempts since the last answer; > 0 means the server is on probation."""
    cool_until: float = 0.0
    last_error: str = ""
    order: int = field(default=0)


class ServerPool:
    """Chooses a server per attempt; all methods run on the engine's event-loop thread."""

    def __init__(self, servers: Sequence[Server], clock=time.monotonic):
        if not servers:
            raise ValueError("a server pool needs at least one server")
        self.servers = list(servers)
        self.every = tuple(servers)
        """Every server, those left out included (their clients are closed too)."""
        for i, s in enumerate(self.servers):
            s.order = i
        self.left_out: dict[str, str] = {}
        """Servers taken out of the run (not answering at start), with the reason."""
        self._clock = clock
        self._turn = 0

    def __len__(self) -> int:
        return len(self.servers)

    def healthy(self, server: Server, now: float | None = None) -> bool:
        """Takes new work: not cooling down, and not on probation with a probe already out."""
        now = self._clock() if now is None else now
        return server.cool_until <= now and (server.consecutive == 0 or server.in_flight == 0)

    def pick(self, avoid: Server | None = None) -> Server:
        """The server for the next attempt.

        Healthy servers other than ``avoid`` (the one the request just failed on) come first,
        the fewest in flight winning, ties taken in turn. Without one, the server whose cooldown
        ends first (``avoid`` only when it is the only server): the caller has then already
        waited its own back-off, as with a single server.
        """
        now = self._clock()
        good = [s for s in self.servers if s is not avoid and self.healthy(s, now)]
        if good:
            low = min(s.in_flight for s in good)
            tied = [s for s in good if s.in_flight == low]
            choice = tied[self._turn % len(tied)]
            self._turn += 1
            return choice
        others = [s for s in self.servers if s is not avoid] or self.servers
        return min(others, key=lambda s: (s.cool_until, s.in_flight, s.order))

    def alternative(self, failed: Server) -> bool:
        """Whether a healthy server other than ``failed`` can take a retry right now."""
        now = self._clock()
        return any(s is not failed and self.healthy(s, now) for s in self.servers)

    def success(self, server: Server) -> None:
        server.answered += 1
        server.consecutive = 0
        server.cool_until = 0.0

    def failure(self, server: Server, cooldown_s: float, reason: str) -> None:
        server.failed += 1
        server.consecutive += 1
        server.last_error = reason
        server.cool_until = max(server.cool_until, self._clock() + cooldown_s)

    def leave_out(self, server: Server, reason: str) -> None:
        """Take a server out of the run (the pool keeps at least one)."""
        if len(self.servers) > 1 and server in self.servers:
            self.servers.remove(server)
            self.left_out[server.url] = reason

    def lost(self, server: Server, reason: str) -> bool:
        """A server that had answered now refuses connections: its process is gone. It leaves the run
        (the others take its requests); True when it was the last one, i.e. the engine's server is gone."""
        if server not in self.servers:
            return False  # already left out by another request
        if len(self.servers) > 1:
            self.leave_out(server, f"{server.url} stopped answering ({reason})")
            return False
        return True

    def stats(self) -> dict[str, Any]:
        """Per-server counts for the run's manifest."""
        out: dict[str, Any] = {s.url: {"answered": s.answered, "failed_attempts": s.failed} for s in self.servers}
        for url, reason in self.left_out.items():
            out[url] = {"left_out": reason}
        return out


# -------------------------------------------------------------------- HTTP helpers


def server_message(resp: httpx.Response) -> str:
    """The error message of an error answer: OpenAI's {"error": {"message": ...}} or the text."""
    try:
        data = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("error", "message", "detail"):
            if isinstance(data.get(key), str) and data[key]:
                return data[key]
    text = resp.text.strip()
    return text[:500] if text else (resp.reason_phrase or "no message")


def retry_after_s(resp: httpx.Response) -> float | None:
    """Seconds asked for by a Retry-After header (a number or an HTTP date), if any."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def describe_error(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out after {timeout_s:g}s ({type(exc).__name__})"
    if isinstance(exc, httpx.TransportError):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return str(exc)


__all__ = ["Server", "ServerPool", "parse_base_urls", "server_message", "retry_after_s", "describe_error"]
