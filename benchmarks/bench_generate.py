"""Critique-and-revise throughput: rlaif on vLLM against the same loop on plain transformers.

Both run rlaif's own loop (``rlaif.pipeline.critique.run_chunk``) over the same prompts, rounds,
token limits and constitution; only the engine differs. Each backend runs in its own
child process so its peak memory (the whole process tree: vLLM's workers included) is
measured alone. Prints one table with ratios against the transformers baseline measured
in the same run, and saves it as JSON and Markdown.

    python benchmarks/bench_generate.py [--prompts 48] [--rounds 1] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(args: argparse.Namespace) -> None:
    from rlaif.pipeline.config import STAGES
    from rlaif.constitution import load_constitution
    from rlaif.pipeline.critique import LoopSettings, run_chunk
    from rlaif.engine import create_engine
    from rlaif.engine.base import SamplingConfig
    from rlaif.models.model_zoo import resolve_model
    from rlaif.data.prompts import read_prompts

    model = resolve_model(args.model)
    const = load_constitution(args.constitution)
    prompts = read_prompts(ROOT / "prompts" / "rlaif-prompts.jsonl", limit=args.prompts)
    t0 = time.perf_counter()
    if args.worker == "transformers":
        engine = create_engine(model, "transformers", max_model_len=4096, show_progress=False, dtype=args.dtype, batch_size=args.hf_batch)
    else:
        engine = create_engine(model, "vllm", max_model_len=4096, show_progress=False, dtype=args.dtype,
                               enforce_eager=args.worker == "vllm-eager", gpu_memory_utilization=0.2)
    startup = time.perf_counter() - t0
    sampling = {s: SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=args.max_tokens) for s in STAGES}
    settings = LoopSettings(rounds=args.rounds, samples_per_prompt=1, seed=0, sampling=sampling)
    t1 = time.perf_counter()
    trajs = run_chunk(engine, const, prompts, settings)
    wall = time.perf_counter() - t1
    out_tok = sum(t.initial.completion_tokens + sum(r.critique.completion_tokens + r.revision.completion_tokens for r in t.rounds) for t in trajs if t.initial)
    in_tok = sum(t.initial.prompt_tokens + sum(r.critique.prompt_tokens + r.revision.prompt_tokens for r in t.rounds) for t in trajs if t.initial)
    print("RESULT " + json.dumps({
        "backend": args.worker, "startup_s": startup, "generate_s": wall, "prompts": len(prompts),
        "ok": sum(t.status == "ok" for t in trajs), "output_tokens": out_tok, "prompt_tokens": in_tok,
    }), flush=True)
    engine.close()


def _tree_rss(proc) -> int:
    import psutil

    try:
        p = psutil.Process(proc.pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_backend(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--prompts", str(args.prompts), "--rounds", str(args.rounds),
           "--max-tokens", str(args.max_tokens), "--model", args.model, "--dtype", args.dtype, "--hf-batch", str(args.hf_batch),
           "--constitution", args.constitution]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc))
        time.sleep(0.5)
    out = proc.stdout.read()
    line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{name} worker failed:\n{out[-2000:]}")
    res = json.loads(line[7:])
    res["peak_rss_gib"] = peak / 2**30
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--hf-batch", type=int, default=16)
    ap.add_argument("--constitution", default="default")
    ap.add_argument("--backends", default="transformers,vllm-eager,vllm-compiled")
    ap.add_argument("--save", default=str(ROOT / "benchmarks" / "results" / "generate.json"))
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    results = []
    for name in args.backends.split(","):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results.append(run_backend(name, args))
    base = next((r for r in results if r["backend"] == "transformers"), results[0])
    lines = [
        f"job: {args.prompts} prompts x (1 response + {args.rounds} x (critique + revision)), max {args.max_tokens} new tokens per call, "
        f"{args.dtype}, constitution '{args.constitution}'; host: {platform.machine()}, {_cpus()} CPUs",
        "",
        "| backend | start-up s | generate s | prompts/s | output tok/s | prompt+output tok/s | peak RSS GiB | speed-up (generate) | speed-up (incl. start-up) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        gen, tot = r["generate_s"], r["generate_s"] + r["startup_s"]
        btot = base["generate_s"] + base["startup_s"]
        r.update(prompts_per_s=r["prompts"] / gen, output_tok_per_s=r["output_tokens"] / gen,
                 all_tok_per_s=(r["output_tokens"] + r["prompt_tokens"]) / gen,
                 speedup=base["generate_s"] / gen, speedup_with_startup=btot / tot)
        lines.append(
            f"| {r['backend']} | {r['startup_s']:.1f} | {gen:.1f} | {r['prompts_per_s']:.3f} | {r['output_tok_per_s']:.1f} | "
            f"{r['all_tok_per_s']:.0f} | {r['peak_rss_gib']:.2f} | {r['speedup']:.2f}x | {r['speedup_with_startup']:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    save = Path(args.save)
    save.parent.mkdir(parents=True, exist_ok=True)
    save.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    save.with_suffix(".md").write_text(table + "\n")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    main()
