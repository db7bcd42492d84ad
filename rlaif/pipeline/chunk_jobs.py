"""What a chunked run is made of: the chunk tasks and results, the job protocol, the Ray settings,
and what a Ray replica holds. :mod:`rlaif.pipeline.distributed` runs the chunks (in this process
or through :mod:`rlaif.pipeline.ray_driver`); both import these from here, so neither imports the
other back.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence


class DistributedError(RuntimeError):
    """The Ray run cannot go on (no replica left, a chunk that keeps failing, Ray missing)."""


@dataclass(frozen=True)
class RayConfig:
    """Where chunks run: one process (``address`` None) or N replicas on a Ray cluster."""

    address: str | None = None
    """None: no Ray. 'local': connect to RAY_ADDRESS's cluster if set, else start a local one;
    'auto': the cluster running on this machine; 'HOST:PORT' or 'ray://HOST:PORT': that cluster."""
    replicas: int = 2
    """Engine replicas (Ray actors), each with its own engine(s), each running whole chunks."""
    cpus_per_replica: float = 1.0
    gpus_per_replica: float | None = None
    """None: 1 for in-process backends (vllm, transformers) on a cluster with GPUs, else 0.
    Above 1, vLLM runs tensor-parallel over that many GPUs."""
    lease_timeout_s: float | None = None
    """A chunk not returned within this many seconds is leased again (None: only when its replica dies)."""
    max_attempts: int = 3
    """Failed leases of one chunk (each one that raised an error or expired, counted once) before the run stops."""

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"ray.replicas must be >= 1, got {self.replicas}")
        if self.cpus_per_replica < 0 or (self.gpus_per_replica is not None and self.gpus_per_replica < 0):
            raise ValueError("ray.cpus_per_replica and ray.gpus_per_replica must be >= 0")
        if self.lease_timeout_s is not None and self.lease_timeout_s <= 0:
            raise ValueError(f"ray.lease_timeout_s must be > 0, got {self.lease_timeout_s}")
        if self.max_attempts < 1:
            raise ValueError(f"ray.max_attempts must be >= 1, got {self.max_attempts}")


@dataclass(frozen=True)
class ChunkTask:
    """One chunk to process: its items (prompts or pairs), and when a committed chunk's transient
    failures are redone, the ids to redo and the chunk's committed rows and side rows."""

    index: int
    items: Sequence[Any]
    redo: frozenset[str] | None = None
    old_rows: tuple[dict[str, Any], ...] = ()
    old_side: dict[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)


@dataclass
class ChunkResult:
    rows: list[dict[str, Any]]
    stats: dict[str, Any]
    side: dict[str, list[dict[str, Any]]] | None = None


class ChunkJob(Protocol):
    def start(self) -> tuple[Any, ...]:
        """Start the engines (a tuple; the same engine may appear twice)."""
        ...

    def run(self, engines: tuple[Any, ...], task: ChunkTask) -> ChunkResult: ...

    def describe(self, engines: tuple[Any, ...]) -> dict[str, Any]: ...

    def close(self, engines: tuple[Any, ...]) -> None: ...


Commit = Callable[[ChunkTask, ChunkResult], None]


class TokenCounter:
    """An engine wrapper counting the prompt and output tokens of its answers (replica summaries)."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.prompt_tokens = 0
        self.output_tokens = 0

    def generate(self, requests, sampling, desc: str = ""):
        out = self.engine.generate(requests, sampling, desc=desc)
        for c in out:
            self.prompt_tokens += c.prompt_tokens or 0
            self.output_tokens += c.completion_tokens or 0
        return out

    def score_options(self, requests, options, desc: str = ""):
        out = self.engine.score_options(requests, options, desc=desc)
        self.prompt_tokens += sum(o.prompt_tokens or 0 for o in out)
        return out

    def __getattr__(self, name: str):
        return getattr(self.engine, name)


class Replica:
    """What a Ray actor holds: the job and its started engines. Made a Ray actor class at run
    time (``ray.remote(Replica)``), so this module does not need Ray to be imported."""

    def __init__(self, job: ChunkJob):
        self.job = job
        self.engines: tuple[Any, ...] | None = None
        self.counters: list[TokenCounter] = []

    def start(self) -> dict[str, Any]:
        t0 = time.time()
        engines = self.job.start()
        info = self.job.describe(engines)
        wrapped: dict[int, TokenCounter] = {}
        self.raw = engines
        self.engines = tuple(wrapped.setdefault(id(e), TokenCounter(e)) for e in engines)
        self.counters = list(wrapped.values())
        return {"pid": os.getpid(), "host": socket.gethostname(), "start_s": round(time.time() - t0, 2), "engine": info}

    def run(self, lease: str, task: ChunkTask) -> tuple[str, ChunkResult, dict[str, Any]]:
        if self.engines is None:
            raise RuntimeError("replica not started")
        before = [(c.prompt_tokens, c.output_tokens) for c in self.counters]
        t0 = time.perf_counter()
        result = self.job.run(self.engines, task)
        busy = time.perf_counter() - t0
        prompt = sum(c.prompt_tokens - b[0] for c, b in zip(self.counters, before))
        output = sum(c.output_tokens - b[1] for c, b in zip(self.counters, before))
        return lease, result, {"busy_s": busy, "prompt_tokens": prompt, "output_tokens": output}

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        if self.engines is not None:
            self.job.close(self.raw)
            self.engines = None
