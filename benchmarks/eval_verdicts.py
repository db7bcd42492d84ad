"""Sampled verdicts (``--verdict sampled``) against log-prob labels on the shipped reference pairs.

    python benchmarks/eval_verdicts.py [--model default] [--sets tuning heldout] [--save PATH.json]

Every labeller runs on the same in-process vLLM engine (the default model, float32 on CPU), wrapped in
the ``--estimate`` meter so that each row reports the requests and output tokens it spent per pair.
Rows are grouped so that comparisons are at an equal budget: log-probs with the default ensemble of 4
(8 requests and 8 output tokens per pair: one scoring request per principle and order, each counted
as one token) against sampled verdicts with one vote per comparison (the same 8 requests; with the
one-token letter grammar also the same 8 output tokens), and log-probs with an ensemble of 16 (32
requests) against 4 votes per comparison with the default ensemble of 4 (32 requests). The
headline is the length-controlled agreement (the mean of the agreement where the reference's better
answer is the longer one and where it is the shorter one; both strata are shown).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETS = {"tuning": ROOT / "prompts" / "reference-pairs.jsonl", "heldout": ROOT / "prompts" / "reference-pairs-heldout.jsonl"}


def variants():
    from rlaif.pipeline.judge import LabelSettings

    sampled = dict(verdict="sampled", verdict_retries=2)
    return {
        "log-probs, ensemble 4 (default)": LabelSettings(ensemble=4),
        "sampled, letter + grammar, ensemble 4, 1 vote": LabelSettings(ensemble=4, verdict_samples=1, verdict_format="letter", **sampled),
        "sampled, letter + grammar, ensemble 4, 1 vote of 1 token": LabelSettings(ensemble=4, verdict_samples=1, verdict_format="letter",
                                                                                  verdict_max_tokens=1, **sampled),
        "sampled, JSON + grammar, ensemble 4, 1 vote": LabelSettings(ensemble=4, verdict_samples=1, **sampled),
        "sampled, JSON without grammar, ensemble 4, 1 vote": LabelSettings(ensemble=4, verdict_samples=1, verdict_grammar=False, **sampled),
        "log-probs, ensemble 16": LabelSettings(ensemble=16),
        "sampled, letter + grammar, ensemble 4, 4 votes": LabelSettings(ensemble=4, verdict_samples=4, verdict_format="letter", **sampled),
        "sampled, JSON + grammar, ensemble 4, 4 votes": LabelSettings(ensemble=4, verdict_samples=4, **sampled),
    }


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--only", action="append", help="run only variants whose name contains this text")
    ap.add_argument("--save", default=str(ROOT / "benchmarks" / "results" / "verdicts-sampled.json"))
    ap.add_argument("--merge", action="store_true", help="add to the results already saved (a second run of other variants)")
    ap.add_argument("--table-only", action="store_true", help="only write the table again from the saved results")
    args = ap.parse_args()
    if args.table_only:
        results = json.loads(Path(args.save).read_text())
        save(results, args.save, "smollm2-135m-instruct")
        print(table(results, "smollm2-135m-instruct"))
        return

    from rlaif.constitution import load_constitution
    from rlaif.data.prompts import read_pairs
    from rlaif.engine import create_engine
    from rlaif.engine.config import EngineConfig
    from rlaif.models.model_zoo import resolve_model
    from rlaif.pipeline.estimate import Meter, MeteredEngine
    from rlaif.pipeline.judge import label_pairs
    from rlaif.pipeline.label import agreement_report, finalise_labels
    from rlaif.pipeline.verdicts import verdict_report

    const = load_constitution("default")
    model = resolve_model(args.model)
    engine = create_engine(model, EngineConfig(max_model_len=4096, kv_cache_gib=1, dtype="float32"), show_progress=False)
    results: dict[str, dict] = json.loads(Path(args.save).read_text()) if args.merge and Path(args.save).exists() else {}
    for set_name in args.sets:
        pairs = read_pairs(SETS[set_name])
        for name, settings in variants().items():
            if args.only and not any(o in name for o in args.only):
                continue
            meter = Meter()
            t0 = time.perf_counter()
            labels = label_pairs(MeteredEngine(engine, meter), const, pairs, settings)
            seconds = time.perf_counter() - t0
            final, judge = finalise_labels(pairs, labels, settings)
            rep = agreement_report(pairs, final)
            cells = meter.totals.values()
            row = {"set": set_name, "pairs": len(pairs), "seconds": seconds,
                   "requests_per_pair": sum(c["requests"] for c in cells) / len(pairs),
                   "output_tokens_per_pair": sum(c["output_tokens"] for c in cells) / len(pairs),
                   "failed": sum(l.error is not None for l in labels), "verdicts": verdict_report(labels, settings),
                   "agreement": rep, "diagnostics": judge["diagnostics"]}
            results[f"{set_name}: {name}"] = row
            save(results, args.save, model)  # after every labeller: a long run keeps what it measured
            o = rep["overall"]
            print(f"{set_name}: {name}: LC {pct(o['length_controlled_agreement'])} (longer {pct(o['by_length']['longer']['agreement'])}, "
                  f"shorter {pct(o['by_length']['shorter']['agreement'])}), {row['requests_per_pair']:.1f} req/pair, "
                  f"{row['output_tokens_per_pair']:.1f} out tok/pair, {seconds:.0f} s", flush=True)
    engine.close()
    print(table(results, Path(model).name))


def save(results: dict[str, dict], path: str, model: str) -> None:
    out = Path(path)
    out.write_text(json.dumps(results, indent=2, default=str))
    out.with_suffix(".md").write_text(table(results, Path(model).name) + "\n")


def table(results: dict[str, dict], model: str) -> str:
    from rlaif.pipeline.intervals import clopper_pearson

    lines = [f"Sampled verdicts vs log-prob labels on the shipped reference pairs; judge {model} (in-process vLLM, float32, "
             "2-core CPU). Agreement with the reference labels; **LC** = length-controlled (the mean of the two strata).", "",
             "| set | labeller | requests / pair | output tokens / pair | **LC** | better longer | better shorter "
             "| overall [95% Clopper-Pearson] | ties | on pairs not tied | Brier | orders agree | P(first slot) | malformed (pairs failed) "
             "| seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = list(variants())
    rank = lambda key: (list(SETS).index(key.split(": ", 1)[0]), order.index(key.split(": ", 1)[1]) if key.split(": ", 1)[1] in order else 99)  # noqa: E731
    for key, r in sorted(results.items(), key=lambda kv: rank(kv[0])):
        o, d = r["agreement"]["overall"], r["diagnostics"]
        bl = o["by_length"]
        v = r["verdicts"]
        mal = "-" if not v else f"{v['malformed']} ({v['failed_malformed']})"
        pos = d.get("position_bias")
        hits = round(o["agreement"] * o["n"])
        ci = clopper_pearson(hits, o["n"])
        decided = o["n"] - o["ties"]
        lines.append(f"| {r['set']} | {key.split(': ', 1)[1]} | {r['requests_per_pair']:.1f} | {r['output_tokens_per_pair']:.1f} "
                     f"| **{pct(o['length_controlled_agreement'])}** | {pct(bl['longer']['agreement'])} of {bl['longer']['n']} "
                     f"| {pct(bl['shorter']['agreement'])} of {bl['shorter']['n']} | {pct(o['agreement'])} [{pct(ci['lo'])}, {pct(ci['hi'])}] "
                     f"| {o['ties']} | {pct(hits / decided if decided else None)} of {decided} | {o['brier']:.3f} "
                     f"| {pct(d.get('order_consistency'))} | {'n/a' if pos is None else f'{pos:.2f}'} | {mal} | {r['seconds']:.0f} |")
    lines += ["", NOTES]
    return "\n".join(lines)


NOTES = """Equal budgets. At an equal number of requests per pair (8: four principles x two orders), compare the
log-probs row with the one-vote rows. At equal output tokens per pair (8), compare it with the "1 vote of 1
token" row: the letter grammar's answer is the letter and an end-of-sequence token, so capping a vote at one
token keeps the same letters under the same seeds, hence the same labels as the uncapped letter row (the
log-prob mode's scoring request counts as one output token). A JSON verdict costs about 8 tokens.

A tie (P exactly 0.5) counts as a miss, as everywhere in rlaif. With one vote per comparison, the votes of
the two orders and four principles cancel exactly on many pairs: a judge that names the same slot in both
orders (this one names the first slot most of the time) gives P = 2/3 in one order and 1/3 in the other.
That is why the one-vote rows tie on most pairs and their agreement, ties included, is far below the
log-prob labels'; on the pairs they do decide, the column "on pairs not tied" gives their agreement. The
log-prob labels are never exactly 0.5 here, but their length-controlled agreement is near chance too (the
default 135M judge does not judge content; see docs/labelling.md).

Not run (2 shared CPU cores, about 16 minutes per row): the 32-requests comparison (log-probs with an
ensemble of 16 against 4 votes per comparison) and the held-out pair set."""


if __name__ == "__main__":
    main()
