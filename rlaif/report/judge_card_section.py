"""The judge audit section: ``RUN/judge_card.json`` of ``rlaif constitution audit RUN``, which
ships in the run folder beside the datasets (see :mod:`rlaif.pipeline.audit`)."""

from __future__ import annotations

from typing import Any

from rlaif.report.folders import ReportError, RunFolder

CARD = "judge_card.json"


def _card(run: RunFolder) -> dict[str, Any] | None:
    from rlaif.data import textio

    path = run.path / CARD
    if not path.is_file():
        return None
    try:
        card = textio.read_json(path, ReportError)
    except ReportError as exc:
        run.notes.append(f"{CARD}: {exc}")
        return None
    return card if isinstance(card, dict) and isinstance(card.get("overall"), dict) else None


def applies(run: RunFolder) -> bool:
    return run.kind in ("label", "generate") and _card(run) is not None


def build(run: RunFolder) -> dict[str, Any]:
    card = _card(run) or {}
    probes = card.get("probes") or {}
    rows = []
    for probe, st in (card.get("overall") or {}).items():
        p = probes.get(probe) or {}
        rows.append({"probe": probe, "kind": p.get("kind"), "expected": p.get("expected"), "what": p.get("what"),
                     "n": st.get("n"), "mean": st.get("mean"), "lo": st.get("lo"), "hi": st.get("hi"),
                     "p_mean": st.get("p_mean"), "flagged": bool(st.get("flagged"))})
    per = []
    for pid, by_probe in sorted((card.get("by_principle") or {}).items()):
        cells = [by_probe.get(r["probe"]) or {} for r in rows]
        per.append({"principle": pid, "cells": [{"mean": c.get("mean"), "flagged": bool(c.get("flagged"))} for c in cells]})
    warnings = []
    fp = (card.get("source") or {}).get("fingerprint")
    if fp and run.manifest.get("fingerprint") and fp != run.manifest["fingerprint"]:
        warnings.append("This judge card was made for an earlier run in this folder (its fingerprint differs): "
                        "run rlaif constitution audit again.")
    judge = card.get("judge") or {}
    summary = [("judge", judge.get("answered_by") or judge.get("model")), ("made", card.get("created")),
               ("pairs audited", (card.get("source") or {}).get("pairs")), ("items", (card.get("counts") or {}).get("items")),
               ("requests", (card.get("counts") or {}).get("requests")), ("threshold (log-odds)", card.get("threshold")),
               ("interval level", card.get("level"))]
    flagged = [r for r in rows if r["flagged"]]
    headline = [(f"audit: {r['probe']} shift (log-odds)", r["mean"], "num") for r in rows]
    headline.append(("audit: flagged shifts", len(card.get("flags") or []), "num"))
    return {"summary": [(k, v) for k, v in summary if v is not None], "rows": rows, "per_principle": per,
            "flags": card.get("flags") or [], "flagged": flagged, "warnings": warnings, "headline": headline,
            "unit": card.get("unit"), "pad_sentence": card.get("pad_sentence")}


def compare(items: list[tuple[RunFolder, dict[str, Any]]]) -> list[dict[str, Any]]:
    return []  # the side-by-side table carries each probe's shift
