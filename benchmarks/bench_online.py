"""One online-DPO step and one GRPO step on this host, split into sample / judge / update / sync, and
the judge's prefill tokens per pair with and without vLLM's prefix cache.

1. **Steps.** ``rlaif.train.online_dpo`` and ``rlaif.train.grpo`` with the shipped demo configs
   (``configs/online-dpo-demo.yaml``, ``configs/grpo-demo.yaml``: the default model as policy and,
   in its own engine, as judge), on one rollout engine; ``--iterations`` steps each, the first a
   warm-up; the median of each part over the others is reported.
2. **Prefix caching.** The same judge questions (GRPO groups sampled after the steps, all pairs, both
   orders, an ensemble of 2) scored by fresh judge engines: prefix cache off, on with vLLM's block
   size (128 tokens on CPU), and on with 32-token blocks: prompt tokens, tokens the cache served,
   prefill tokens per pair, seconds.

    python benchmarks/bench_online.py [--iterations 4] [--out benchmarks/results/online.json]

Prints one table and, with ``--out FILE``, saves the numbers as JSON (and a Markdown table next to it).
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPLIT = ("sample", "judge", "reward", "score", "update", "sync")


def run_trainer(recipe, cls, config: str, engine, runs: str, iterations: int) -> dict:
    from rlaif.train.config import load_config

    cfg = load_config(cls, ROOT / "configs" / config, [f"runs_dir={runs}", f"max_steps={iterations}", "probe_size=0",
                                                         "tensorboard=false", f"data={ROOT / 'prompts' / 'rlaif-prompts.jsonl'}"])
    s = recipe.setup(cfg, engine=engine)
    try:
        its = [recipe.iteration(s, i) for i in range(iterations)]
        groups = None
        if hasattr(recipe, "rewards"):  # keep GRPO's last groups for the prefix-cache measurement
            from rlaif.train import online

            recs, samples = online.sample(s, iterations, "grpo")
            k = cfg.samples_per_prompt
            groups = [(list(recs[g * k].messages), [x.text for x in samples[g * k : (g + 1) * k]], f"bench:{g}")
                      for g in range(len(samples) // k)]
    finally:
        recipe.cleanup(s)
    import statistics

    timed = its[1:] or its  # the first step is a warm-up
    it = timed[-1]
    med = lambda key: statistics.median(x.get(key, 0.0) for x in timed)  # noqa: E731  (robust to bursts of other load)
    total = med("train/time/iteration_s")
    row = {"config": config, "steps_timed": len(timed), "iteration_s": total,
           **{f"{k}_s": med(f"train/time/{k}_s") for k in SPLIT}}
    row["other_s"] = max(0.0, total - sum(row[f"{k}_s"] for k in SPLIT))
    row["iteration_runs_s"] = [x["train/time/iteration_s"] for x in timed]
    for k in ("requests", "prompt_tokens", "cached_tokens", "prefill_tokens", "prefill_tokens_per_pair", "pairs"):
        row[f"judge_{k}"] = it[f"train/judge/{k}"]
    row["responses"] = cfg.rollouts
    row["response_tokens"] = it["train/response_length"] * cfg.rollouts
    row["logprob_gap_max"] = it["train/rollout/logprob_gap_max"]
    return row, groups


def judge_cost(groups, prefix_caching: bool, block_size: int | None = None) -> dict:
    from rlaif.constitution import load_constitution
    from rlaif.engine.config import EngineConfig
    from rlaif.train.feedback import JudgeConfig, MeteredJudge, judge_groups, make_judge

    jc = JudgeConfig(model="default", ensemble=2, engine=EngineConfig(kv_cache_gib=0.5, max_model_len=2048, dtype="float32",
                                                                     enable_prefix_caching=prefix_caching, block_size=block_size))
    engine, _ = make_judge(jc, None, seed=0)
    judge = MeteredJudge(engine)
    try:
        judged = judge_groups(judge, load_constitution("default"), jc.label_settings(0), groups, "all", desc="bench")
        pairs = sum(len(g) for g in judged)
        return {"prefix_caching": prefix_caching, "block_size": block_size or "vLLM's",
                **{k.removeprefix("judge/"): v for k, v in judge.take(pairs).items()}, "pairs": pairs}
    finally:
        judge.close()


def markdown(result: dict) -> str:
    lines = [f"# Online DPO and GRPO steps on this host ({result['host']['cpu']}, {result['host']['threads']} threads)", "",
             "Default model (SmolLM2-135M-Instruct) as policy and, in its own vLLM engine, as judge; the shipped demo",
             "configs; float32 engines. Medians over the steps after a warm-up step (`benchmarks/bench_online.py`);",
             "other jobs shared the 2 cores, so single steps vary (`iteration_runs_s` in the JSON).", "",
             "| step | responses | judge requests | seconds | sample | judge | reward (RM, fn) | score | update | sync | other |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["steps"].items():
        t = r["iteration_s"]
        cells = " | ".join(f"{r[f'{k}_s']:.1f} ({100 * r[f'{k}_s'] / t:.0f}%)" for k in (*SPLIT, "other"))
        lines.append(f"| {name} | {r['responses']} | {int(r['judge_requests'])} | {t:.1f} | {cells} |")
    lines += ["", "`score`: the policy's and the reference's log-probs of the samples (no gradient); `other`:",
              "batching, KL and the dataset commit.", "",
              "Judge prefill per pair, the same questions (GRPO groups, all pairs, 2 principles x 2 orders), fresh engines:", "",
              "| prefix cache | block size | pairs | requests | prompt tokens | served by the cache | prefill tokens per pair | seconds |",
              "|---|---|---|---|---|---|---|---|"]
    for c in result["prefix_caching"]:
        lines.append(f"| {'on' if c['prefix_caching'] else 'off'} | {c['block_size']} | {c['pairs']} | {int(c['requests'])} | {int(c['prompt_tokens'])} "
                     f"| {int(c['cached_tokens'])} | {c['prefill_tokens_per_pair']:.0f} | {c['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=4, help="steps per trainer; the first is a warm-up")
    ap.add_argument("--out", help="write the numbers as JSON here (and a .md table next to it)")
    ap.add_argument("--caching-only", metavar="GROUPS_JSON", help=argparse.SUPPRESS)  # the second part, in its own process
    args = ap.parse_args()
    if args.caching_only:  # a fresh process: the trainers' memory is gone, one judge engine at a time
        groups = [tuple(g) for g in json.loads(Path(args.caching_only).read_text())]
        out = [judge_cost(groups, False), judge_cost(groups, True), judge_cost(groups, True, 32)]
        Path(args.caching_only).with_suffix(".out.json").write_text(json.dumps(out))
        return

    import subprocess
    import sys

    import torch

    from rlaif.engine.config import EngineConfig
    from rlaif.engine.vllm_local import VLLMEngine
    from rlaif.models.model_zoo import resolve_model
    from rlaif.train import grpo, online_dpo

    path = str(getattr(resolve_model("default"), "path", resolve_model("default")))
    engine = VLLMEngine(path, EngineConfig(max_model_len=512, kv_cache_gib=0.5, dtype="float32"), show_progress=False)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rlaif-bench-online-") as tmp:
        odpo, _ = run_trainer(online_dpo, online_dpo.OnlineDPOConfig, "online-dpo-demo.yaml", engine, tmp, args.iterations)
        g, groups = run_trainer(grpo, grpo.GRPOConfig, "grpo-demo.yaml", engine, tmp, args.iterations)
        engine.close()
        gfile = Path(tmp) / "groups.json"
        gfile.write_text(json.dumps(groups))
        subprocess.run([sys.executable, __file__, "--caching-only", str(gfile)], check=True)
        caching = json.loads(gfile.with_suffix(".out.json").read_text())
    result = {"host": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
              "model": path, "steps": {"online DPO": odpo, "GRPO": g}, "prefix_caching": caching,
              "wall_s": time.perf_counter() - t0}
    print(markdown(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        Path(args.out).with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
