"""Labels per second: option log-probabilities vs. generating a free-text verdict and parsing it.

Same engine, same pairs, same prompts (one principle per pair, both orders), in one run.
The free-text path asks the model to answer with (A) or (B) and parses the first verdict it
writes; a reply with no parseable verdict is counted and treated as a tie.

    python benchmarks/bench_label.py [--pairs prompts/reference-pairs.jsonl] [--limit 68]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

VERDICT = re.compile(r"^\s*\(?([AB])\b|\b(?:answer|response|option)\s*(?:is\s*)?:?\s*\(?([AB])\b", re.I)


def parse_verdict(text: str) -> str | None:
    m = VERDICT.search(text)
    if not m:
        return None
    return (m.group(1) or m.group(2)).upper()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", default=str(ROOT / "prompts" / "reference-pairs.jsonl"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--model", default="default")
    ap.add_argument("--max-tokens", type=int, default=48, help="verdict length for the free-text path")
    ap.add_argument("--save", default=str(ROOT / "benchmarks" / "results" / "label.json"))
    args = ap.parse_args()

    from rlaif.constitution import load_constitution
    from rlaif.engine.base import ChatRequest, SamplingConfig
    from rlaif.engine.config import EngineConfig
    from rlaif.engine.vllm_local import VLLMEngine
    from rlaif.pipeline.judge import LabelSettings, label_pairs, question, render_conversation, sample_label_principles, sanitise
    from rlaif.models.model_zoo import resolve_model
    from rlaif.data.prompts import read_pairs

    pairs = read_pairs(args.pairs, limit=args.limit)
    const = load_constitution("default")
    engine = VLLMEngine(resolve_model(args.model), EngineConfig(max_model_len=4096, kv_cache_gib=1), show_progress=False)
    settings = LabelSettings(ensemble=1, few_shot=False)

    # warm-up so neither path pays first-call costs
    label_pairs(engine, const, pairs[:2], settings)

    t0 = time.perf_counter()
    labels = label_pairs(engine, const, pairs, settings)
    logprob_s = time.perf_counter() - t0

    reqs, meta = [], []
    for pair in pairs:
        principle = sample_label_principles(const, pair.id, 1, settings.seed)[0]
        a, _ = sanitise(pair.response_a, settings.max_response_chars)
        b, _ = sanitise(pair.response_b, settings.max_response_chars)
        conv = render_conversation(pair.prompt)
        for flipped in (False, True):
            first, second = (b, a) if flipped else (a, b)
            user = question(principle.comparison, conv, first, second, cot=False)
            reqs.append(ChatRequest(({"role": "user", "content": user},), seed=0))
            meta.append(flipped)
    t0 = time.perf_counter()
    outs = engine.generate(reqs, SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=args.max_tokens))
    text_s = time.perf_counter() - t0
    engine.close()

    unparsed = 0
    text_hits = 0
    for k, pair in enumerate(pairs):
        votes = []
        for out, flipped in zip(outs[2 * k : 2 * k + 2], meta[2 * k : 2 * k + 2]):
            v = parse_verdict(out.text)
            if v is None:
                unparsed += 1
                votes.append(0.5)
            else:
                says_first = v == "A"
                votes.append(float(says_first != flipped))  # 1.0 = response_a better
        p_a = sum(votes) / 2
        text_hits += (p_a > 0.5 and pair.label == "a") or (p_a < 0.5 and pair.label == "b")
    lp_hits = sum((l.p_a > 0.5 and p.label == "a") or (l.p_a < 0.5 and p.label == "b") for p, l in zip(pairs, labels))

    n = len(pairs)
    result = {
        "pairs": n,
        "logprob": {"seconds": logprob_s, "pairs_per_s": n / logprob_s, "agreement": lp_hits / n},
        "free_text": {"seconds": text_s, "pairs_per_s": n / text_s, "agreement": text_hits / n,
                      "unparseable_share": unparsed / len(outs), "max_tokens": args.max_tokens},
        "speedup": text_s / logprob_s,
    }
    table = "\n".join([
        f"{n} pairs, one principle per pair, both orders (2 comparisons per pair), default model on {engine.info().get('on_cpu') and 'CPU' or 'GPU'}",
        "",
        "| path | seconds | pairs/s | agreement with reference | unparseable verdicts |",
        "|---|---|---|---|---|",
        f"| option log-probs | {logprob_s:.1f} | {n / logprob_s:.2f} | {lp_hits / n:.1%} | 0 (no text to parse) |",
        f"| free-text verdict (max {args.max_tokens} tokens) | {text_s:.1f} | {n / text_s:.2f} | {text_hits / n:.1%} | {unparsed / len(outs):.1%} |",
        "",
        f"speed-up of the log-prob path: {text_s / logprob_s:.1f}x",
    ])
    print(table)
    save = Path(args.save)
    save.parent.mkdir(parents=True, exist_ok=True)
    save.write_text(json.dumps(result, indent=2))
    save.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
