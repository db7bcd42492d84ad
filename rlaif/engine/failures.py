"""When a request fails: for now or for good, and when the server behind an engine is gone.

One place decides, for every backend, what a failure means:

* **transient** (for now): a connection error, a timeout, HTTP 429 or 5xx, a request the server
  aborted. The engine retries it (:class:`rlaif.engine.openai_server.OpenAIServerEngine`); when
  the retries run out the result carries ``retryable=True`` and the run folder records the row as
  failed for now, so the next run of the same command does it again (:mod:`rlaif.data.runs`);
* **permanent** (for good): any other 4xx (a prompt longer than the context: 400), a malformed
  answer. Recorded with ``retryable=False``: running again would fail the same way;
* **server gone**: the server stopped answering, so every request still queued would fail too.
  :class:`Breaker` decides it: a server that had answered refuses connections (its process is
  gone), or ``limit`` requests in a row failed after their retries (default 20; ``0`` never). The
  engine then sends nothing more and raises :class:`ServerGone`; the command stops early, keeps
  what it committed and exits with :data:`FAILED_EXIT`. The in-process vLLM engine dies too (its
  engine-core process): :class:`Watched` turns vLLM's ``EngineDeadError`` into :class:`ServerGone`.

:data:`FAILED_EXIT` is also the exit status of a run that finished with rows missing (their
requests failed) unless ``--allow-failures`` accepts them.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import httpx

FAILED_EXIT = 4
"""Exit status of a command whose requests failed: it stopped early because a server stopped answering,
or it finished with rows missing (unless ``--allow-failures``). Rerunning the same command continues.
(2: bad input; 3: ``--strict`` and an uninformative judge; 130: interrupted.)"""

DEFAULT_LIMIT = 20
"""Requests in a row that failed after their retries before a server counts as gone."""


class ServerGone(RuntimeError):
    """The server (or in-process engine) stopped answering; the message says which and why, in one line."""


class Transient(Exception):
    """An HTTP answer worth trying again: 429 or 5xx."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.retry_after = retry_after


class Permanent(Exception):
    """An answer not worth trying again: another 4xx, or a malformed body."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class GaveUp(Exception):
    """A transient failure whose retries ran out; the message says after how many attempts and why."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (Transient, httpx.TransportError)
"""What the engine retries: a 429 or 5xx answer, a connection error or a timeout."""


def refused(exc: BaseException) -> bool:
    """A connection refused (or not made): from a server that had answered, its process is gone."""
    return isinstance(exc, httpx.ConnectError)


def transient_status(status: int) -> bool:
    """HTTP statuses worth retrying: 429 (too many requests) and every 5xx."""
    return status == 429 or status >= 500


def transient_finish(reason: Any) -> bool:
    """A server that ended a request with ``abort`` or ``error`` (vLLM: preempted, engine trouble) may answer it later."""
    return reason in ("abort", "error")


def engine_died(exc: BaseException) -> bool:
    """vLLM's ``EngineDeadError`` (its engine-core process is gone), told by class name so that no vLLM import is needed."""
    return any(cls.__name__ == "EngineDeadError" for cls in type(exc).__mro__)


class Breaker:
    """The "server gone" circuit breaker of one engine; used from one thread (the engine's event loop).

    ``failed`` counts a request that failed after its retries, ``ok`` any answer; ``limit`` failures
    in a row (``0``: never) or one ``trip`` (a server that had answered refuses connections) open
    it for good: ``tripped`` then says why, and :meth:`check` raises :class:`ServerGone`.
    """

    def __init__(self, limit: int = DEFAULT_LIMIT, what: str = "the server"):
        if limit < 0:
            raise ValueError(f"max_consecutive_failures must be >= 0, got {limit}")
        self.limit, self.what = limit, what
        self.in_a_row = 0
        self.tripped: str | None = None
        self._event: asyncio.Event | None = None

    def ok(self) -> None:
        self.in_a_row = 0

    def failed(self, why: str) -> None:
        self.in_a_row += 1
        if self.limit and self.in_a_row >= self.limit:
            self.trip(f"{self.what} stopped answering: {self.in_a_row} requests in a row failed after their retries "
                      f"(the last: {why})")

    def trip(self, why: str) -> None:
        if self.tripped is None:
            self.tripped = why
            if self._event is not None:
                self._event.set()

    def check(self) -> None:
        if self.tripped is not None:
            raise ServerGone(self.tripped)

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep`` that ends as soon as the breaker trips (a back-off need not outlive the server)."""
        if self.tripped is not None:
            return
        if self._event is None:
            self._event = asyncio.Event()
        try:
            await asyncio.wait_for(self._event.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass


class Watched:
    """An in-process engine object (``vllm.LLM``) whose death becomes :class:`ServerGone`.

    Attributes pass through; a method call that raises vLLM's ``EngineDeadError`` raises
    ``ServerGone("<what> died ...")`` instead, so the command stops with one line and
    :data:`FAILED_EXIT` rather than a traceback.
    """

    def __init__(self, target: Any, what: str):
        self._target, self._what = target, what

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                if engine_died(exc):
                    raise ServerGone(f"{self._what} died ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
                raise

        return call


__all__ = ["FAILED_EXIT", "DEFAULT_LIMIT", "TRANSIENT_ERRORS", "ServerGone", "Transient", "Permanent", "GaveUp", "Breaker",
           "Watched", "refused", "transient_status", "transient_finish", "engine_died"]
