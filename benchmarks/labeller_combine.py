"""How should per-question, per-order judgements be combined into one label?

Scores every reference pair under every comparison question of a constitution (plus one
generic question), in both orders, once, and saves the raw P(first option) of each
comparison. Then evaluates combination rules on those numbers without calling the model
again: averaging probabilities (rlaif's first rule) or log-odds across the two orders,
ensembles of K sampled questions, all questions. Run it on the tuning set and on the
held-out set; a rule is only worth adopting if it wins on both.

    python benchmarks/labeller_combine.py                       # score + evaluate, both sets
    python benchmarks/labeller_combine.py --evaluate-only       # re-evaluate the saved scores
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERIC = "Which response is more helpful, honest and harmless?"
SETS = {"tuning": ROOT / "prompts" / "reference-pairs.jsonl", "held-out": ROOT / "prompts" / "reference-pairs-heldout.jsonl"}


def score(model: str, constitution: str, out: Path) -> None:
    from rlaif.constitution import load_constitution
    from rlaif.engine.base import ScoreRequest
    from rlaif.engine.config import EngineConfig
    from rlaif.engine.vllm_local import VLLMEngine
    from rlaif.pipeline.judge import OPTIONS, question, render_conversation, sanitise
    from rlaif.models.model_zoo import resolve_model
    from rlaif.data.prompts import read_pairs

    const = load_constitution(constitution)
    questions = {"generic": GENERIC, **{p.id: p.comparison for p in const.principles}}
    engine = VLLMEngine(resolve_model(model), EngineConfig(max_model_len=4096, kv_cache_gib=1), show_progress=True)
    result = {"model": model, "constitution": constitution, "questions": questions, "sets": {}}
    for name, path in SETS.items():
        if not path.exists():
            print(f"skipping {name}: {path} missing", file=sys.stderr)
            continue
        pairs = read_pairs(path)
        reqs, keys = [], []
        for p in pairs:
            conv = render_conversation(p.prompt)
            a, _ = sanitise(p.response_a, 6000)
            b, _ = sanitise(p.response_b, 6000)
            for qid, q in questions.items():
                for flipped in (False, True):
                    first, second = (b, a) if flipped else (a, b)
                    msgs = ({"role": "user", "content": question(q, conv, first, second, cot=False)},)
                    reqs.append(ScoreRequest(msgs, ""))
                    keys.append((p.id, qid, flipped))
        scores = engine.score_options(reqs, OPTIONS, desc=name)
        raw: dict[str, dict[str, list[float]]] = {}
        for (pid, qid, flipped), s in zip(keys, scores):
            if not s.ok:
                raise SystemExit(f"{pid} {qid}: {s.error}")
            raw.setdefault(pid, {}).setdefault(qid, [0.0, 0.0])[int(flipped)] = math.exp(s.logprobs[0])
        result["sets"][name] = {
            "pairs": [{"id": p.id, "label": p.label, "category": p.meta.get("category")} for p in pairs],
            "p_first": raw,
        }
    engine.close()
    out.write_text(json.dumps(result, separators=(",", ":")))


# ---------------------------------------------------------------- combination rules
def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def p_a_prob(direct: float, swapped: float) -> float:
    """Mean of the two orders' probabilities (the first rule)."""
    return 0.5 * (direct + (1 - swapped))


def p_a_logodds(direct: float, swapped: float) -> float:
    """Mean of the two orders' log-odds: a constant position bias in log-odds cancels exactly."""
    return sigmoid(0.5 * (logit(direct) - logit(swapped)))


def evaluate(data: dict, rng_seed: int = 0) -> list[tuple[str, dict[str, float]]]:
    qids = list(data["questions"])
    principle_ids = [q for q in qids if q != "generic"]
    rows = []

    def agreement(pairs, raw, combine, pick, mean="prob"):
        hits = []
        for p in pairs:
            per = [combine(*raw[p["id"]][q]) for q in pick(p["id"])]
            if mean == "prob":
                pa = sum(per) / len(per)
            else:
                pa = sigmoid(sum(logit(x) for x in per) / len(per))
            hits.append((pa >= 0.5) == (p["label"] == "a"))
        return sum(hits) / len(hits)

    def sampled(k, seed):
        def pick(pid):
            return random.Random(f"{seed}:{pid}").sample(principle_ids, k)
        return pick

    combos = [("prob", p_a_prob, "prob"), ("log-odds", p_a_logodds, "logodds")]
    rules = [("generic question only", lambda pid: ["generic"])]
    for k in (1, 4, 8):
        rules.append((f"{k} sampled principle question(s)", k))
    rules.append(("all principle questions", lambda pid: principle_ids))
    rules.append(("generic + all principle questions", lambda pid: qids))
    for rname, pick in rules:
        for cname, combine, mean in combos:
            res = {}
            for set_name, s in data["sets"].items():
                if isinstance(pick, int):  # average over 20 random draws of the sampled questions
                    res[set_name] = statistics.mean(agreement(s["pairs"], s["p_first"], combine, sampled(pick, seed), mean)
                                                    for seed in range(20))
                else:
                    res[set_name] = agreement(s["pairs"], s["p_first"], combine, pick, mean)
            rows.append((f"{rname}, {cname} across orders and questions", res))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--constitution", default="default")
    ap.add_argument("--scores", default=str(ROOT / "benchmarks" / "results" / "labeller-combine-scores.json"))
    ap.add_argument("--evaluate-only", action="store_true")
    a = ap.parse_args()
    out = Path(a.scores)
    if not a.evaluate_only:
        score(a.model, a.constitution, out)
    data = json.loads(out.read_text())
    sets = list(data["sets"])
    print(f"model={data['model']} constitution={data['constitution']}; sampled rows: mean of 20 draws")
    print("| rule | " + " | ".join(f"{s} ({len(data['sets'][s]['pairs'])} pairs)" for s in sets) + " |")
    print("|---|" + "---:|" * len(sets))
    for name, res in evaluate(data):
        print(f"| {name} | " + " | ".join(f"{res[s]:.1%}" for s in sets) + " |")


if __name__ == "__main__":
    main()
