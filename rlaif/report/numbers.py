"""The report's numbers, as pure functions of a run's rows (no plotting, no files).

Definitions (each is what the report's tables show):

- **Principle usage**: how many critique-and-revision rounds used each principle, next to the
  share the constitution's weights give it (effective weight / sum of weights).
- **A revision changed the answer** when its text (stripped) is not empty and differs from
  the answer it revised (the initial response in round 1, the last non-empty revision after).
  An empty revision keeps the previous answer, as ``rlaif generate`` does.
- **Histogram**: bins ``[e_i, e_{i+1})``, the last one closed, values outside dropped.
- **Per-principle probabilities**: ``label_principle_probs[i]`` is P(chosen is better) under
  ``label_principles[i]``; above 0.5 the principle sided with the row's label, below it
  against, at exactly 0.5 it was undecided.
- **Principle disagreement**: over rows judged by both principles of a pair of principles,
  where both decided (P != 0.5), the share in which they picked different responses.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from itertools import combinations
from typing import Any, Iterable, Mapping, Sequence


def _text(step: Any) -> str | None:
    if isinstance(step, dict):
        t = step.get("text")
        return t if isinstance(t, str) else None
    return None


def principle_usage(trajectories: Iterable[Mapping[str, Any]], weights: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Rows ``{principle, rounds, share, expected}`` sorted by rounds (most used first), then id.

    ``expected`` is the constitution's sampling probability (None without weights); principles
    of the constitution that were never used are listed with 0 rounds.
    """
    counts: Counter[str] = Counter()
    for t in trajectories:
        for r in t.get("rounds") or []:
            pid = r.get("principle_id")
            if isinstance(pid, str):
                counts[pid] += 1
    total_w = sum(float(w) for w in (weights or {}).values())
    total = sum(counts.values())
    ids = set(counts) | set(weights or {})
    rows = [{
        "principle": pid,
        "rounds": counts.get(pid, 0),
        "share": counts.get(pid, 0) / total if total else None,
        "expected": float(weights[pid]) / total_w if weights and pid in weights and total_w > 0 else None,
    } for pid in ids]
    return sorted(rows, key=lambda r: (-r["rounds"], r["principle"]))


def revision_changes(trajectories: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """How often a revision changed the answer, over finished (``status == "ok"``) trajectories.

    Returns ``{"by_round": [{round, n, changed, empty, rate}], "by_principle": {id: {n, changed, rate}},
    "all": {n, changed, rate}, "final_differs": {n, changed, rate}}``; ``final_differs`` counts
    trajectories whose final answer differs from the initial response.
    """
    by_round: dict[int, dict[str, int]] = defaultdict(lambda: {"n": 0, "changed": 0, "empty": 0})
    by_principle: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "changed": 0})
    final = {"n": 0, "changed": 0}
    for t in trajectories:
        if t.get("status") != "ok":
            continue
        initial = _text(t.get("initial"))
        if initial is None:
            continue
        latest = initial.strip()
        for i, r in enumerate(t.get("rounds") or [], start=1):
            rev = (_text(r.get("revision")) or "").strip()
            cell = by_round[i]
            cell["n"] += 1
            p = by_principle[str(r.get("principle_id"))]
            p["n"] += 1
            if not rev:
                cell["empty"] += 1
                continue
            if rev != latest:
                cell["changed"] += 1
                p["changed"] += 1
            latest = rev
        if t.get("rounds"):
            final["n"] += 1
            final["changed"] += latest != initial.strip()
    n_all = sum(c["n"] for c in by_round.values())
    changed_all = sum(c["changed"] for c in by_round.values())
    return {
        "by_round": [{"round": i, **c, "rate": _rate(c["changed"], c["n"])} for i, c in sorted(by_round.items())],
        "by_principle": {k: {**v, "rate": _rate(v["changed"], v["n"])} for k, v in sorted(by_principle.items())},
        "all": {"n": n_all, "changed": changed_all, "rate": _rate(changed_all, n_all)},
        "final_differs": {**final, "rate": _rate(final["changed"], final["n"])},
    }


def _rate(k: float, n: float) -> float | None:
    return k / n if n else None


