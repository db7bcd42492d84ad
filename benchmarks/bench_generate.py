"""Critique-and-revise throughput: rlaif on vLLM against the same loop on plain transformers,
and against raw vLLM doing the very same work.

The ``vllm-raw`` row answers "what does rlaif cost on top of vLLM?": in one process with one
warm engine, rlaif's loop runs once to record every ``LLM.generate`` call it makes (token-id
prompts, sampling parameters with their per-request seeds, token limits); then those exact
calls are replayed straight into ``LLM.generate`` with no rlaif around them, alternating
with fresh timed runs of rlaif's loop (prefix cache reset before each), and the row reports
rlaif's throughput as a share of raw vLLM's (goal: >= 90%).

The other rows run rlaif's own loop (``rlaif.pipeline.critique.run_chunk``) over the same prompts, rounds,
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


def layout() -> dict:
    """The functions the workers use, from whichever layout is imported. Run with PYTHONPATH set to a checkout
    of an older commit (the flat layout before rlaif/pipeline, rlaif/data, rlaif/models, e.g. 6d784ac) and the
    same script measures that code: the loop, the engine and their signatures are the same, only the modules moved."""
    import importlib

    def first(*names):
        for name in names:
            module, _, attr = name.rpartition(".")
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError):
                continue
        raise ImportError(f"none of {names}")

    return {
        "STAGES": first("rlaif.pipeline.config.STAGES", "rlaif.config.STAGES"),
        "LoopSettings": first("rlaif.pipeline.critique.LoopSettings", "rlaif.critique.LoopSettings"),
        "run_chunk": first("rlaif.pipeline.critique.run_chunk", "rlaif.critique.run_chunk"),
        "resolve_model": first("rlaif.models.model_zoo.resolve_model", "rlaif.model_zoo.resolve_model"),
        "read_prompts": first("rlaif.data.prompts.read_prompts", "rlaif.prompts.read_prompts"),
    }


def worker(args: argparse.Namespace) -> None:
    from rlaif.constitution import load_constitution
    from rlaif.engine import create_engine
    from rlaif.engine.base import SamplingConfig

    names = layout()
    STAGES, LoopSettings, run_chunk = names["STAGES"], names["LoopSettings"], names["run_chunk"]
    resolve_model, read_prompts = names["resolve_model"], names["read_prompts"]

    model = resolve_model(args.model)
    const = load_constitution(args.constitution)
    prompts = read_prompts(ROOT / "prompts" / "rlaif-prompts.jsonl", limit=args.prompts)
    if args.worker == "vllm-raw":
        return raw_worker(args, model, const, prompts)
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


def raw_worker(args: argparse.Namespace, model: str, const, prompts) -> None:
    """rlaif's loop vs the very same LLM.generate calls replayed without rlaif, on one warm engine."""
    import statistics

    from rlaif.engine import create_engine
    from rlaif.engine.base import SamplingConfig

    names = layout()
    STAGES, LoopSettings, run_chunk = names["STAGES"], names["LoopSettings"], names["run_chunk"]

    t0 = time.perf_counter()
    engine = create_engine(model, "vllm", max_model_len=4096, show_progress=False, dtype=args.dtype,
                           enforce_eager=True, gpu_memory_utilization=0.2)
    startup = time.perf_counter() - t0
    llm = engine.llm
    real_generate = llm.generate
    calls: list[tuple[list, list]] = []

    def recording(prompts_, params, **kw):
        calls.append((prompts_, params))
        return real_generate(prompts_, params, **kw)

    sampling = {s: SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=args.max_tokens) for s in STAGES}
    settings = LoopSettings(rounds=args.rounds, samples_per_prompt=1, seed=0, sampling=sampling)
    llm.generate = recording
    run_chunk(engine, const, prompts, settings)  # warm-up and recording
    llm.generate = real_generate

    def timed_rlaif() -> tuple[float, int]:
        llm.reset_prefix_cache()
        t = time.perf_counter()
        trajs = run_chunk(engine, const, prompts, settings)
        tok = sum(t_.initial.completion_tokens + sum(r.critique.completion_tokens + r.revision.completion_tokens for r in t_.rounds)
                  for t_ in trajs if t_.initial)
        return time.perf_counter() - t, tok

    def timed_raw() -> tuple[float, int]:
        llm.reset_prefix_cache()
        t = time.perf_counter()
        tok = 0
        for prompts_, params in calls:
            tok += sum(len(o.outputs[0].token_ids) for o in real_generate(prompts_, params, use_tqdm=False))
        return time.perf_counter() - t, tok

    raw, ours = [], []
    for _ in range(args.repeats):
        raw.append(timed_raw())
        ours.append(timed_rlaif())
    raw_s, ours_s = statistics.median(r[0] for r in raw), statistics.median(r[0] for r in ours)
    print("RESULT " + json.dumps({
        "backend": "vllm-raw", "startup_s": startup, "generate_s": raw_s, "prompts": len(prompts), "ok": len(prompts),
        "output_tokens": raw[0][1], "prompt_tokens": sum(len(p["prompt_token_ids"]) for ps, _ in calls for p in ps),
        "llm_generate_calls": len(calls), "rlaif_generate_s": ours_s, "rlaif_output_tokens": ours[0][1],
        "raw_runs_s": [r[0] for r in raw], "rlaif_runs_s": [r[0] for r in ours],
        "rlaif_share_of_raw_throughput": raw_s / ours_s,
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
           "--constitution", args.constitution, "--repeats", str(args.repeats)]
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
    ap.add_argument("--backends", default="transformers,vllm-eager,vllm-compiled,vllm-raw")
    ap.add_argument("--repeats", type=int, default=2, help="vllm-raw: timed runs of each side (median reported)")
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
    for r in results:
        if r["backend"] == "vllm-raw":
            lines += ["", f"rlaif vs raw vLLM, the same {r['llm_generate_calls']} LLM.generate calls on one warm engine (eager): "
                      f"raw {r['generate_s']:.1f} s, rlaif {r['rlaif_generate_s']:.1f} s (medians of {args.repeats}; "
                      f"output tokens {r['output_tokens']} vs {r['rlaif_output_tokens']}): rlaif reaches "
                      f"**{100 * r['rlaif_share_of_raw_throughput']:.1f}%** of raw vLLM's throughput (goal >= 90%)"]
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
