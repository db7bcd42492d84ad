"""``rlaif calibrate`` and ``rlaif export``: from human ratings to better labels, and the
``rlaif label --principle-reliability`` / ``--calibration`` options. See docs/review.md."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

LABEL_SETTINGS_COMPARED = ("ensemble", "both_orders", "cot", "few_shot", "length_control")


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a labelled run folder (rlaif label or generate --label) that was rated with rlaif review")
    p.add_argument("--reviews", nargs="+", metavar="FILE", help="ratings files (default: RUN/reviews.jsonl)")
    p.add_argument("--out", required=True, help="new run folder: calibrated preferences, calibration.json, principle_reliability.json")
    p.add_argument("--target", choices=["hard", "soft"], default="hard",
                   help="hard (default): the human prefers chosen (Likert >= 5); soft: (likert - 0.5) / 8")
    p.add_argument("--reliability-threshold", type=float, default=0.6, metavar="A",
                   help="flag a principle whose agreement's 95%% interval lies below A (default 0.6)")
    p.add_argument("--flagged-weight", type=float, default=0.0, metavar="W",
                   help="ensemble weight of a flagged principle in principle_reliability.json (default 0: left out)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds files")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder with preferences.jsonl and ratings from rlaif review")
    p.add_argument("--prefer", choices=["human"], default="human", help="whose label wins where both exist (human)")
    p.add_argument("--reviews", nargs="+", metavar="FILE", help="ratings files (default: RUN/reviews.jsonl)")
    p.add_argument("--out", required=True, help="new run folder with the gold labels (same files as a labelled run)")
    p.add_argument("--drop-flags", nargs="*", default=["harmful"], metavar="FLAG",
                   help="drop a pair whose preferred response carries one of these flags (default: harmful; none: keep all)")
    p.add_argument("--rated-only", action="store_true", help="leave out the pairs nobody rated (default: keep their labels)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds files")


def _judge_of(rows: list[dict[str, Any]], manifest: dict[str, Any]) -> tuple[str | None, str | None]:
    """The judge (the model most rows name) and constitution hash of a run's AI labels."""
    judges = Counter(r.get("feedback_model") for r in rows if r.get("label_source") == "ai" and r.get("feedback_model"))
    consts = Counter(r.get("constitution_sha256") for r in rows if r.get("constitution_sha256"))
    settings = manifest.get("settings") if isinstance(manifest.get("settings"), dict) else {}
    judge = judges.most_common(1)[0][0] if judges else settings.get("feedback_model")
    const = consts.most_common(1)[0][0] if consts else settings.get("constitution_sha256")
    return judge, const


