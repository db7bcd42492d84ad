"""The generate section: what critique-and-revision did (``rlaif generate`` run folders)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rlaif.report import numbers, plots
from rlaif.report.folders import RunFolder

MAX_EXAMPLES = 3
MAX_TEXT = 4000  # characters of one model text shown in an example


def applies(run: RunFolder) -> bool:
    return run.kind == "generate"


def _clip(text: Any) -> dict[str, Any]:
    """Model text for the page (escaped by the template): cut at MAX_TEXT characters."""
    text = text if isinstance(text, str) else ""
    return {"text": text[:MAX_TEXT], "cut": max(0, len(text) - MAX_TEXT)}


def _prompt_text(prompt: Any) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        return [{"role": "user", **_clip(prompt)}]
    out = []
    for m in prompt or []:
        if isinstance(m, dict):
            out.append({"role": str(m.get("role", "?")), **_clip(m.get("content"))})
    return out


def examples(trajectories: list[dict[str, Any]], k: int = MAX_EXAMPLES) -> list[dict[str, Any]]:
    """Up to ``k`` finished trajectories with at least one round, one per prompt category
    first (in run order), so that the examples show different kinds of prompts."""
    ok = [t for t in trajectories if t.get("status") == "ok" and isinstance(t.get("initial"), dict) and t.get("rounds")]
    picked, cats = [], set()
    for t in ok:
        cat = (t.get("meta") or {}).get("category")
        if cat not in cats:
            cats.add(cat)
            picked.append(t)
        if len(picked) == k:
            break
    for t in ok:
        if len(picked) == k:
            break
        if t not in picked:
            picked.append(t)
    out = []
    for t in picked:
        latest = (t["initial"].get("text") or "").strip()
        rounds = []
        for r in t["rounds"]:
            rev = ((r.get("revision") or {}).get("text") or "").strip()
            rounds.append({
                "principle": r.get("principle_id"),
                "critique_request": _clip((r.get("critique") or {}).get("request")),
                "critique": _clip((r.get("critique") or {}).get("text")),
                "revision": _clip((r.get("revision") or {}).get("text")),
                "changed": bool(rev) and rev != latest,
            })
            latest = rev or latest
        out.append({
            "id": t.get("id"), "category": (t.get("meta") or {}).get("category"),
            "prompt": _prompt_text(t.get("prompt")), "initial": _clip(t["initial"].get("text")), "rounds": rounds,
        })
    return out


def build(run: RunFolder) -> dict[str, Any]:
    m = run.manifest
    counts = m.get("counts") or {}
    settings = m.get("settings") or {}
    const = m.get("constitution") or {}
    trajs = run.trajectories
    weights = const.get("principles") if isinstance(const.get("principles"), dict) else None

    usage = numbers.principle_usage(trajs, weights)
    changes = numbers.revision_changes(trajs)
    for row in usage:
        ch = changes["by_principle"].get(row["principle"])
        row["changed_rate"] = ch["rate"] if ch else None
    used = [r for r in usage if r["rounds"] or r["expected"]]
    images = []
    if used:
        series = {"used": [r["share"] for r in used]}
        if any(r["expected"] is not None for r in used):
            series["constitution's weights"] = [r["expected"] for r in used]
        images.append({"id": "principle-usage", "title": "Principle usage",
                       "src": plots.bars([r["principle"] for r in used], series, "Share of critique-revision rounds per principle",
                                         "share of rounds", percent=True, horizontal=True)})

    tokens = numbers.stage_tokens(m.get("tokens") or {})
    if tokens:
        images.append({"id": "stage-tokens", "title": "Tokens per stage",
                       "src": plots.bars([t["stage"] for t in tokens],
                                         {"prompt tokens": [t["prompt_tokens"] for t in tokens],
                                          "output tokens": [t["completion_tokens"] for t in tokens]},
                                         "Tokens per stage", "tokens")})
    lengths = numbers.length_chars(trajs)
    if lengths["initial"] and changes["all"]["n"]:
        lo, hi = min(lengths["initial"] + lengths["final"]), max(lengths["initial"] + lengths["final"])
        step = max(1, -(-(hi - lo + 1) // 20))
        edges = [lo + i * step for i in range(21)]
        images.append({"id": "answer-length", "title": "Answer length",
                       "src": plots.histograms(edges, {"initial response": numbers.histogram(lengths["initial"], edges),
                                                       "final answer": numbers.histogram(lengths["final"], edges)},
                                               "Length of the initial response and of the final answer", "characters")})
    chunk_s = [s.get("wall_s") for s in run.chunk_stats if isinstance(s.get("wall_s"), (int, float))]
    failures = Counter(str(f.get("failure") or "unknown")[:120] for f in run.failed)

    summary = [
        ("constitution", f"{const.get('name', '?')} ({str(const.get('sha256', ''))[:12]})"),
        ("model", (m.get("model") or {}).get("resolved") or (m.get("model") or {}).get("spec") or "?"),
        ("engine", (m.get("engine") or {}).get("backend", "?")),
        ("prompts", counts.get("prompts")),
        ("rounds", settings.get("rounds")),
        ("samples per prompt", settings.get("samples_per_prompt")),
        ("trajectories", counts.get("trajectories")),
        ("finished", counts.get("ok")),
        ("failed", counts.get("failed")),
        ("SFT rows", counts.get("sft_rows")),
        ("preference rows", counts.get("preference_rows")),
        ("created", m.get("created")),
    ]
    rev = changes["all"]
    headline = [  # (name, value, format): the rows of the side-by-side table
        ("trajectories", counts.get("trajectories"), "num"),
        ("failed", counts.get("failed"), "num"),
        ("revisions that changed the answer", rev["rate"], "pct"),
        ("final answer differs from initial", changes["final_differs"]["rate"], "pct"),
        ("output tokens", sum(t["completion_tokens"] for t in tokens) if tokens else None, "num"),
        ("generation time (s)", (m.get("timing") or {}).get("generation_wall_s"), "num"),
    ]
    return {
        "summary": summary,
        "headline": headline,
        "usage": usage,
        "changes": changes,
        "tokens": tokens,
        "timing": [(k, v) for k, v in (m.get("timing") or {}).items()],
        "chunks": {"n": len(chunk_s), "total": sum(chunk_s), "mean": sum(chunk_s) / len(chunk_s) if chunk_s else None,
                   "max": max(chunk_s) if chunk_s else None},
        "failures": failures.most_common(5),
        "n_failed": len(run.failed),
        "examples": examples(trajs),
        "images": images,
        "usage_share": {r["principle"]: r["share"] for r in usage},
    }


def compare(items: list[tuple[RunFolder, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Principle usage of several generate runs side by side (share of each run's rounds)."""
    if len(items) < 2:
        return []
    names = sorted({p for _, ctx in items for p, s in ctx["usage_share"].items() if s})
    if not names:
        return []
    series = {run.label: [ctx["usage_share"].get(p) for p in names] for run, ctx in items}
    return [{"id": "compare-principle-usage", "title": "Principle usage",
             "src": plots.bars(names, series, "Share of critique-revision rounds per principle", "share of rounds",
                               percent=True, horizontal=True)}]
