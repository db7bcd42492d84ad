"""The train section: curves of every metric in ``metrics.jsonl`` (``rlaif train`` runs)."""

from __future__ import annotations

from typing import Any

from rlaif.report import numbers, plots
from rlaif.report.folders import RunFolder

CONFIG_KEYS = ("model", "data", "epochs", "max_steps", "batch_size", "grad_accum", "lr", "lr_schedule",
               "loss", "beta", "reference", "soft_labels", "kl_coef", "reward_model", "precision", "seed")


def applies(run: RunFolder) -> bool:
    return run.kind == "train"


def build(run: RunFolder) -> dict[str, Any]:
    cfg = run.train_config
    kind = numbers.trainer_kind(cfg)
    series = numbers.metric_series(run.metrics)
    main, other = numbers.curve_panels(series)
    last = numbers.last_values(series)
    steps = [s for pts in series.values() for s, _ in pts]
    images = []
    if main:
        images.append({"id": "train-curves", "title": "Training curves", "src": plots.curves(main, cols=2)})
    other_img = plots.curves(other, cols=2) if other else None
    finals = []
    for panel in main + other:
        for split in ("train", "eval", ""):
            key = f"{split}/{panel['name']}" if split else panel["name"]
            if key in last:
                finals.append({"metric": key, "step": last[key][0], "value": last[key][1],
                               "first": series[key][0][1], "main": panel in main})
    # the training data's summary, logged once at step 0 (counts are logged as floats)
    data = [(k.removeprefix("data/"), int(v) if v.is_integer() else v) for k, (_, v) in last.items() if k.startswith("data/")]
    final_dir = run.path / "final"
    checkpoints = sorted(p.name for p in (run.path / "checkpoints").glob("step-*")) if (run.path / "checkpoints").is_dir() else []
    summary = [("trainer", kind), ("name", cfg.get("name"))] + [(k, cfg[k]) for k in CONFIG_KEYS if k in cfg and cfg[k] is not None]
    summary += [("last step logged", int(max(steps)) if steps else None),
                ("final model", "final/" if (final_dir / "config.json").is_file() else "not saved yet"),
                ("checkpoints", ", ".join(checkpoints) or "none")]

    def last_of(*names):
        for n in names:
            if n in last:
                return last[n][1]
        return None

    headline = [  # (name, value, format): the rows of the side-by-side table
        ("trainer", kind, "text"),
        ("steps", int(max(steps)) if steps else None, "num"),
        ("last train loss", last_of("train/loss"), "num"),
        ("last eval loss", last_of("eval/loss"), "num"),
        ("last accuracy (eval, else train)", last_of("eval/accuracy", "train/accuracy"), "pct"),
        ("last score (PPO) or margin", last_of("eval/score", "train/score", "eval/margin", "train/margin"), "num"),
        ("last KL", last_of("train/kl"), "num"),
    ]
    return {
        "summary": summary,
        "headline": headline,
        "finals": finals,
        "data": data,
        "images": images,
        "other_img": other_img,
        "other_names": [p["name"] for p in other],
        "series": series,
        "notes": list(run.notes),
    }


def compare(items: list[tuple[RunFolder, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The main training curves of several runs on shared axes (train split, else eval)."""
    if len(items) < 2:
        return []
    per_run = [(run, numbers.curve_panels(ctx["series"])[0]) for run, ctx in items]
    names = []
    for _, panels in per_run:
        for p in panels:
            if p["name"] not in names:
                names.append(p["name"])
    panels = []
    for name in names:
        lines = {}
        for run, ps in per_run:
            for p in ps:
                if p["name"] == name:
                    pts = p["lines"].get("train") or p["lines"].get("") or p["lines"].get("eval")
                    if pts:
                        lines[run.label] = pts
        if len(lines) >= 2:
            panels.append({"name": name, "lines": lines})
    if not panels:
        return []
    return [{"id": "compare-train-curves", "title": "Training curves", "src": plots.curves(panels, cols=3)}]
