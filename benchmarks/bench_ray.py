"""The Ray driver's cost per chunk: ``rlaif generate --label`` on the fake engine at 1, 2 and 8 replicas.

The fake engine answers at once, so what is left of a chunk's wall time is the machinery:
leasing the chunk to a replica, shipping its prompts, receiving the rows, and the atomic commit
(three files fsynced and renamed). Per replica count this prints and writes:

* ``wall/chunk``: steady-state wall time per chunk, from the first replica ready to the end;
* ``driver busy/chunk``: time the driver spent not waiting for replicas (lease, receive, commit,
  bookkeeping), from the run's own summary (``engine.ray.driver_busy_s_per_chunk``);
* ``commit/chunk``: of that, the atomic commit alone;
* ``replica busy/chunk``: time a replica spent on a chunk (the fake engine's work);
* and the same job in one process without Ray, for comparison.

    python benchmarks/bench_ray.py [--replicas 1 2 8] [--chunks 100] [--chunk-size 16] [--out FILE]

Ray is started here on loopback with as many logical CPUs as replicas (each replica reserves
one), whatever the machine has; on a 2-core machine 8 replicas share 2 cores with the driver.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlaif.constitution import load_constitution  # noqa: E402
from rlaif.engine.fake import FakeEngine  # noqa: E402
from rlaif.pipeline.config import GenerateConfig, LabelConfig  # noqa: E402
from rlaif.pipeline.distributed import RayConfig  # noqa: E402
from rlaif.pipeline.generate import generate  # noqa: E402


def fake_engine():
    return FakeEngine()


def prompt_file(tmp: Path, n: int) -> Path:
    """``n`` distinct prompts: the shipped set, repeated with a number appended."""
    from rlaif.data import textio
    from rlaif.data.prompts import read_prompts

    base = read_prompts(str(ROOT / "prompts" / "rlaif-prompts.jsonl"))
    rows = [{"id": f"p{i}", "prompt": f"{base[i % len(base)].messages[-1]['content']} ({i})"} for i in range(n)]
    path = tmp / "prompts.jsonl"
    path.write_text(textio.dumps_jsonl(rows), encoding="utf-8")
    return path


def one_run(tmp: Path, prompts: Path, n_prompts: int, chunk: int, ray_cfg: RayConfig | None) -> dict:
    from rlaif.data.runs import RunDir

    out = tmp / f"run-{ray_cfg.replicas if ray_cfg else 0}"
    cfg = GenerateConfig(prompts=str(prompts), out=str(out), limit=n_prompts,
                         chunk_size=chunk, rounds=1, label=LabelConfig(enabled=True), **({"ray": ray_cfg} if ray_cfg else {}))
    marks: list[tuple[float, str]] = []
    commits: list[float] = []
    original = RunDir.commit_chunk

    spent: list[float] = []

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        original(self, *args, **kwargs)
        commits.append(time.perf_counter())
        spent.append(commits[-1] - t0)

    RunDir.commit_chunk = timed
    try:
        manifest = generate(cfg, load_constitution("default"), fake_engine, "fake-model", show_progress=False,
                            log=lambda m: marks.append((time.perf_counter(), m)))
    finally:
        RunDir.commit_chunk = original
    ready = [t for t, m in marks if m.startswith("replica ") and " ready on " in m]
    # steady state: from the last replica's start (or the first commit) to the last commit
    start = max([*ready, commits[0]])
    window = [t for t in commits if t > start]
    row = {"replicas": ray_cfg.replicas if ray_cfg else 0, "chunks": len(commits),
           "wall_per_chunk_ms": 1000 * (commits[-1] - start) / max(1, len(window)), "commit_ms": 1000 * sum(spent) / len(spent)}
    if ray_cfg:
        s = manifest["engine"]["ray"]
        busy = sum(r["busy_s"] for r in s["replicas"])
        row.update(driver_busy_ms=1000 * s["driver_busy_s_per_chunk"], commit_ms=1000 * s["driver_commit_s_per_chunk"],
                   replica_busy_ms=1000 * busy / len(commits), used=sum(1 for r in s["replicas"] if r["chunks"]),
                   all_ready=len(ready) == ray_cfg.replicas, steady_chunks=len(window))
    shutil.rmtree(out, ignore_errors=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 8])
    ap.add_argument("--chunks", type=int, default=1000)
    ap.add_argument("--chunk-size", type=int, default=4, help="prompts per chunk")
    ap.add_argument("--out", type=Path, help="write the table here (markdown)")
    a = ap.parse_args()
    import ray

    n_prompts = a.chunks * a.chunk_size
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    prompts = prompt_file(tmp, n_prompts)
    rows = [one_run(tmp, prompts, n_prompts, a.chunk_size, None)]
    for n in a.replicas:
        ray.init(num_cpus=n, object_store_memory=200 * 1024 * 1024, include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(tmp / "ray"), configure_logging=False)
        try:
            rows.append(one_run(tmp, prompts, n_prompts, a.chunk_size, RayConfig(address="local", replicas=n, cpus_per_replica=1)))
        finally:
            ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    head = ("| replicas | replicas that ran chunks | steady chunks | wall/chunk (ms) | driver busy/chunk (ms) | commit/chunk (ms) "
            "| replica busy/chunk (ms) |")
    lines = [f"{a.chunks} chunks of {a.chunk_size} prompts, one critique-and-revision round, AI labels (ensemble 4, both orders); "
             f"fake engine; {os.cpu_count()} CPU cores. Steady state: from the last replica ready to the last commit.", "", head,
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["replicas"] == 0:
            lines.append(f"| no Ray (one process) | - | {r['chunks'] - 1} | {r['wall_per_chunk_ms']:.1f} | - | {r['commit_ms']:.1f} | - |")
        else:
            lines.append(f"| {r['replicas']} | {r['used']} | {r['steady_chunks']} | {r['wall_per_chunk_ms']:.1f} | {r['driver_busy_ms']:.1f} | "
                         f"{r['commit_ms']:.1f} | {r['replica_busy_ms']:.1f} |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
