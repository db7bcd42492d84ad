"""``rlaif relabel RUN --constitution EDITED --out NEW`` and ``rlaif diff RUN_A RUN_B`` (flags and
body; the work is in :mod:`rlaif.pipeline.relabel` and :mod:`rlaif.pipeline.label_diff`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rlaif.cli.engine_flags import add_engine_flags
from rlaif.cli.errors import UserError
from rlaif.cli.failures import EXIT_STATUS, add_allow_failures, finish
from rlaif.cli.ray_flags import add_ray_flags

FLIP_STATUS = "6 more pairs flipped than --max-flip-rate allows."


def _add_report_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-flip-rate", dest="max_flip_rate", type=float, metavar="RATE",
                   help="exit with status 6 when more than this share of the pairs flipped (e.g. 0.05)")
    p.add_argument("--examples", type=int, default=3, help="flipped pairs to show (default 3)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")


def add_relabel_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a labelled run folder (rlaif label, rlaif generate --label or an earlier relabel)")
    p.add_argument("--constitution", required=True, help="the edited constitution: name or YAML path")
    p.add_argument("--principles-dir", dest="principles_dir", help="principles folder (default: the constitution's)")
    p.add_argument("--out", required=True, help="folder of the relabelled run (a labelled run like rlaif label's)")
    p.add_argument("--resample", action="store_true",
                   help="draw every pair's principles afresh from the edited constitution (needed for new principles to judge)")
    p.add_argument("--feedback-model", dest="feedback_model", help="judge model (default: the run's)")
    _add_report_flags(p)
    add_engine_flags(p)
    add_ray_flags(p)
    add_allow_failures(p)
    p.add_argument("--overwrite", action="store_true", help="delete an output folder made with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.epilog = f"{EXIT_STATUS} {FLIP_STATUS[:-1]} (outputs written)."


def add_diff_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", metavar="RUN_A", help="a labelled run folder")
    p.add_argument("run_b", metavar="RUN_B", help="a labelled run folder of the same pairs")
    _add_report_flags(p)
    p.epilog = f"exit status: 0 done; 2 bad input (not labelled runs of the same pairs); {FLIP_STATUS}"


def _read(path: str):
    from rlaif.pipeline.labelled_runs import RunReadError, read_labelled_run

    try:
        return read_labelled_run(path)
    except RunReadError as exc:
        raise UserError(str(exc)) from None


def _engine_defaults(args: argparse.Namespace, src) -> None:
    """Engine flags not given take the run's judge: its backend and dtype, and a server's address."""
    ident = src.identity or {}
    if getattr(args, "engine.backend") is None and ident.get("backend"):
        setattr(args, "engine.backend", ident["backend"])
    if getattr(args, "engine.dtype") is None and ident.get("dtype") and ident.get("backend") == getattr(args, "engine.backend"):
        setattr(args, "engine.dtype", ident["dtype"])
    if getattr(args, "engine.backend") == "openai" and getattr(args, "engine.base_url") is None:
        setattr(args, "engine.base_url", (src.manifest.get("engine") or {}).get("base_url"))


def _report(cmp: dict[str, Any], args: argparse.Namespace, extra: list[str] = (), as_json: dict[str, Any] | None = None) -> int:
    from rlaif.pipeline.label_diff import MAX_FLIP_EXIT, format_comparison

    if args.json:
        print(json.dumps(cmp if as_json is None else as_json, indent=2))
    else:
        print("\n".join([*extra, *format_comparison(cmp)]))
    rate = cmp["labels"]["flip_rate"]
    if args.max_flip_rate is not None and rate > args.max_flip_rate:
        print(f"rlaif: {rate:.1%} of the pairs flipped, more than --max-flip-rate {args.max_flip_rate:g}", file=sys.stderr)
        return MAX_FLIP_EXIT
    return 0


def run_diff(args: argparse.Namespace) -> int:
    from rlaif.pipeline.label_diff import DiffError, compare_runs

    try:
        cmp = compare_runs(_read(args.run_a), _read(args.run_b), examples=args.examples)
    except DiffError as exc:
        raise UserError(str(exc)) from None
    return _report(cmp, args)


def plan_lines(plan) -> list[str]:
    lines = []
    if plan.removed:
        lines.append(f"removed principles {', '.join(plan.removed)}: their comparisons are dropped ({sum(plan.dropped.values())})"
                     + (f"; {plan.redrawn} pairs had no principle left and drew afresh" if plan.redrawn else ""))
    if plan.resampled:
        lines.append(f"--resample: {plan.draws_changed} of {len(plan.draws)} pairs changed their principle draw")
    else:
        if plan.added:
            lines.append(f"new principles {', '.join(plan.added)}: not drawn (the run's draws are kept; --resample draws afresh)")
        if plan.reweighted:
            lines.append(f"new weights for {', '.join(plan.reweighted)}: the run's draws are kept (--resample draws afresh)")
    return lines


def run_relabel(args: argparse.Namespace) -> int:
    from rlaif.cli.engine_flags import engine_config
    from rlaif.cli.engines import connect_server, make_engine_factory
    from rlaif.cli.ray_flags import ray_config, tensor_parallel
    from rlaif.constitution import ConstitutionError, load_constitution
    from rlaif.data.runs import RunFolderError, atomic_write_text
    from rlaif.models.model_zoo import ModelError, resolve_model
    from rlaif.pipeline.distributed import DistributedError
    from rlaif.pipeline.judge_records import judge_identity
    from rlaif.pipeline.label_diff import compare_runs
    from rlaif.pipeline.labelled_runs import RunReadError
    from rlaif.pipeline.relabel import relabel_run
    from rlaif.settings import SettingsError

    src = _read(args.run)
    _engine_defaults(args, src)
    judge = None
    try:
        e = engine_config(args)
        ray = ray_config(args)
        const = load_constitution(args.constitution, args.principles_dir)
        seed = src.label_settings.seed
        default_model = (src.identity or {}).get("model") or src.feedback_model
        if e.backend == "openai":
            judge = connect_server(e, e.feedback_served_model or args.feedback_model or e.served_model or default_model, args.quiet,
                                   base_url=e.feedback_base_url)
            model_id = judge.model
            factory = (lambda: judge) if not ray.address else make_engine_factory(e, model_id, seed, True, base_url=e.feedback_base_url)
        else:
            spec = args.feedback_model or default_model
            model_id = spec if e.backend == "fake" else resolve_model(spec, log=lambda m: print(m, file=sys.stderr))
            factory = make_engine_factory(e, model_id, seed, args.quiet or bool(ray.address), tensor_parallel=tensor_parallel(ray))
        ident = judge_identity(model_id, e.backend, e.dtype)
        if src.identity and src.identity != ident:
            changed = ", ".join(f"{k} {src.identity.get(k)!r} -> {v!r}" for k, v in ident.items() if src.identity.get(k) != v)
            print(f"rlaif: note: the judge is not the run's ({changed}): no judgement can be reused", file=sys.stderr)
        try:
            manifest, plan = relabel_run(src, args.out, const, factory, model_id, ident, resample=args.resample,
                                         overwrite=args.overwrite, show_progress=not args.quiet, ray=ray,
                                         log=(lambda m: print(m, file=sys.stderr)) if args.json else print,  # stdout: the JSON only
                                         in_process_model=e.backend in ("vllm", "transformers"))
        finally:
            if judge is not None:
                judge.close()
        new = _read(args.out)
        cmp = compare_runs(src, new, examples=args.examples)
        summary = {"plan": plan.to_dict(), "comparison": cmp}
        atomic_write_text(Path(args.out) / "relabel.json", json.dumps(summary, indent=2))
    except (ConstitutionError, ModelError, RunFolderError, RunReadError, DistributedError, SettingsError, ValueError) as exc:
        raise UserError(str(exc)) from None
    code = _report(cmp, args, plan_lines(plan), summary)
    # pairs whose comparisons failed: exit 4 unless --allow-failures (a rerun sends only what failed)
    return finish(manifest, args.allow_failures) or code
