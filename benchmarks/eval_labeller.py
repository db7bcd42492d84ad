"""Agreement of AI labels with the reference pairs, for each labeller setting, in one run.

    python benchmarks/eval_labeller.py [--model default] [--pairs prompts/reference-pairs.jsonl]

Prints a Markdown table (agreement overall and per category, Brier score, how often the
first position wins) and saves it under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", default=str(ROOT / "prompts" / "reference-pairs.jsonl"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--constitution", default="default")
    ap.add_argument("--ensemble", type=int, default=4)
    ap.add_argument("--skip-cot", action="store_true")
    ap.add_argument("--save", default=str(ROOT / "benchmarks" / "results" / "labeller-agreement.json"))
    args = ap.parse_args()

    from rlaif.constitution import load_constitution
    from rlaif.engine.vllm_local import VLLMEngine, VLLMSettings
    from rlaif.label import LabelSettings, label_pairs
    from rlaif.labelling import agreement_report
    from rlaif.model_zoo import resolve_model
    from rlaif.prompts import read_pairs

    pairs = read_pairs(args.pairs)
    const = load_constitution(args.constitution)
    model = resolve_model(args.model)
    engine = VLLMEngine(model, VLLMSettings(max_model_len=4096, kv_cache_gib=1), show_progress=False)
    variants = {
        "one order, 1 principle": LabelSettings(ensemble=1, both_orders=False),
        "both orders, 1 principle": LabelSettings(ensemble=1),
        f"both orders, ensemble of {args.ensemble}": LabelSettings(ensemble=args.ensemble),
        f"both orders, ensemble of {2 * args.ensemble}": LabelSettings(ensemble=2 * args.ensemble),
        f"both orders, ensemble of {args.ensemble}, with few-shot examples": LabelSettings(ensemble=args.ensemble, few_shot=True),
        f"one order, ensemble of {args.ensemble}": LabelSettings(ensemble=args.ensemble, both_orders=False),
    }
    if not args.skip_cot:
        variants[f"both orders, ensemble of {args.ensemble}, CoT (clamped 0.4-0.6)"] = LabelSettings(ensemble=args.ensemble, cot=True)
    rows = {}
    for name, settings in variants.items():
        t0 = time.perf_counter()
        labels = label_pairs(engine, const, pairs, settings)
        rep = agreement_report(pairs, labels)
        rep["seconds"] = time.perf_counter() - t0
        rows[name] = rep
        print(f"{name}: {rep['overall']['agreement']:.1%}", flush=True)
    engine.close()

    cats = sorted(next(iter(rows.values()))["by_category"])
    lines = [
        f"{len(pairs)} reference pairs ({', '.join(cats)}); feedback model: {Path(model).name}; constitution '{args.constitution}'",
        "",
        "| labeller | agreement | " + " | ".join(cats) + " | Brier | first position wins | seconds |",
        "|---|---|" + "---|" * len(cats) + "---|---|---|",
    ]
    for name, rep in rows.items():
        o = rep["overall"]
        per = " | ".join(f"{rep['by_category'][c]['agreement']:.0%}" for c in cats)
        lines.append(f"| {name} | **{o['agreement']:.1%}** | {per} | {o['brier']:.3f} | {rep['position_a_rate_first_order']:.0%} | {rep['seconds']:.0f} |")
    table = "\n".join(lines)
    print(table)
    save = Path(args.save)
    save.parent.mkdir(parents=True, exist_ok=True)
    save.write_text(json.dumps(rows, indent=2))
    save.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
