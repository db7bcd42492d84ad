"""The label section: what the AI judge said and how far to trust it (``rlaif label`` runs,
and ``rlaif generate --label`` runs, whose preference rows carry AI labels)."""

from __future__ import annotations

from typing import Any

from rlaif.report import numbers, plots
from rlaif.report.folders import RunFolder

MAX_DISAGREEMENT_ROWS = 12

DIAGNOSTICS = (
    # field, name, what it means, what a judge that reads content gives, format
    ("order_consistency", "order consistency", "share of comparisons whose two orders name the same winner",
     "high (0%: the slot decides)", "pct"),
    ("position_bias", "position bias", "mean P(first slot) over every comparison", "0.5", "num"),
    ("length_correlation", "length correlation", "Pearson r of the label's log-odds with log((1 + chars a) / (1 + chars b))",
     "near 0 where quality does not follow length", "num"),
    ("longer_chosen_rate", "longer chosen", "share of decided pairs whose longer response won", "near 50% on such pairs", "pct"),
    ("tie_rate", "ties", "share of judged pairs that are ties", "low", "pct"),
)


def applies(run: RunFolder) -> bool:
    if run.kind == "label":
        return True
    return run.kind == "generate" and bool(numbers.label_rows(run.preferences))


def human_reviews(run: RunFolder) -> dict[str, Any] | None:
    """Agreement of the AI labels with the run's human ratings (``reviews.jsonl`` of
    ``rlaif review``), computed by :mod:`rlaif.review.stats`; None without ratings."""
    path = run.path / "reviews.jsonl"
    if not path.is_file():
        return None
    from rlaif.review.data import ReviewError, ReviewStore, load_pairs
    from rlaif.review.stats import compute_stats

    warnings: list[str] = []
    try:
        pairs = load_pairs(run.path, log=warnings.append)
    except ReviewError as exc:
        return {"error": str(exc)}
    by_id = {p.id: p for p in pairs}
    store = ReviewStore(path, by_id, log=warnings.append)
    stats = compute_stats(by_id, store.reviews())
    stats["warnings"] = warnings[:20]
    stats["skipped"] = store.skipped
    if stats["calibration"]["n"]:
        stats["calibration_img"] = plots.calibration(stats["calibration"]["bins"], "Calibration against human ratings")
    return stats


def reference_agreement(agreement: Any) -> dict[str, Any] | None:
    """The manifest's ``agreement`` (``rlaif label`` with reference labels) with every field
    the template reads, None where a field is missing (a run written by an older version)."""
    if not isinstance(agreement, dict) or not isinstance(agreement.get("overall"), dict):
        return None

    def cell(d: Any) -> dict[str, Any] | None:
        return {"n": d.get("n"), "agreement": d.get("agreement")} if isinstance(d, dict) and d.get("n") else None

    o = agreement["overall"]
    cats = agreement.get("by_category") if isinstance(agreement.get("by_category"), dict) else {}
    return {
        "n": o.get("n"), "agreement": o.get("agreement"), "first_order": o.get("first_order_agreement"),
        "brier": o.get("brier"), "length_controlled": agreement.get("length_controlled_agreement"),
        "orders_agreed": cell(agreement.get("orders_agreed")), "orders_disagreed": cell(agreement.get("orders_disagreed")),
        "by_category": {k: c for k, c in ((k, cell(v)) for k, v in sorted(cats.items())) if c},
    }


