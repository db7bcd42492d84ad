"""The driver of a Ray run (see :mod:`rlaif.pipeline.distributed`): replicas, leases, commits.

The driver starts ``RayConfig.replicas`` actors, each holding the job's engines, leases each
free replica one chunk at a time, and commits a returned chunk while its lease is live, or late,
when no other lease holds the chunk and it is not committed yet (every chunk is committed once).
A lease that raises or expires is a failed attempt of its chunk, counted once however it ends:
``max_attempts`` failed leases of one chunk stop the run. It is the only process that writes
the run folder.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable

from rlaif.engine.failures import ServerGone
from rlaif.pipeline.chunk_jobs import ChunkJob, ChunkTask, Commit, DistributedError, RayConfig, Replica

POLL_S = 0.5


def import_ray():
    try:
        import ray
    except ImportError:
        raise DistributedError("--ray needs the ray package: pip install 'rlaif[ray]'") from None
    return ray


def connect(ray, address: str) -> bool:
    """Connect to (or start) the cluster; True when this call initialised Ray (the driver then shuts it down)."""
    if ray.is_initialized():
        return False  # a caller (a notebook, a test) connected already: use that cluster
    kwargs: dict[str, Any] = {"log_to_driver": False}
    target = None if address == "local" else address
    if target is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False  # a fresh local cluster: no dashboard
    try:
        ray.init(address=target, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise DistributedError(f"cannot connect to Ray at {address!r}: {exc}") from None
    return True


def short_error(exc: BaseException) -> str:
    """One line saying what went wrong in a replica (Ray wraps a replica's exception with its traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".strip().splitlines()[0][:500]
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]


@dataclass
class ReplicaState:
    name: str
    actor: Any
    start_ref: Any
    state: str = "starting"  # starting | ready | died | failed to start | finished | not started
    busy: Any = None  # the ref of the chunk it is running
    host: str = ""
    pid: int | None = None
    start_s: float | None = None
    error: str | None = None
    engine: dict[str, Any] | None = None
    chunks: int = 0
    rows: int = 0
    failures: int = 0
    discarded: int = 0
    busy_s: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0

    def summary(self) -> dict[str, Any]:
        rate = lambda n: round(n / self.busy_s, 1) if self.busy_s else None  # noqa: E731
        return {"replica": self.name, "host": self.host, "pid": self.pid, "state": self.state, "error": self.error,
                "start_s": self.start_s, "chunks": self.chunks, "rows": self.rows, "failures": self.failures,
                "late_results_discarded": self.discarded, "busy_s": round(self.busy_s, 2),
                "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
                "tokens_per_s": rate(self.prompt_tokens + self.output_tokens), "output_tokens_per_s": rate(self.output_tokens)}


@dataclass
class Lease:
    id: str
    task: ChunkTask
    replica: ReplicaState
    deadline: float | None
    failed: str | None = None  # "expired" or "error": counted once against its chunk


