"""Relabelling after a one-principle edit vs labelling the run afresh, in one run, on one engine.

On the 200 shipped reference pairs (tuning + held-out) with the 20-principle default constitution
and rlaif label's label settings (by default ensemble 4, both orders), on the real default model in the
in-process vLLM engine (started once, its start-up excluded from every number):

  A. label the pairs (the original run; it also warms the engine and its prefix cache),
  B. edit one principle's comparison question and label the pairs afresh (the baseline),
  C. relabel A with the edited constitution (``rlaif relabel``'s code path).

B and C run after A, so both find A's shared prefixes in vLLM's prefix cache. Judging time is
the run's summed chunk time (``timing.label_wall_s``: rendering, key hashing, engine calls),
without writing the outputs. Checked in the same run: C sends exactly the comparisons of the
pairs whose draw holds the edited principle (counted at the engine), every other stored
comparison of A comes back in C byte for byte, and C's labels equal B's (the weights did not
change, so the draws are the same).

    python benchmarks/bench_relabel.py [--principle clear-and-concise] [--limit N] [--ensemble K] [--single-order]
        [--dtype float32]

On a 2-core CPU shared with other jobs the default settings (1,600 comparisons per labelling) take
about an hour; the recorded run uses ``--ensemble 1`` (400 comparisons per labelling, both orders).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Counting:
    """The shared engine, counting score requests; close() leaves it running."""

    def __init__(self, engine):
        self.engine, self.model, self.requests = engine, engine.model, 0

    def score_options(self, requests, options, desc=""):
        self.requests += len(requests)
        return self.engine.score_options(requests, options, desc=desc)

    def generate(self, requests, sampling, desc=""):
        return self.engine.generate(requests, sampling, desc=desc)

    def info(self):
        return self.engine.info()

    def close(self):
        pass


def lines(run: Path) -> list[bytes]:
    return [x for f in sorted((run / "chunks").glob("*.judgements.jsonl")) for x in f.read_bytes().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--principle", default="clear-and-concise", help="the principle whose comparison question is edited")
    ap.add_argument("--limit", type=int, help="use only the first N pairs")
    ap.add_argument("--backend", default="vllm", help="engine backend (vllm: the measurement; fake: a quick check of the script)")
    ap.add_argument("--ensemble", type=int, default=4, help="principles per pair (default 4, rlaif label's)")
    ap.add_argument("--single-order", action="store_true", help="judge each pair in one order only (default: both)")
    ap.add_argument("--dtype", default="auto", help="model dtype (float32: vLLM's CPU kernels; bfloat16 falls back to slow ones on CPUs without it)")
    ap.add_argument("--save", default=str(ROOT / "benchmarks" / "results" / "relabel.json"))
    args = ap.parse_args()

    from rlaif.constitution import load_constitution
    from rlaif.data.prompts import read_pairs
    from rlaif.engine import create_engine
    from rlaif.engine.config import EngineConfig
    from rlaif.models.model_zoo import resolve_model
    from rlaif.pipeline.judge import LabelSettings
    from rlaif.pipeline.judge_records import judge_identity
    from rlaif.pipeline.label import label_run
    from rlaif.pipeline.labelled_runs import read_labelled_run
    from rlaif.pipeline.relabel import relabel_run

    pairs = read_pairs(ROOT / "prompts" / "reference-pairs.jsonl") + read_pairs(ROOT / "prompts" / "reference-pairs-heldout.jsonl")
    pairs = pairs[: args.limit] if args.limit else pairs
    work = Path(tempfile.mkdtemp(prefix="bench-relabel-"))
    for d in ("principles", "constitution"):
        shutil.copytree(ROOT / d, work / d)
    const_path = work / "constitution" / "default.yaml"
    model = resolve_model("default")
    cfg = EngineConfig(backend=args.backend, max_model_len=4096, kv_cache_gib=1, dtype=args.dtype)
    t0 = time.perf_counter()
    engine = Counting(create_engine(model, cfg, show_progress=False))
    startup = time.perf_counter() - t0
    ident = judge_identity(model, cfg.backend, cfg.dtype)
    settings = LabelSettings(ensemble=args.ensemble, both_orders=not args.single_order)
    quiet = lambda m: None  # noqa: E731

    def label(const, out):
        before = engine.requests
        m = label_run(pairs, str(work / out), const, settings, lambda: engine, model, show_progress=False, log=quiet, judge_id=ident)
        return m, engine.requests - before

    const0 = load_constitution(str(const_path))
    a, a_req = label(const0, "A")
    path = work / "principles" / f"{args.principle}.yaml"
    text = path.read_text()
    path.write_text(text.replace("comparison: >-\n", "comparison: >-\n  Judge only what the user asked for.\n", 1))
    const1 = load_constitution(str(const_path))
    assert const1.principle(args.principle).comparison != const0.principle(args.principle).comparison
    b, b_req = label(const1, "B")
    before = engine.requests
    c, _ = relabel_run(read_labelled_run(work / "A"), work / "C", const1, lambda: engine, model, ident, show_progress=False, log=quiet)
    c_req = engine.requests - before

    drew = sum(args.principle in r["per_principle"] for r in map(json.loads, (work / "A" / "labels.jsonl").read_text().splitlines()))
    expected = drew * (2 if settings.both_orders else 1)  # both orders of each pair that drew it
    mark = f'"principle": "{args.principle}"'.encode()
    kept_a = [x for x in lines(work / "A") if mark not in x]
    kept_c = [x for x in lines(work / "C") if mark not in x]
    lab_b = [json.loads(x) for x in (work / "B" / "labels.jsonl").read_text().splitlines()]
    lab_c = [json.loads(x) for x in (work / "C" / "labels.jsonl").read_text().splitlines()]
    max_diff = max(abs(x["p_a"] - y["p_a"]) for x, y in zip(lab_b, lab_c))
    same_side = sum((x["p_a"] > 0.5) == (y["p_a"] > 0.5) for x, y in zip(lab_b, lab_c))
    fresh_s, relabel_s = b["timing"]["label_wall_s"], c["timing"]["label_wall_s"]
    on_cpu = engine.info().get("on_cpu")
    device = "CPU" if on_cpu else "GPU" if on_cpu is not None else "no device"
    result = {
        "pairs": len(pairs), "principles": len(const0.principles), "edited": args.principle, "ensemble": settings.ensemble,
        "both_orders": settings.both_orders,
        "engine_startup_s": round(startup, 1), "device": device, "dtype": cfg.dtype,
        "original": {"requests": a_req, "judging_s": a["timing"]["label_wall_s"]},
        "afresh": {"requests": b_req, "judging_s": fresh_s, "invocation_s": b["timing"]["this_invocation_wall_s"]},
        "relabel": {"requests": c_req, "expected_requests": expected, "judging_s": relabel_s,
                    "invocation_s": c["timing"]["this_invocation_wall_s"]},
        "speedup": round(fresh_s / relabel_s, 2) if relabel_s else None,
        "reused_identical": kept_a == kept_c, "reused": len(kept_c),
        "labels_vs_afresh": {"max_abs_diff_p_a": max_diff, "same_side": same_side},
    }
    ok = c_req == expected and kept_a == kept_c
    from rlaif.pipeline.label_diff import compare_runs, format_comparison

    printout = format_comparison(compare_runs(read_labelled_run(work / "A"), read_labelled_run(work / "C")))
    engine_name = "in-process vLLM" if args.backend == "vllm" else f"the {args.backend} backend"
    table = "\n".join([
        f"{len(pairs)} pairs (prompts/reference-pairs*.jsonl), default constitution ({len(const0.principles)} principles), "
        f"ensemble {settings.ensemble}, {'both orders' if settings.both_orders else 'one order'}; default model, {engine_name} on {result['device']} ({cfg.dtype}); "
        f"engine start-up {startup:.0f} s, excluded. Edited: the comparison question of `{args.principle}`.",
        "",
        "| run | requests sent | judging time | whole invocation |",
        "|---|---|---|---|",
        f"| label afresh with the edit | {b_req} | {fresh_s:.1f} s | {b['timing']['this_invocation_wall_s']:.1f} s |",
        f"| relabel (rlaif relabel) | {c_req} (expected {expected}) | {relabel_s:.2f} s | {c['timing']['this_invocation_wall_s']:.1f} s |",
        "",
        f"judging-time speed-up: **{fresh_s / relabel_s:.1f}x**" if relabel_s else "",
        f"re-sent exactly the expected requests: {c_req == expected}; the {len(kept_c)} reused comparisons byte-identical "
        f"to the original run's: {kept_a == kept_c}",
        f"relabel vs label afresh: same side on {same_side} of {len(pairs)} pairs, max |P(a) difference| {max_diff:.2e}",
        "",
        "What the relabel printed (the comparison with the original run):",
        "",
        "```",
        *printout,
        "```",
    ])
    print(table)
    save = Path(args.save)
    save.parent.mkdir(parents=True, exist_ok=True)
    save.write_text(json.dumps(result, indent=2))
    save.with_suffix(".md").write_text(table + "\n")
    engine.engine.close()
    shutil.rmtree(work, ignore_errors=True)
    if not ok:
        raise SystemExit("relabel check failed")


if __name__ == "__main__":
    main()