def stage_tokens(tokens: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the manifest's ``tokens`` table per stage, with output tokens per request and
    the share of requests cut at the token limit."""
    rows = []
    for stage, t in tokens.items():
        if not isinstance(t, Mapping):
            continue
        req = t.get("requests") or 0
        out = t.get("completion_tokens") or 0
        rows.append({
            "stage": stage, "requests": req, "prompt_tokens": t.get("prompt_tokens") or 0, "completion_tokens": out,
            "hit_length_limit": t.get("hit_length_limit") or 0,
            "completion_per_request": _rate(out, req), "hit_limit_rate": _rate(t.get("hit_length_limit") or 0, req),
        })
    return rows


def histogram(values: Iterable[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin ``[edges[i], edges[i+1])``; the last bin also holds ``edges[-1]``."""
    counts = [0] * (len(edges) - 1)
    for v in values:
        if v is None or not math.isfinite(v) or v < edges[0] or v > edges[-1]:
            continue
        if v == edges[-1]:
            counts[-1] += 1
            continue
        for i in range(len(edges) - 1):
            if edges[i] <= v < edges[i + 1]:
                counts[i] += 1
                break
    return counts


def label_rows(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The preference rows that carry an AI label (a numeric ``chosen_prob``)."""
    return [r for r in rows if isinstance(r.get("chosen_prob"), (int, float)) and not isinstance(r.get("chosen_prob"), bool)]


def chosen_prob_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Histogram of ``chosen_prob`` (twenty bins of 0.05 over [0, 1], or ten over [0.5, 1] when
    no value is below 0.5, as for every AI-labelled run) and its mean and quartiles."""
    probs = sorted(float(r["chosen_prob"]) for r in label_rows(rows))
    lo = 0.5 if probs and probs[0] >= 0.5 else 0.0
    n_bins = 10 if lo == 0.5 else 20
    edges = [round(lo + i * (1 - lo) / n_bins, 10) for i in range(n_bins + 1)]
    return {
        "n": len(probs), "edges": edges, "counts": histogram(probs, edges),
        "mean": sum(probs) / len(probs) if probs else None,
        "quartiles": [_quantile(probs, q) for q in (0.25, 0.5, 0.75)] if probs else None,
        "ties": sum(1 for r in rows if "tie" in (r.get("flags") or [])),
    }


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default, "linear")."""
    pos = q * (len(sorted_values) - 1)
    i = int(math.floor(pos))
    j = min(i + 1, len(sorted_values) - 1)
    return sorted_values[i] + (sorted_values[j] - sorted_values[i]) * (pos - i)


def order_agreement(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``order_agreement`` is the share of a row's principles whose two orders named the same
    winner. Returns its distribution ``{value: rows}``, its mean, and the share of rows whose
    orders agreed under every principle (== 1)."""
    vals = [float(r["order_agreement"]) for r in rows if isinstance(r.get("order_agreement"), (int, float))]
    dist = Counter(round(v, 4) for v in vals)
    return {
        "n": len(vals),
        "distribution": dict(sorted(dist.items())),
        "mean": sum(vals) / len(vals) if vals else None,
        "all_agreed": _rate(sum(1 for v in vals if v == 1.0), len(vals)),
    }


def _principle_probs(row: Mapping[str, Any]) -> list[tuple[str, float]]:
    names, probs = row.get("label_principles"), row.get("label_principle_probs")
    if not isinstance(names, list) or not isinstance(probs, list) or len(names) != len(probs):
        return []
    return [(str(n), float(p)) for n, p in zip(names, probs) if isinstance(p, (int, float)) and not isinstance(p, bool)]


def per_principle(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per principle of the label ensembles: ``{principle, n, mean, with_label, against,
    undecided, with_rate, values}`` (``with_rate`` over decided comparisons), most used first."""
    values: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        for name, p in _principle_probs(r):
            values[name].append(p)
    out = []
    for name, vs in values.items():
        with_, against = sum(p > 0.5 for p in vs), sum(p < 0.5 for p in vs)
        out.append({
            "principle": name, "n": len(vs), "mean": sum(vs) / len(vs), "with_label": with_, "against": against,
            "undecided": len(vs) - with_ - against, "with_rate": _rate(with_, with_ + against), "values": vs,
        })
    return sorted(out, key=lambda r: (-r["n"], r["principle"]))


def principle_disagreement(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """For every two principles that judged the same rows: ``n`` (rows where both decided)
    and ``disagree`` (rows where they picked different responses). Returns
    ``{"principles": [...], "pairs": [{a, b, n, disagree, rate}]}`` with pairs sorted by rate
    (highest first), then n."""
    cells: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    seen: set[str] = set()
    for r in rows:
        probs = [(n, p) for n, p in _principle_probs(r)]
        seen.update(n for n, _ in probs)
        decided = {}
        for n, p in probs:
            if p != 0.5:
                decided[n] = p > 0.5
        for a, b in combinations(sorted(decided), 2):
            c = cells[(a, b)]
            c[0] += 1
            c[1] += decided[a] != decided[b]
    pairs = [{"a": a, "b": b, "n": n, "disagree": d, "rate": d / n} for (a, b), (n, d) in cells.items()]
    pairs.sort(key=lambda x: (-x["rate"], -x["n"], x["a"], x["b"]))
    return {"principles": sorted(seen), "pairs": pairs}


def length_chars(trajectories: Iterable[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Characters of the initial response and of the final answer of finished trajectories."""
    initial, final = [], []
    for t in trajectories:
        if t.get("status") != "ok" or _text(t.get("initial")) is None:
            continue
        initial.append(len(_text(t["initial"]).strip()))
        f = t.get("final") if isinstance(t.get("final"), str) else _text(t["initial"])
        final.append(len(f.strip()))
    return {"initial": initial, "final": final}


# ------------------------------------------------------------------ training

TRAINER_KEYS = {  # first match wins: the online trainers share PPO's and DPO's keys, so they come first
    "grpo": ("kl_coef", "cliprange", "judge_pairs", "baseline"),
    "online-dpo": ("loss", "beta", "judge", "pairs"),
    "ppo": ("kl_coef", "cliprange", "rollout_batch_size"),
    "dpo": ("loss", "beta", "reference"),
    "rm": ("use_margin", "center_rewards_coef"),
    "prm": ("step_separator", "step_split"),
}


def trainer_kind(config: Mapping[str, Any]) -> str:
    """``grpo``, ``online-dpo``, ``ppo``, ``dpo``, ``rm``, ``prm`` or ``sft``, from the keys only that trainer's config has."""
    for kind, keys in TRAINER_KEYS.items():
        if all(k in config for k in keys):
            return kind
    return "sft"


def metric_series(records: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """``{key: [(step, value), ...]}`` for every numeric key of ``metrics.jsonl`` records (steps
    in file order; a resumed run rewrote the file, so each step appears once per key)."""
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for rec in records:
        step = rec.get("step")
        if not isinstance(step, (int, float)):
            continue
        for k, v in rec.items():
            if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            out[k].append((float(step), float(v)))
    return dict(out)


# Panels of the training curves, in order: (title, test on the metric's name without train/ or eval/).
CURVE_GROUPS: tuple[tuple[str, Any], ...] = (
    ("loss", lambda b: "loss" in b or b == "nll"),
    ("accuracy", lambda b: "accuracy" in b),
    ("reward", lambda b: b.startswith(("reward", "score")) or b in ("margin", "non_score_reward", "returns")),
    ("KL", lambda b: "kl" in b.split("/")[-1]),
    ("learning rate", lambda b: b == "lr" or b.endswith("/lr")),
)


def curve_panels(series: Mapping[str, Sequence[tuple[float, float]]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training metrics grouped into panels, one per metric name (train/X and eval/X share a
    panel): the main ones (loss, accuracy, reward, KL, learning rate; in that order) and the
    others (grad norm, lengths, throughput, timings...). Keys logged once (``data/...`` at step
    0) and ``epoch`` are left out. Each panel: ``{name, group, lines: {"train"|"eval"|"": points}}``."""
    bases: dict[str, dict[str, Sequence[tuple[float, float]]]] = defaultdict(dict)
    for key, pts in series.items():
        if key == "epoch" or key.startswith("data/") or len(pts) < 1:
            continue
        split, _, base = key.partition("/")
        if split in ("train", "eval") and base:
            bases[base][split] = pts
        else:
            bases[key][""] = pts
    main, other = [], []
    for base in sorted(bases):
        group = next((g for g, test in CURVE_GROUPS if test(base)), None)
        panel = {"name": base, "group": group, "lines": bases[base]}
        (main if group else other).append(panel)
    order = [g for g, _ in CURVE_GROUPS]
    main.sort(key=lambda p: (order.index(p["group"]), p["name"]))
    return main, other


def last_values(series: Mapping[str, Sequence[tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    """``{key: (step, value)}`` of each key's last record."""
    return {k: pts[-1] for k, pts in series.items() if pts}