class RayDriver:
    def __init__(self, job: ChunkJob, cfg: RayConfig, commit: Commit, *, log: Callable[[str], None] = print,
                 bar=None, in_process_model: bool = True):
        self.job, self.cfg, self.commit, self.log, self.bar = job, cfg, commit, log, bar
        self.in_process_model = in_process_model
        self.replicas: list[ReplicaState] = []
        self.queue: deque[ChunkTask] = deque()
        self.live: dict[int, str] = {}  # chunk -> its live lease
        self.leases: dict[Any, Lease] = {}  # result ref -> lease (expired ones too, until they return)
        self.attempts: Counter[int] = Counter()
        self.failures: Counter[int] = Counter()  # chunk -> leases of it that raised or expired
        self.committed: set[int] = set()
        self.counts: Counter[str] = Counter()
        self.driver_s = 0.0  # committing
        self.loop_s = self.wait_s = 0.0  # the whole loop; blocked in ray.wait
        self.replaced = 0

    # ------------------------------------------------------------ set-up

    def run(self, tasks: list[ChunkTask]) -> dict[str, Any]:
        self.ray = ray = import_ray()
        started_here = connect(ray, self.cfg.address or "local")
        t0 = time.time()
        try:
            self.resources = self._resources()
            self.job_ref = ray.put(self.job)
            self.actor_cls = ray.remote(Replica)
            self.queue.extend(tasks)
            for _ in range(self.cfg.replicas):
                self._spawn()
            self._loop()
        finally:
            self._close_all()
            if started_here:
                ray.shutdown()
        summary = self._summary(time.time() - t0)
        self.log(format_summary(summary))
        first = next((r.engine for r in self.replicas if r.engine), {})
        return {**first, "ray": summary}

    def _resources(self) -> dict[str, float]:
        total = self.ray.cluster_resources()
        gpus = self.cfg.gpus_per_replica
        if gpus is None:
            gpus = 1.0 if self.in_process_model and total.get("GPU", 0) >= 1 else 0.0
        cpus = self.cfg.cpus_per_replica
        if cpus > total.get("CPU", 0) or gpus > total.get("GPU", 0):
            raise DistributedError(f"a replica needs {cpus:g} CPUs and {gpus:g} GPUs; the Ray cluster has "
                                   f"{total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs")
        fit = min(total.get("CPU", 0) // cpus if cpus else math.inf, total.get("GPU", 0) // gpus if gpus else math.inf)
        if fit < self.cfg.replicas:
            self.log(f"the Ray cluster fits {int(fit)} of {self.cfg.replicas} replicas at once ({cpus:g} CPUs, "
                     f"{gpus:g} GPUs each); the others start when resources free up")
        return {"num_cpus": cpus, "num_gpus": gpus}

    def _spawn(self) -> ReplicaState:
        actor = self.actor_cls.options(max_restarts=0, max_task_retries=0, **self.resources).remote(self.job_ref)
        r = ReplicaState(f"r{len(self.replicas)}", actor, actor.start.remote())
        self.replicas.append(r)
        return r

    # ------------------------------------------------------------ the loop

    def _loop(self) -> None:
        ray, t_loop = self.ray, time.perf_counter()
        while self.queue or self.live:
            for r in self.replicas:
                if r.state == "ready" and r.busy is None and self.queue:
                    self._lease(r, self.queue.popleft())
            if not any(r.state in ("starting", "ready") for r in self.replicas):
                errors = "; ".join(f"{r.name}: {r.state}: {r.error}" for r in self.replicas)
                raise DistributedError(f"no replica is left ({errors}); committed chunks are kept: "
                                       "run the same command again to continue")
            starting = {r.start_ref: r for r in self.replicas if r.state == "starting"}
            refs = [*starting, *self.leases]
            t0 = time.perf_counter()
            ready, _ = ray.wait(refs, num_returns=1, timeout=self._timeout())
            self.wait_s += time.perf_counter() - t0
            if ready:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                if ref in starting:
                    self._started(starting[ref])
                else:
                    self._returned(ref)
            self._expire()
            if self.bar is not None:
                self.bar.set_postfix_str(" ".join(f"{r.name}:{r.chunks}" + ("" if r.state in ("ready", "starting") else "x")
                                                  for r in self.replicas), refresh=True)
        self.loop_s = time.perf_counter() - t_loop

    def _timeout(self) -> float:
        deadlines = [l.deadline for l in self.leases.values() if l.deadline is not None and self.live.get(l.task.index) == l.id]
        return max(0.01, min([POLL_S, *[d - time.time() for d in deadlines]]))

    def _lease(self, r: ReplicaState, task: ChunkTask) -> None:
        self.attempts[task.index] += 1
        lease_id = f"{task.index}.{self.attempts[task.index]}"
        ref = r.actor.run.remote(lease_id, task)
        timeout = self.cfg.lease_timeout_s
        self.leases[ref] = Lease(lease_id, task, r, time.time() + timeout if timeout else None)
        self.live[task.index] = lease_id
        r.busy = ref
        self.counts["leases"] += 1

    def _started(self, r: ReplicaState) -> None:
        try:
            info = self.ray.get(r.start_ref)
        except Exception as exc:  # noqa: BLE001 - any failure of a replica's start is reported, the others go on
            r.state, r.error = "failed to start", short_error(exc)
            self.log(f"replica {r.name} failed to start: {r.error}")
            self.ray.kill(r.actor, no_restart=True)
            return
        r.state, r.host, r.pid, r.start_s, r.engine = "ready", info["host"], info["pid"], info["start_s"], info["engine"]
        self.log(f"replica {r.name} ready on {r.host} (pid {r.pid}, started in {r.start_s:.1f} s)")

    def _returned(self, ref) -> None:
        lease = self.leases.pop(ref)
        r, task = lease.replica, lease.task
        if r.busy is ref:
            r.busy = None
        errors = self.ray.exceptions
        try:
            lease_id, result, info = self.ray.get(ref)
        except errors.RayError as exc:
            if isinstance(exc, errors.RayTaskError):  # raised by the chunk's own code: see below
                return self._failed(lease, exc)
            # anything else is the replica lost: its process or node died, or Ray killed it (memory)
            r.state, r.error = "died", short_error(exc)
            self.log(f"replica {r.name} died holding chunk {task.index + 1} (lease {lease.id}): {r.error}")
            self._release(lease)
            self._replace(r)
            return
        except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be unpickled here
            return self._failed(lease, exc)
        holder = self.live.get(task.index)
        if holder != lease_id:  # the lease expired: its result counts unless the chunk is done or held again
            if task.index in self.committed or holder is not None:
                r.discarded += 1
                self.counts["late_results_discarded"] += 1
                why = "committed already" if holder is None else f"held by lease {holder}"
                self.log(f"late result of chunk {task.index + 1} from replica {r.name} (expired lease {lease_id}) "
                         f"discarded: the chunk is {why}")
                return
            self.queue = deque(t for t in self.queue if t.index != task.index)  # waiting to be leased again: no more
            self.counts["late_results_accepted"] += 1
            self.log(f"late result of chunk {task.index + 1} from replica {r.name} (expired lease {lease_id}) committed: "
                     "no other lease held the chunk")
        t0 = time.perf_counter()
        result.stats.update(replica=r.name, lease=lease_id)
        self.commit(task, result)
        self.live.pop(task.index, None)
        self.committed.add(task.index)
        self.driver_s += time.perf_counter() - t0
        self.counts["commits"] += 1
        r.chunks += 1
        r.rows += len(result.rows)
        r.busy_s += info["busy_s"]
        r.prompt_tokens += info["prompt_tokens"]
        r.output_tokens += info["output_tokens"]

    def _failed(self, lease: Lease, exc: BaseException) -> None:
        """The chunk raised in a healthy replica: lease it again, up to ``max_attempts`` failed leases.

        The error is the raising lease's: one that had expired was counted then, and another
        lease may hold the chunk now, so it changes nothing else."""
        r, task = lease.replica, lease.task
        if isinstance(getattr(exc, "cause", None), ServerGone):  # the server is gone for every replica: stop
            raise ServerGone(str(exc.cause)) from None
        r.failures += 1
        self.log(f"chunk {task.index + 1} failed on replica {r.name} (lease {lease.id}"
                 f"{', expired before' if lease.failed else ''}): {short_error(exc)}")
        if lease.failed:
            return
        self._count_failure(lease, "error", f"last error: {short_error(exc)}")
        self._release(lease)

    def _count_failure(self, lease: Lease, how: str, detail: str) -> None:
        """One failed lease of its chunk; past ``max_attempts`` of them the run stops."""
        lease.failed = how
        index = lease.task.index
        self.failures[index] += 1
        if self.failures[index] >= self.cfg.max_attempts:
            raise DistributedError(
                f"chunk {index + 1} failed {self.failures[index]} times (max_attempts {self.cfg.max_attempts}): "
                f"{detail}; committed chunks are kept: run the same command again to continue")

    def _release(self, lease: Lease) -> None:
        """Lease the chunk again (first in the queue) unless another lease already holds it."""
        if self.live.get(lease.task.index) == lease.id:
            del self.live[lease.task.index]
            self.queue.appendleft(lease.task)
            self.counts["released"] += 1

    def _expire(self) -> None:
        now = time.time()
        for lease in list(self.leases.values()):
            if lease.deadline is not None and now > lease.deadline and self.live.get(lease.task.index) == lease.id:
                self.counts["expired"] += 1
                self._count_failure(lease, "expired", f"lease {lease.id} expired after {self.cfg.lease_timeout_s:g} s "
                                    "(does a chunk take longer than --lease-timeout?)")
                self.log(f"lease {lease.id} of chunk {lease.task.index + 1} on replica {lease.replica.name} expired "
                         f"after {self.cfg.lease_timeout_s:g} s; leasing the chunk again")
                self._release(lease)

    def _replace(self, dead: ReplicaState) -> None:
        self.ray.kill(dead.actor, no_restart=True)
        if self.replaced < self.cfg.replicas:
            self.replaced += 1
            new = self._spawn()
            self.log(f"starting replica {new.name} in place of {dead.name}")

    # ------------------------------------------------------------ end

    def _close_all(self) -> None:
        """Close every replica's engines (one still busy with an expired lease is not waited for) and end the actors."""
        ray = self.ray
        for r in self.replicas:
            if r.state == "ready" and r.busy is None:
                try:
                    ray.get(r.actor.close.remote(), timeout=60)
                except Exception:  # noqa: BLE001 - it is killed next anyway
                    pass
            if r.state == "starting":
                r.state, r.error = "not started", "the run ended first"
            elif r.state == "ready":
                r.state = "finished"
            ray.kill(r.actor, no_restart=True)

    def _summary(self, wall_s: float) -> dict[str, Any]:
        commits = self.counts["commits"]
        return {
            "address": self.cfg.address, "replicas_asked": self.cfg.replicas, "resources_per_replica": self.resources,
            "lease_timeout_s": self.cfg.lease_timeout_s, "wall_s": round(wall_s, 2), "chunks_committed": commits,
            "leases": self.counts["leases"], "leased_again": self.counts["released"], "expired": self.counts["expired"],
            "late_results_discarded": self.counts["late_results_discarded"],
            "late_results_accepted": self.counts["late_results_accepted"],
            "driver_commit_s_per_chunk": round(self.driver_s / commits, 5) if commits else None,
            # everything the driver did that was not waiting for replicas: leasing, receiving, committing, bookkeeping
            "driver_busy_s_per_chunk": round((self.loop_s - self.wait_s) / commits, 5) if commits else None,
            "replicas": [r.summary() for r in self.replicas],
        }


def format_summary(s: dict[str, Any]) -> str:
    """The per-replica table printed at the end of a Ray run."""
    lines = [f"ray: {s['chunks_committed']} chunks in {s['wall_s']:.1f} s; {s['leases']} leases, {s['leased_again']} "
             f"leased again, {s['expired']} expired, {s['late_results_accepted']} late results committed, "
             f"{s['late_results_discarded']} discarded",
             f"{'replica':<8}{'host':<16}{'pid':>8}  {'state':<16}{'chunks':>7}{'rows':>8}{'tok/s':>11}{'out tok/s':>11}{'failures':>9}"]
    for r in s["replicas"]:
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        lines.append(f"{r['replica']:<8}{(r['host'] or '-')[:15]:<16}{r['pid'] or '-':>8}  {r['state']:<16}{r['chunks']:>7}"
                     f"{r['rows']:>8} {fmt(r['tokens_per_s']):>10} {fmt(r['output_tokens_per_s']):>10}{r['failures']:>9}")
        if r["error"]:
            lines.append(f"{'':<8}{r['error']}")
    return "\n".join(lines)