def build(run: RunFolder) -> dict[str, Any]:
    from rlaif.pipeline.diagnostics import length_control_estimate, run_warnings

    m = run.manifest
    rows = numbers.label_rows(run.preferences)
    counts = m.get("counts") or {}
    settings = m.get("settings") or {}
    label_settings = settings.get("label") if isinstance(settings.get("label"), dict) else {}
    diag = m.get("diagnostics") or {}
    lc = m.get("length_control") or None

    cp = numbers.chosen_prob_summary(rows)
    oa = numbers.order_agreement(rows)
    pp = numbers.per_principle(rows)
    dis = numbers.principle_disagreement(rows)
    images = []
    if cp["n"]:
        images.append({"id": "chosen-prob", "title": "chosen_prob",
                       "src": plots.histograms(cp["edges"], {"pairs": cp["counts"]}, "AI label confidence (chosen_prob)",
                                               "P(chosen response is better)")})
    if oa["n"]:
        labels = [f"{v:.0%}" for v in oa["distribution"]]
        images.append({"id": "order-agreement", "title": "Order agreement",
                       "src": plots.bars(labels, {"pairs": list(oa["distribution"].values())},
                                         "Share of a pair's principles whose two orders agreed", "pairs")})
    if pp:
        images.append({"id": "per-principle", "title": "Per-principle probabilities",
                       "src": plots.boxplot([r["principle"] for r in pp], [r["values"] for r in pp],
                                            "P(chosen is better) under each principle", "P(chosen is better)")})
    matrix_img = None
    if len(dis["principles"]) >= 2 and dis["pairs"]:
        names = dis["principles"]
        idx = {n: i for i, n in enumerate(names)}
        mat = [[None] * len(names) for _ in names]
        cnt = [[0] * len(names) for _ in names]
        for p in dis["pairs"]:
            i, j = idx[p["a"]], idx[p["b"]]
            mat[i][j] = mat[j][i] = p["rate"]
            cnt[i][j] = cnt[j][i] = p["n"]
        matrix_img = plots.heatmap(names, mat, cnt, "How often two principles picked different responses")
        images.append({"id": "principle-disagreement", "title": "Principle disagreement", "src": matrix_img})

    # The table lists the pairs of principles that disagree most; with a few rows judged by
    # both, a rate is noise, so pairs seen on fewer than 3 rows are left out where others exist.
    min_n = 3 if any(p["n"] >= 3 for p in dis["pairs"]) else 1
    top = [p for p in dis["pairs"] if p["n"] >= min_n][:MAX_DISAGREEMENT_ROWS]

    pairs_n = counts.get("pairs", counts.get("label_pairs"))
    ties = counts.get("ties", counts.get("label_ties"))
    summary = [
        ("feedback model", (m.get("engine") or {}).get("model") if run.kind == "label" else label_settings.get("feedback_model") or "the policy model"),
        ("pairs", pairs_n),
        ("labelled", counts.get("labelled")),
        ("failed", counts.get("failed") if run.kind == "label" else counts.get("label_failed")),
        ("ties", ties),
        ("identical", counts.get("identical")),
        ("preference rows with a label", len(rows)),
        ("ensemble", label_settings.get("ensemble")),
        ("both orders", label_settings.get("both_orders")),
        ("chain of thought", label_settings.get("cot")),
        ("length control", None if lc is None else (f"applied: {length_control_estimate(lc)} log-odds per log length ratio removed"
                                                    if lc.get("applied") else f"not applied: {lc.get('reason')}")),
    ]
    if run.kind == "generate":
        summary.insert(1, ("pairs compared", label_settings.get("pairs")))
        if counts.get("label_revision_preferred") is not None and pairs_n:
            summary.append(("revision preferred", f"{counts['label_revision_preferred']} of {pairs_n}"))
    diagnostics = [
        {"name": name, "meaning": meaning, "ideal": ideal, "value": diag.get(field), "fmt": fmt,
         "n": diag.get("longer_chosen_n") if field == "longer_chosen_rate" else None}
        for field, name, meaning, ideal, fmt in DIAGNOSTICS if field in diag
    ]
    reference = reference_agreement(m.get("agreement"))
    human = human_reviews(run)
    headline = [  # (name, value, format): the rows of the side-by-side table
        ("labelled pairs", len(rows), "num"),
        ("mean chosen_prob", cp["mean"], "num"),
        ("pairs whose orders all agreed", oa["all_agreed"], "pct"),
        ("order consistency", diag.get("order_consistency"), "pct"),
        ("position bias", diag.get("position_bias"), "num"),
        ("length correlation", diag.get("length_correlation"), "num"),
        ("agreement with reference labels", (reference or {}).get("agreement"), "pct"),
        ("agreement with human reviews", ((human or {}).get("agreement") or {}).get("overall", {}).get("rate"), "pct"),
    ]
    return {
        "summary": [(k, v) for k, v in summary if v is not None],
        "headline": headline,
        "warnings": run_warnings(m) if diag else [],
        "diagnostics": diagnostics,
        "chosen_prob": cp,
        "order_agreement": oa,
        "per_principle": pp,
        "disagreement": top,
        "disagreement_min_n": min_n,
        "disagreement_total": len(dis["pairs"]),
        "reference": reference,
        "human": human,
        "images": images,
    }


def compare(items: list[tuple[RunFolder, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The chosen_prob histograms of several labelled runs over one set of bins (shares)."""
    items = [(run, ctx) for run, ctx in items if ctx["chosen_prob"]["n"]]
    if len(items) < 2:
        return []
    lo = min(ctx["chosen_prob"]["edges"][0] for _, ctx in items)
    n_bins = 10 if lo == 0.5 else 20
    edges = [round(lo + i * (1 - lo) / n_bins, 10) for i in range(n_bins + 1)]
    counts = {run.label: numbers.histogram([float(r["chosen_prob"]) for r in numbers.label_rows(run.preferences)], edges)
              for run, _ in items}
    return [{"id": "compare-chosen-prob", "title": "chosen_prob",
             "src": plots.histograms(edges, counts, "AI label confidence (chosen_prob), share of each run's pairs",
                                     "P(chosen response is better)")}]
