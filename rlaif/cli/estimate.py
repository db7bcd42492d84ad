"""``--estimate`` for ``rlaif generate``, ``label`` and ``eval``: the flags, and each command's pilot
(the projection is :mod:`rlaif.pipeline.estimate`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from rlaif.cli.settings_flags import NOT_SETTINGS
from rlaif.pipeline.estimate import DEFAULT_PILOT, Meter, format_estimate, parse_price, pilot_indices, project, with_costs

ESTIMATE_KEYS = ("estimate", "estimate_pilot", "price_per_mtok", "gpu_hour_price")
NOT_RUN_SETTINGS = (*NOT_SETTINGS, *ESTIMATE_KEYS)
"""Flags of ``rlaif generate`` that are not settings of the run (left out of its settings)."""


def add_estimate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--estimate", action="store_true", default=False,
                   help="project the whole run's requests, tokens, wall time (and cost) from a seeded pilot in a temporary "
                        "folder, print one table, and start nothing else")
    p.add_argument("--estimate-pilot", dest="estimate_pilot", type=int, default=DEFAULT_PILOT, metavar="N",
                   help=f"items the pilot runs (default {DEFAULT_PILOT})")
    p.add_argument("--price-per-mtok", dest="price_per_mtok", metavar="IN,OUT",
                   help="with --estimate: price per million prompt and output tokens, to project the cost")
    p.add_argument("--gpu-hour-price", dest="gpu_hour_price", type=float, metavar="P",
                   help="with --estimate: price per hour of the engine's machine, to project the cost of the wall time")


def _options(args) -> tuple[int, Any, Any]:
    from rlaif.cli.errors import UserError

    if args.estimate_pilot < 2:
        raise UserError("--estimate-pilot must be at least 2 (an interval needs two items)")
    if args.gpu_hour_price is not None and args.gpu_hour_price < 0:
        raise UserError("--gpu-hour-price must be >= 0")
    try:
        return args.estimate_pilot, parse_price(args.price_per_mtok), args.gpu_hour_price
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _report(args, meter: Meter, ids: list[str], population: int, command: str, unit: str, manifest: dict[str, Any]) -> int:
    """Print the table; a pilot whose requests failed is no success (its work is missing from the
    projection): one line and exit status 4, unless ``--allow-failures``, as for the run itself."""
    from rlaif.cli.failures import finish

    _, price, gpu = _options(args)
    print(format_estimate(with_costs(project(meter, ids, population), price, gpu), command, unit))
    if any(m["missing"] for m in manifest.get("missing") or []):
        print("rlaif: the pilot's failed requests did no work, so the projection above counts less than the run will need",
              file=sys.stderr)
    return finish(manifest, getattr(args, "allow_failures", 0.0))


def _quiet(_: str) -> None:
    pass


def estimate_generate(args, cfg, const, engine_factory, model_id, feedback_factory, feedback_id) -> int:
    """``rlaif generate --estimate``: the run's settings on a pilot of its prompts."""
    n, _, _ = _options(args)
    meter, ids, population, manifest = generate_pilot(cfg, const, engine_factory, model_id, feedback_factory, feedback_id, n,
                                                      not args.quiet)
    return _report(args, meter, ids, population, "generate", "prompts", manifest)


def generate_pilot(cfg, const, engine_factory, model_id, feedback_factory, feedback_id, n: int,
                   show_progress: bool = False) -> tuple[Meter, list[str], int, dict[str, Any]]:
    """Run generate's pilot of ``n`` prompts in a temporary folder: (its meter, the pilot's prompt ids, the
    run's prompts, the pilot's manifest)."""
    from rlaif.data.prompts import read_prompts
    from rlaif.pipeline.distributed import RayConfig
    from rlaif.pipeline.generate import generate

    prompts = read_prompts(cfg.prompts, limit=cfg.limit)
    pilot = [prompts[i] for i in pilot_indices(len(prompts), n, cfg.seed)]
    meter = Meter()
    with tempfile.TemporaryDirectory(prefix="rlaif-estimate-") as tmp:
        path = Path(tmp) / "pilot.jsonl"
        path.write_text("".join(json.dumps({"id": p.id, "messages": list(p.messages), **_scalars(p.meta)}) + "\n" for p in pilot),
                        encoding="utf-8")
        pcfg = dataclasses.replace(cfg, prompts=str(path), out=str(Path(tmp) / "run"), limit=None, ray=RayConfig())
        manifest = generate(pcfg, const, meter.wrap(engine_factory, "policy"), model_id,
                            feedback_factory=meter.wrap(feedback_factory, "feedback"), log=_quiet, show_progress=show_progress,
                            feedback_id=feedback_id)
    return meter, [p.id for p in pilot], len(prompts), manifest


def estimate_label(args, pairs, const, settings, factory: Callable, model_id: str) -> int:
    """``rlaif label --estimate``: the run's settings on a pilot of its pairs."""
    from rlaif.pipeline.label import label_run

    n, _, _ = _options(args)
    pilot = [pairs[i] for i in pilot_indices(len(pairs), n, settings.seed)]
    meter = Meter()
    with tempfile.TemporaryDirectory(prefix="rlaif-estimate-") as tmp:
        manifest = label_run(pilot, str(Path(tmp) / "run"), const, settings, meter.wrap(factory, "judge"), model_id,
                             chunk_size=args.chunk_size, log=_quiet, show_progress=not args.quiet)
    return _report(args, meter, [p.id for p in pilot], len(pairs), "label", "pairs", manifest)


def estimate_eval(args, prompts, const, s, factories: dict[str, Callable], models: dict[str, str], reward) -> int:
    """``rlaif eval --estimate``: the run's settings on a pilot of its prompts (all sets together)."""
    from rlaif.pipeline.evaluate import run_eval

    n, _, _ = _options(args)
    pilot = [prompts[i] for i in pilot_indices(len(prompts), n, s.seed)]
    meter = Meter()
    metered = {role: meter.wrap(f, role) for role, f in factories.items()}
    with tempfile.TemporaryDirectory(prefix="rlaif-estimate-") as tmp:
        manifest = run_eval(pilot, str(Path(tmp) / "run"), const, s, metered, models, reward, show_progress=not args.quiet, log=_quiet)
    return _report(args, meter, [p.id for p in pilot], len(prompts), "eval", "prompts", manifest)


def _scalars(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) and k not in ("id", "messages", "prompt")}
