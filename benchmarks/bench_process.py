"""Process feedback measured end to end on this machine: Monte-Carlo step labels, a PRM trained on them,
and best-of-N / beam search under four scorers on held-out problems.

    python benchmarks/bench_process.py [--kind sum2ex] [--train 64] [--heldout 64] [--work runs/bench-process]

Generation runs on the transformers backend in float32 with one thread per process
(``OMP_NUM_THREADS=1``): on this shared 2-core machine that was several times faster than two
threads, and than starting vLLM, which took six minutes under the load of the day.

1. **Task** (rlaif/reward/arithmetic.py): ``--train`` and ``--heldout`` problems of one kind (different
   seeds). The one-try accuracy of the default model on the held-out problems is measured first
   (the mean correctness of all its samples).
2. **Labels**: ``rlaif label-steps --source mc`` on the training problems (``--samples`` solutions per
   problem, ``--k`` continuations per step prefix, ``--max-tokens`` per solution and continuation),
   scored by the task's checker. Wall time from the run's manifest.
3. **Models**: ``rlaif train prm`` on those labels (the PRM), and on the same solutions with one step
   each labelled by the final answer's correctness (the outcome RM: a classifier of whole solutions,
   Cobbe et al. 2021 / Lightman et al. 2023's ORM, same data, same backbone, same trainer).
4. **Selection**: 16 samples per held-out problem, scored once by each scorer; best-of-N at N = 4 (the
   first four) and 16 under the PRM (min over steps), the outcome RM, majority vote over final answers
   (ties: the earliest sample), and random choice (its expected accuracy: the mean correctness of the
   N samples). ``rlaif bon --search beam --prm`` with ``beam x expand = N`` (every round spends N
   requests of one step each, so its token budget is close to best-of-N's; both are counted).
5. **Intervals**: Clopper-Pearson 95% over problems (random choice: a percentile bootstrap over problems
   of its expected accuracy).

Everything random is seeded; the result goes to --save (benchmarks/results/process.json); `--table JSON` prints
its markdown table (benchmarks/results/process.md holds it with the discussion).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """The exact 95% binomial interval (rlaif's own, :func:`rlaif.pipeline.intervals.clopper_pearson`)."""
    from rlaif.pipeline.intervals import clopper_pearson as exact

    ci = exact(k, n)
    return (0.0, 1.0) if n == 0 else (ci["lo"], ci["hi"])


def rlaif(*argv, log=None) -> float:
    """Run ``python -m rlaif ...``; returns its wall time (raises on a non-zero exit)."""
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLAIF_REPORT": "0", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-m", "rlaif", *map(str, argv)], env=env, cwd=ROOT, capture_output=True, text=True)
    if log:
        Path(log).write_text(out.stdout + "\n--- stderr ---\n" + out.stderr)
    if out.returncode != 0:
        raise SystemExit(f"rlaif {argv[0]} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return time.time() - t0


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def markdown_table(result: dict) -> str:
    """The results table: accuracy [95% Clopper-Pearson] and generated tokens per problem, N = 4 and 16."""
    def cell(c):
        ci = f" [{c['ci'][0]:.0%}, {c['ci'][1]:.0%}]" if c.get("ci") else ""
        return f"{c['accuracy']:.1%}{ci}, {c['tokens_per_problem']:.0f} tok"

    lines = ["| scorer | N = 4 | N = 16 |", "|---|---|---|"]
    for name, cells in result["table"].items():
        got = {str(k): v for k, v in cells.items()}
        lines.append(f"| {name} | " + " | ".join(cell(got[n]) if n in got else "not run" for n in ("4", "16")) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="sum2ex")
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--heldout", type=int, default=64)
    ap.add_argument("--samples", type=int, default=2, help="solutions per training problem")
    ap.add_argument("--k", type=int, default=4, help="continuations per step prefix")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--beam-at", dest="beam_at", default="4,16", help="the N (4, 16) at which beam search is run")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-process"))
    ap.add_argument("--save", default=str(ROOT / "benchmarks" / "results" / "process.json"))
    ap.add_argument("--table", metavar="JSON", help="print the markdown table of a saved result and stop")
    args = ap.parse_args()
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return

    from rlaif.reward.arithmetic import check, final_number, problems

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    walls: dict[str, float] = {}
    train = problems(args.train, seed=1, kind=args.kind)
    held = problems(args.heldout, seed=2, kind=args.kind)
    train_file = write_jsonl(work / "train.jsonl", [{"id": p["id"], "prompt": p["prompt"]} for p in train])
    held_file = write_jsonl(work / "heldout.jsonl", [{"id": p["id"], "prompt": p["prompt"]} for p in held])
    sampling = ["--temperature", args.temperature, "--max-tokens", args.max_tokens, "--backend", args.backend, "--dtype", "float32"]

    # -- 2. Monte-Carlo step labels
    steps_run = work / "steps-mc"
    walls["label_steps"] = rlaif("label-steps", "--prompts", train_file, "--samples", args.samples, "--source", "mc",
                                 "--reward-fn", "rlaif.reward.arithmetic:check", "--k", args.k, *sampling,
                                 "--out", steps_run, "--quiet", log=work / "label-steps.log")
    manifest = json.loads((steps_run / "manifest.json").read_text())
    rows = [json.loads(line) for line in (steps_run / "steps.jsonl").read_text().splitlines()]

    # -- 3. the PRM and the outcome RM (same solutions, same trainer, same backbone)
    texts_by_id = {r["id"]: r["text"] for f in sorted((steps_run / "chunks").glob("[0-9]*.jsonl"))
                   for r in map(json.loads, f.read_text().splitlines()) if r.get("text") is not None}
    outcome = [{"prompt": r["prompt"], "prompt_messages": r["prompt_messages"], "completions": [texts_by_id[r["id"]].strip()],
                "labels": [r["labels"][-1]], "step_scores": [float(r["labels"][-1])]} for r in rows]
    orm_data = write_jsonl(work / "outcome.jsonl", outcome)
    common = ["model=default", f"runs_dir={work}", f"epochs={args.epochs}", "lr=2e-5", "batch_size=8", "eval_fraction=0.1",
              "max_length=512", "max_prompt_length=256", "tensorboard=false", "resume=false"]
    walls["train_prm"] = rlaif("train", "prm", f"data={steps_run}", "name=prm", *common, log=work / "train-prm.log")
    walls["train_orm"] = rlaif("train", "prm", f"data={orm_data}", "name=orm", "step_split=marker", "step_pattern=END-OF-SOLUTION-MARKER",
                               *common, log=work / "train-orm.log")

    def eval_metrics(name):
        out = {}
        for line in (work / name / "metrics.jsonl").read_text().splitlines():
            out.update({k: v for k, v in json.loads(line).items() if k.startswith("eval/")})
        return out

    # -- 4. 16 samples per held-out problem, scored by every scorer
    t0 = time.time()
    from rlaif.engine import create_engine
    from rlaif.engine.base import ChatRequest, SamplingConfig
    from rlaif.engine.config import EngineConfig
    from rlaif.models.model_zoo import resolve_model
    from rlaif.reward.prm import ProcessRewardModel
    from rlaif.seeds import derive_seed

    import torch

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    cfg = EngineConfig(backend=args.backend, dtype="float32", max_model_len=1024, **({"kv_cache_gib": 1} if args.backend == "vllm" else {}))
    engine = create_engine(resolve_model("default"), cfg, seed=0, show_progress=False,
                           **({"batch_size": 32} if args.backend == "transformers" else {}))
    convs = [[{"role": "user", "content": p["prompt"]}] for p in held]
    reqs = [ChatRequest(tuple(c), derive_seed(0, p["id"], j, "bench")) for c, p in zip(convs, held) for j in range(16)]
    outs = engine.generate(reqs, SamplingConfig(args.temperature, 1.0, args.max_tokens))
    engine.close()
    walls["sample_heldout"] = time.time() - t0
    texts = [[outs[i * 16 + j].text for j in range(16)] for i in range(len(held))]
    tokens = [[outs[i * 16 + j].completion_tokens for j in range(16)] for i in range(len(held))]
    right = [check([c] * 16, ts) for c, ts in zip(convs, texts)]
    write_jsonl(work / "heldout-samples.jsonl", [{"id": p["id"], "texts": ts, "tokens": t, "right": r}
                                                 for p, ts, t, r in zip(held, texts, tokens, right)])
    t0 = time.time()
    prm = ProcessRewardModel(str(work / "prm" / "final"), batch_size=16, aggregate="min")
    orm = ProcessRewardModel(str(work / "orm" / "final"), batch_size=16, aggregate="last")
    flat_p = [c for c in convs for _ in range(16)]
    flat_t = [t for ts in texts for t in ts]
    prm_steps = prm.step_scores(flat_p, flat_t)
    prm_score = {how: [[0.0] * 16 for _ in held] for how in ("min", "prod", "last")}
    from rlaif.reward.prm import aggregate

    for idx, sc in enumerate(prm_steps):
        for how in prm_score:
            prm_score[how][idx // 16][idx % 16] = aggregate([p for p, _ in sc], how)
    orm_flat = orm(flat_p, flat_t).tolist()
    orm_score = [orm_flat[i * 16 : (i + 1) * 16] for i in range(len(held))]
    walls["score_heldout"] = time.time() - t0

    def pick_best(scores, n):
        return [max(range(n), key=lambda j: (s[j], -j)) for s in scores]

    def majority(n):
        out = []
        for ts in texts:
            answers = [final_number(t) for t in ts[:n]]
            counts = Counter(a for a in answers if a is not None)
            if not counts:
                out.append(0)
                continue
            top = max(counts.values())
            out.append(next(j for j, a in enumerate(answers) if a is not None and counts[a] == top))
        return out

    import random

    rng = random.Random(0)
    table = {}
    for n in (4, 16):
        chosen = {"PRM (min over steps)": pick_best(prm_score["min"], n), "PRM (product)": pick_best(prm_score["prod"], n),
                  "PRM (last step)": pick_best(prm_score["last"], n), "outcome RM": pick_best(orm_score, n),
                  "majority vote": majority(n)}
        for name, picks in chosen.items():
            k = int(sum(right[i][j] for i, j in enumerate(picks)))
            table.setdefault(name, {})[n] = {"correct": k, "n": len(held), "accuracy": k / len(held),
                                              "ci": clopper_pearson(k, len(held)),
                                              "tokens_per_problem": sum(sum(t[:n]) for t in tokens) / len(held)}
        per = [sum(r[:n]) / n for r in right]  # each problem's chance that a random pick is right
        boot = sorted(sum(per[j] for j in (rng.randrange(len(per)) for _ in per)) / len(per) for _ in range(2000))
        table.setdefault("random choice (expected)", {})[n] = {"correct": sum(per), "n": len(held), "accuracy": sum(per) / len(held),
                                                               "ci": (boot[49], boot[1949]),  # percentile bootstrap over problems
                                                               "tokens_per_problem": sum(sum(t[:n]) for t in tokens) / len(held)}
        anyk = sum(any(r[:n]) for r in right)
        table.setdefault(f"any of the N correct (upper bound)", {})[n] = {"correct": anyk, "n": len(held), "accuracy": anyk / len(held),
                                                                         "ci": clopper_pearson(anyk, len(held)),
                                                                         "tokens_per_problem": sum(sum(t[:n]) for t in tokens) / len(held)}

    # -- beam search at the same number of requests per round
    for n, (beam, expand) in ((n, be) for n, be in ((4, (2, 2)), (16, (4, 4))) if str(n) in args.beam_at.split(",")):
        out = work / f"beam-{n}"
        walls[f"beam_{n}"] = rlaif("bon", "--prompts", held_file, "--out", out, "--search", "beam", "--prm", work / "prm" / "final",
                                   "--beam", beam, "--expand", expand, "--max-steps", 6, *sampling, "--quiet", "--overwrite",
                                   log=work / f"beam-{n}.log")
        chunks = [json.loads(line) for f in sorted((out / "chunks").glob("[0-9]*.jsonl")) for line in f.read_text().splitlines()]
        by_id = {c["prompt_id"]: c for c in chunks}
        k, toks = 0, 0
        for p, c in zip(held, convs):
            row = by_id[p["id"]]
            best = max(row["candidates"], key=lambda x: (x["reward"] if x["reward"] is not None else -1, -x["sample"]))
            k += check([c], [best["text"]])[0]
            toks += row["generated_tokens"]
        table.setdefault("beam search (PRM, min)", {})[n] = {"correct": int(k), "n": len(held), "accuracy": k / len(held),
                                                             "ci": clopper_pearson(int(k), len(held)),
                                                             "tokens_per_problem": toks / len(held), "beam": beam, "expand": expand}
    walls["total"] = time.time() - t_all
    one_try = sum(sum(r) for r in right) / (16 * len(held))
    result = {
        "kind": args.kind, "train_problems": args.train, "heldout_problems": args.heldout, "samples": args.samples, "k": args.k,
        "max_tokens": args.max_tokens, "temperature": args.temperature, "epochs": args.epochs,
        "one_try_accuracy_heldout": one_try,
        "labels": {"solutions": manifest["counts"]["solutions"], "steps": manifest["counts"]["steps"],
                   "steps_labelled_correct": manifest["counts"]["steps_correct"],
                   "continuation_tokens": manifest["counts"]["continuation_tokens"],
                   "solutions_correct": sum(r["labels"][-1] for r in rows), "label_wall_s": manifest["timing"]["label_wall_s"]},
        "prm_eval": eval_metrics("prm"), "orm_eval": eval_metrics("orm"), "table": table, "wall_s": walls,
        "per_problem": [{"id": p["id"], "right": r, "tokens": t, "prm_min": pm, "orm": om}
                        for p, r, t, pm, om in zip(held, right, tokens, prm_score["min"], orm_score)],
    }
    Path(args.save).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2))
    for name, cells in table.items():
        print(f"{name:<40}" + "  ".join(f"N={n}: {c['accuracy']:.1%} ({c['tokens_per_problem']:.0f} tok)" for n, c in cells.items()))


if __name__ == "__main__":
    main()
