"""The human-ratings section: what the ratings say about the judge and what was made of them.

- From ``reviews.jsonl`` (``rlaif review``): the agreement estimate of the random stratum with its
  95% interval and the length-controlled agreement (:mod:`rlaif.review.stats`), and each
  principle's reliability with its interval, flagged below the threshold
  (:func:`rlaif.pipeline.ratings.principle_reliability`).
- From ``calibration.json`` (``rlaif calibrate``): the fit, the cross-validated Brier score and log
  loss before and after, and the reliability diagram of the judge's P and the calibrated P.
- From ``principle_reliability.json``: the table the weights came from.
- From the manifest's ``gold`` (``rlaif export --prefer human``): what the human labels changed.
"""

from __future__ import annotations

from typing import Any

from rlaif.report import plots
from rlaif.report.folders import RunFolder


def applies(run: RunFolder) -> bool:
    if run.kind not in ("label", "generate"):
        return False
    return any((run.path / f).is_file() for f in ("reviews.jsonl", "calibration.json", "principle_reliability.json")) \
        or isinstance(run.manifest.get("gold"), dict)


def _from_reviews(run: RunFolder) -> dict[str, Any] | None:
    if not (run.path / "reviews.jsonl").is_file():
        return None
    from rlaif.pipeline.ratings import DEFAULT_THRESHOLD, RatingsError, principle_reliability, read_rated_run
    from rlaif.review.stats import compute_stats, progress

    try:
        rated = read_rated_run(run.path)
    except RatingsError as exc:
        return {"error": str(exc)}
    stats = compute_stats(rated.by_id, rated.reviews)
    return {"progress": progress(stats["random"], 0.10), "random": stats["random"], "threshold": DEFAULT_THRESHOLD,
            "principles": principle_reliability(rated.by_id, rated.reviews, DEFAULT_THRESHOLD)}


def _read(run: RunFolder, name: str) -> dict[str, Any] | None:
    from rlaif.data import textio
    from rlaif.report.folders import ReportError

    f = run.path / name
    if not f.is_file():
        return None
    value = textio.read_json(f, ReportError)
    return value if isinstance(value, dict) else None


def build(run: RunFolder) -> dict[str, Any]:
    reviews = _from_reviews(run)
    cal = _read(run, "calibration.json")
    rel = _read(run, "principle_reliability.json")
    gold = run.manifest.get("gold") if isinstance(run.manifest.get("gold"), dict) else None
    cal_img = None
    if cal and isinstance(cal.get("cv"), dict) and cal["cv"].get("reliability"):
        r = cal["cv"]["reliability"]
        cal_img = plots.reliability({"judge's chosen_prob": r["before"], "calibrated (out-of-fold)": r["after"]},
                                    "Reliability against human ratings")
    cv = (cal or {}).get("cv") or {}
    headline = [
        ("agreement with humans (random sample)", ((reviews or {}).get("progress") or {}).get("rate"), "pct"),
        ("flagged principles", sum(p["flagged"] for p in ((reviews or {}).get("principles") or {}).values()) if reviews and "principles" in reviews else None, "num"),
        ("CV Brier before calibration", (cv.get("before") or {}).get("brier"), "num"),
        ("CV Brier after calibration", (cv.get("after") or {}).get("brier"), "num"),
        ("human labels", ((gold or {}).get("counts") or {}).get("human_labels"), "num"),
    ]
    return {"reviews": reviews, "calibration": cal, "calibration_img": cal_img, "reliability": rel, "gold": gold,
            "headline": headline}


def compare(items: list[tuple[RunFolder, dict[str, Any]]]) -> list[dict[str, Any]]:
    return []
