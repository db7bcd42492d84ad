"""Chunks of ``rlaif generate`` and ``rlaif label`` on one engine or on N Ray replicas.

A *job* (:class:`rlaif.pipeline.generate_chunks.GenerateJob`, :class:`rlaif.pipeline.label.LabelJob`)
knows how to start its engines and how to turn one :class:`ChunkTask` into a
:class:`ChunkResult` (every stage of the chunk, no file written). :func:`run_chunks` runs the
tasks through the job and hands each result to ``commit``, which writes the chunk into the run
folder with :meth:`rlaif.data.runs.RunDir.commit_chunk`. Without Ray that is a plain loop in
this process; with Ray (``RayConfig.address``) N actors each hold the job's engines and run
whole chunks, and this process, the driver, stays the only writer of the run folder.

Exactly once, with leases: a chunk handed to a replica is leased as ``"<chunk>.<attempt>"``; the
driver commits a result only while its lease is live. A replica that dies (its process killed,
its node lost: Ray raises ``RayActorError``) loses its lease and the chunk is leased again to a
healthy replica; a dead replica is replaced. With ``lease_timeout_s`` a lease also expires after
that many seconds and the chunk is leased again; the late result of the expired lease is
committed when the chunk is uncommitted and no other lease holds it, else discarded. A lease that
expires or raises is one failed attempt (once per lease); ``max_attempts`` of them stop the run.
Because every request's seed derives from the run seed and the row's ids, not from
which process or batch served it, the rows equal those of a one-process run.

Why actors rather than Ray Data (``map_batches`` with a stateful engine class, or
``ray.data.llm``): Ray Data retries failed blocks itself and streams outputs into a sink, so the
driver cannot tell which attempt produced a block, cannot refuse a late duplicate, and does not
see a chunk as one unit to commit atomically. Actors leave the lease and the commit to rlaif.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from rlaif.pipeline.chunk_jobs import (  # noqa: F401  (the stages import the chunk types from here)
    ChunkJob, ChunkResult, ChunkTask, Commit, DistributedError, RayConfig,
)


def run_chunks(job: ChunkJob, tasks: Sequence[ChunkTask], commit: Commit, ray_cfg: RayConfig | None = None, *,
               in_process_model: bool = True, log: Callable[[str], None] = print, bar=None) -> dict[str, Any]:
    """Process every task and commit it; returns the engine description for the manifest (with
    ``"ray"``: the replicas' summary, on Ray). ``in_process_model``: the backend loads the model
    (vllm, transformers), so replicas ask for a GPU where the cluster has them."""
    if ray_cfg is None or not ray_cfg.address:
        engines = job.start()
        try:
            for task in tasks:
                commit(task, job.run(engines, task))
            return job.describe(engines)
        finally:
            job.close(engines)
    from rlaif.pipeline.ray_driver import RayDriver

    return RayDriver(job, ray_cfg, commit, log=log, bar=bar, in_process_model=in_process_model).run(list(tasks))