def _report(run_dir) -> None:
    """Write RUN/report.html (a report that cannot be built is a warning; RLAIF_REPORT=0: none)."""
    import os

    if os.environ.get("RLAIF_REPORT", "1") == "0":
        return
    from rlaif.report import ReportError, refresh

    try:
        print(f"report: {refresh(run_dir)}")
    except (ReportError, OSError, ValueError) as exc:
        print(f"rlaif: warning: no report ({exc})", file=sys.stderr)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def run_calibrate(args: argparse.Namespace) -> int:
    from rlaif.cli.errors import UserError
    from rlaif.pipeline.calibrate import CalibrationError, calibrated_row, fit_calibration, observations
    from rlaif.pipeline.derived import DerivedError, check_out, derived_manifest, write_derived
    from rlaif.pipeline.ratings import RatingsError, principle_reliability, read_rated_run, reliability_file

    if not 0 < args.reliability_threshold < 1:
        raise UserError(f"--reliability-threshold must be between 0 and 1, not {args.reliability_threshold:g}")
    if not args.flagged_weight >= 0:
        raise UserError(f"--flagged-weight must be >= 0, not {args.flagged_weight:g}")
    try:
        out = check_out(args.out, args.run, args.overwrite)
        rated = read_rated_run(args.run, args.reviews)
        by_id = rated.by_id
        judge, const = _judge_of(rated.rows, rated.manifest)
        settings = rated.manifest.get("settings") or {}
        label_settings = {k: (settings.get("label") or {}).get(k) for k in LABEL_SETTINGS_COMPARED}
        obs = observations(by_id, rated.reviews, args.target)
        cal, _ = fit_calibration(obs, args.target, judge, const, label_settings, source=str(args.run))
        reliability = principle_reliability(by_id, rated.reviews, args.reliability_threshold, args.flagged_weight)
        rows, swaps, swap_p = [], 0, []
        for row in rated.rows:
            new, swapped = calibrated_row(row, cal)
            rows.append(new)
            swaps += swapped
            if swapped:
                swap_p.append(1.0 - new["chosen_prob"])
        counts = {"pairs": len(rows), "labelled": sum("calibrated" in (r.get("flags") or []) for r in rows),
                  "ties": sum("tie" in (r.get("flags") or []) for r in rows), "preference_rows": len(rows), "calibration_swaps": swaps}
        cal_file = {**cal.to_dict(), "swaps": swaps}
        rel_file = reliability_file(reliability, args.reliability_threshold, args.flagged_weight, judge, const, str(args.run))
        manifest = derived_manifest(rated.path, "calibrate", counts, {"calibration": cal_file, "principle_reliability": rel_file})
        write_derived(out, rated.path, rows, manifest, {"calibration.json": cal_file, "principle_reliability.json": rel_file},
                      args.overwrite)
    except (RatingsError, CalibrationError, DerivedError) as exc:
        raise UserError(str(exc)) from None
    a, b, c = cal.coef
    sa, sb, sc = cal.stderr
    cv = cal.cv
    lc = (rated.manifest.get("length_control") or {}).get("applied")
    print(f"ratings: {cal.n} of {len({r.reviewer for r in rated.reviews})} reviewer(s) on {cal.n_pairs} AI-labelled pairs"
          + (" (the labels were length-controlled; the fit is on those)" if lc else ""))
    print(f"calibration (logistic, {args.target} target): P = sigmoid({a:+.3f} {b:+.3f} * logit(chosen_prob)"
          + (f" {c:+.3f} * order_agreement)" if cal.use_order else ")"))
    print(f"  standard errors: a {sa:.3f}, b {sb:.3f}" + (f", c {sc:.3f}" if cal.use_order else ""))
    print(f"cross-validated over {cv['folds']} folds (by pair)   before   after")
    print(f"  Brier score                         {cv['before']['brier']:.3f}    {cv['after']['brier']:.3f}")
    print(f"  log loss                            {cv['before']['log_loss']:.3f}    {cv['after']['log_loss']:.3f}")
    if cv["after"]["brier"] >= cv["before"]["brier"] or cv["after"]["log_loss"] >= cv["before"]["log_loss"]:
        print(f"rlaif: warning: the calibrated probabilities do not beat the judge's own on held-out ratings (Brier "
              f"{cv['after']['brier']:.3f} vs {cv['before']['brier']:.3f}, log loss {cv['after']['log_loss']:.3f} vs "
              f"{cv['before']['log_loss']:.3f}): rate more pairs before you use this calibration", file=sys.stderr)
    print(f"swapped {swaps} of {len(rows)} pairs (calibrated P below 0.5: the humans' likely choice is the other response"
          + (f"; their P {min(swap_p):.2f}" + (f"-{max(swap_p):.2f}" if f"{max(swap_p):.2f}" != f"{min(swap_p):.2f}" else "") + ")"
             if swap_p else ")"))
    print(f"principles (random sample of the pairs; flagged when the 95% interval lies below {_pct(args.reliability_threshold)}):")
    for name, r in reliability.items():
        lo, hi = r["interval"]
        print(f"  {name:<28} {_pct(r['rate']):>6} [{_pct(lo)}, {_pct(hi)}] of {r['n']}"
              + (f"   FLAGGED -> weight {r['weight']:g}" if r["flagged"] else ""))
    if not reliability:
        print("  none: no rated pair of the random sample carries per-principle probabilities")
    print(f"wrote {out}: preferences/, calibration.json (rlaif label --calibration), "
          f"principle_reliability.json (rlaif label --principle-reliability)")
    _report(out)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from rlaif.cli.errors import UserError
    from rlaif.pipeline.derived import DerivedError, check_out, derived_manifest, write_derived
    from rlaif.pipeline.gold import gold_rows
    from rlaif.pipeline.ratings import RatingsError, read_rated_run

    try:
        out = check_out(args.out, args.run, args.overwrite)
        rated = read_rated_run(args.run, args.reviews)
        rows, info = gold_rows(rated, args.drop_flags, args.rated_only)
        c = info["counts"]
        rules = {"combine": "mean of the reviewers' (likert - 0.5) / 8", "drop_flags": list(args.drop_flags),
                 "rated_only": args.rated_only, "reviews": rated.sources}
        manifest = derived_manifest(rated.path, "export", {**c, "labelled": c["human_labels"]}, {"gold": {**info, "rules": rules}})
        write_derived(out, rated.path, rows, manifest, {}, args.overwrite)
    except (RatingsError, DerivedError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(f"human labels: {c['human_labels']} of {c['pairs']} pairs ({c['rated_pairs']} rated; {c['humans_split']} split evenly "
          f"keep their label; {c['dropped']} dropped: chosen response flagged {'/'.join(args.drop_flags) or '-'})")
    print(f"  the humans chose the other response in {c['swapped']}; the label agreed in {c['ai_agreed']} of {c['human_labels']}")
    if args.rated_only:
        print(f"  left out {c['unrated_left_out']} unrated pairs (--rated-only)")
    else:
        print(f"  kept {c['unrated_kept']} unrated pairs with their labels (--rated-only leaves them out)")
    print(f"wrote {out}: {c['preference_rows']} preference rows (preferences/, preferences.jsonl)")
    _report(out)
    return 0


def label_options(args: argparse.Namespace, const, judge: str | None) -> tuple[dict[str, float] | None, Any]:
    """``--principle-reliability`` weights and the ``--calibration`` of ``rlaif label``, checked
    against this judge and constitution before any work (ValueError says why not)."""
    from rlaif.pipeline.calibrate import Calibration
    from rlaif.pipeline.ratings import read_principle_weights

    weights = read_principle_weights(args.principle_reliability) if args.principle_reliability else None
    if weights:
        known = {p.id for p in const.principles}
        unknown = sorted(set(weights) - known)
        if unknown:
            print(f"rlaif: warning: {args.principle_reliability} weighs principles this constitution does not have: "
                  f"{', '.join(unknown)}", file=sys.stderr)
    cal = None
    if args.calibration:
        cal = Calibration.read(args.calibration)
        cal.check(judge, const.sha256)
        before, after = (cal.cv.get("before") or {}), (cal.cv.get("after") or {})
        if after.get("brier") is not None and before.get("brier") is not None and after["brier"] >= before["brier"]:
            print(f"rlaif: warning: {args.calibration} did not beat the judge's own probabilities on held-out ratings "
                  f"(Brier {after['brier']:.3f} vs {before['brier']:.3f})", file=sys.stderr)
        now = {"ensemble": args.ensemble, "both_orders": not args.single_order, "cot": args.cot, "few_shot": args.few_shot,
               "length_control": args.length_control}
        differ = [f"{k} {cal.label_settings[k]!r} -> {now[k]!r}" for k in LABEL_SETTINGS_COMPARED
                  if cal.label_settings.get(k) is not None and cal.label_settings[k] != now[k]]
        if differ:
            print(f"rlaif: warning: {args.calibration} was fitted on labels made with other settings ({'; '.join(differ)}): "
                  "their probabilities may mean something else", file=sys.stderr)
    return weights, cal
