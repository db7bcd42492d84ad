"""Agreement of AI labels with the reference pairs, for each labeller setting, in one run.

    python benchmarks/eval_labeller.py [--model default] [--pairs prompts/reference-pairs.jsonl]
                                       [--only "both orders"] [--save PATH.json]

Prints a Markdown table and saves it (and the full reports as JSON) under benchmarks/results/.
The headline is the length-controlled agreement: agreement where the reference's better
answer is the longer one, where it is the shorter one, and their mean (a judge that follows
length alone scores 50% on it whatever the set's mix). Next to it, the judge diagnostics of
every labelled run (order consistency, mean P(first slot), correlation of the label's
log-odds with the length difference, share of decided pairs whose longer response won).
Variants that differ only in ``--length-control`` reuse the same scores.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def variants(k: int, cot: bool) -> dict[str, object]:
    from rlaif.pipeline.judge import LabelSettings

    v = {
        "one order, 1 principle": LabelSettings(ensemble=1, both_orders=False),
        "both orders, 1 principle": LabelSettings(ensemble=1),
        f"one order, ensemble of {k}": LabelSettings(ensemble=k, both_orders=False),
        f"one order, ensemble of {k}, length control": LabelSettings(ensemble=k, both_orders=False, length_control=True),
        f"both orders, ensemble of {k} (default)": LabelSettings(ensemble=k),
        f"both orders, ensemble of {k}, length control": LabelSettings(ensemble=k, length_control=True),
        f"both orders, ensemble of {2 * k}": LabelSettings(ensemble=2 * k),
        f"both orders, ensemble of {k}, with few-shot examples": LabelSettings(ensemble=k, few_shot=True),
    }
    if cot:
        v[f"both orders, ensemble of {k}, CoT (clamped 0.4-0.6)"] = LabelSettings(ensemble=k, cot=True)
    return v


def pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def table(rows: dict[str, dict], header: str) -> str:
    """One line per labeller: the length-controlled agreement first, then its strata, plain
    agreement, Brier score and the judge diagnostics."""
    lines = [
        header, "",
        "| labeller | **length-controlled** | better longer | better shorter | overall | Brier "
        "| orders agree | P(first slot) | r(log-odds, length) | longer chosen | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rep in rows.items():
        o, d, bl = rep["overall"], rep["diagnostics"], rep["overall"]["by_length"]
        lc = rep.get("length_control") or {}
        r = d["length_correlation"] if not lc.get("applied") else lc["after"]["length_correlation"]
        longer = d["longer_chosen_rate"] if not lc.get("applied") else lc["after"]["longer_chosen_rate"]
        pos = d["position_bias"]
        lines.append(
            f"| {name} | **{pct(o['length_controlled_agreement'])}** | {pct(bl['longer']['agreement'])} of {bl['longer']['n']} "
            f"| {pct(bl['shorter']['agreement'])} of {bl['shorter']['n']} | {pct(o['agreement'])} | {o['brier']:.3f} "
            f"| {pct(d['order_consistency'])} | {'n/a' if pos is None else f'{pos:.2f}'} "
            f"| {'n/a' if r is None else f'{r:+.2f}'} | {pct(longer)} | {rep['seconds']:.0f} |")
    lines += ["", "With length control, r and longer chosen are those of the corrected labels; the other diagnostics describe the judge."]
    return "\n".join(lines)


def category_table(rows: dict[str, dict]) -> str:
    cats = sorted(next(iter(rows.values()))["by_category"])
    lines = ["| labeller | " + " | ".join(f"{c} (LC)" for c in cats) + " |", "|---|" + "---|" * len(cats)]
    for name, rep in rows.items():
        cells = []
        for c in cats:
            s = rep["by_category"][c]
            cells.append(f"{pct(s.get('agreement'))} ({pct(s.get('length_controlled_agreement'))})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", default=str(ROOT / "prompts" / "reference-pairs.jsonl"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--constitution", default="default")
    ap.add_argument("--ensemble", type=int, default=4)
    ap.add_argument("--skip-cot", action="store_true")
    ap.add_argument("--only", action="append", help="run only variants whose name contains this text (repeatable)")
    ap.add_argument("--save", default=str(ROOT / "benchmarks" / "results" / "labeller-agreement.json"))
    args = ap.parse_args()

    from rlaif.constitution import load_constitution
    from rlaif.engine.config import EngineConfig
    from rlaif.engine.vllm_local import VLLMEngine
    from rlaif.pipeline.judge import label_pairs
    from rlaif.pipeline.label import FINALISE_ONLY, agreement_report, finalise_labels
    from rlaif.models.model_zoo import resolve_model
    from rlaif.data.prompts import read_pairs

    pairs = read_pairs(args.pairs)
    const = load_constitution(args.constitution)
    model = resolve_model(args.model)
    chosen = {n: s for n, s in variants(args.ensemble, not args.skip_cot).items()
              if not args.only or any(o in n for o in args.only)}
    engine = VLLMEngine(model, EngineConfig(max_model_len=4096, kv_cache_gib=1), show_progress=False)
    scored: dict[str, tuple[list, float]] = {}  # judge labels by the settings that shape scoring
    rows = {}
    for name, settings in chosen.items():
        key = json.dumps({k: v for k, v in asdict(settings).items() if k not in FINALISE_ONLY}, sort_keys=True, default=str)
        if key not in scored:
            t0 = time.perf_counter()
            scored[key] = (label_pairs(engine, const, pairs, replace(settings, length_control=False)), time.perf_counter() - t0)
        judge_labels, seconds = scored[key]
        labels, judge = finalise_labels(pairs, judge_labels, settings)
        rep = agreement_report(pairs, labels)
        rep.update(judge, seconds=seconds)
        rows[name] = rep
        print(f"{name}: length-controlled {pct(rep['overall']['length_controlled_agreement'])}, "
              f"overall {pct(rep['overall']['agreement'])}", flush=True)
    engine.close()

    header = (f"{len(pairs)} reference pairs ({Path(args.pairs).name}); feedback model: {Path(model).name}; "
              f"constitution '{args.constitution}'")
    text = table(rows, header) + "\n\nPer category: agreement (length-controlled agreement)\n\n" + category_table(rows)
    print(text)
    save = Path(args.save)
    save.parent.mkdir(parents=True, exist_ok=True)
    save.write_text(json.dumps(rows, indent=2))
    save.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
