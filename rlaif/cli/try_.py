"""``rlaif try PRINCIPLE_ID``: the principle workbench (flags and body; the work is in
:mod:`rlaif.pipeline.workbench`, the display in :mod:`rlaif.cli.try_view`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from rlaif.cli.engine_flags import add_engine_flags


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("principle", nargs="?", metavar="PRINCIPLE_ID", help="the principle to try (its id, e.g. no-sycophancy)")
    p.add_argument("--prompts", metavar="FILE", help="prompt file (.jsonl, .txt, .parquet or a dataset folder); "
                                                     "default: the shipped prompts of the principle's tags")
    p.add_argument("-n", "--n", type=int, default=8, help="number of prompts (default 8)")
    p.add_argument("--rounds", type=int, default=1, help="critique-and-revision rounds (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of every request (default 0)")
    p.add_argument("--against", metavar="REV", help="also run the principle file as it was at this git revision, "
                                                    "same prompts and seeds, and show before vs after")
    p.add_argument("--constitution", default="default", help="constitution whose system prompt and few-shot block are used (default: default)")
    p.add_argument("--principles-dir", dest="principles_dir", help="principles folder (default: the constitution's)")
    p.add_argument("--model", default="default", help="policy and judge model: 'default', a folder or a hub id")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, help="most new tokens per stage (default: the constitution's settings)")
    p.add_argument("--no-server", dest="no_server", action="store_true",
                   help="load the model in this process instead of the warm engine server")
    p.add_argument("--stop", action="store_true", help="stop the warm engine server and exit")
    p.add_argument("--state-dir", dest="state_dir", help="where the warm engine server keeps its state file and log "
                                                         "(default: ~/.cache/rlaif/warm-engine)")
    p.add_argument("--idle-timeout", dest="idle_timeout", type=float, default=900.0,
                   help="a server started now exits after this many seconds without a request (default 900)")
    add_engine_flags(p)


def _warm_settings(e) -> dict[str, Any]:
    return {"max_model_len": e.max_model_len, "gpu_memory_utilization": e.gpu_memory_utilization,
            "kv_cache_gib": e.kv_cache_gib, "enforce_eager": e.enforce_eager, "dtype": e.dtype,
            "trust_remote_code": e.trust_remote_code, "seed": 0}


class _Progress:
    """An engine wrapper that names each batched call in a status line (on a terminal)."""

    def __init__(self, engine, status) -> None:
        self.engine, self.status, self.model = engine, status, engine.model

    def _say(self, desc: str, n: int) -> None:
        if self.status is not None:
            self.status.update(f"{desc}: {n} request(s) ...")

    def generate(self, requests, sampling, desc: str = ""):
        self._say(desc, len(requests))
        return self.engine.generate(requests, sampling, desc=desc)

    def score_options(self, requests, options, desc: str = ""):
        self._say(desc or "judge", len(requests))
        return self.engine.score_options(requests, options, desc=desc)

    def close(self) -> None:
        self.engine.close()


def _engine(args, engine_cfg, err) -> tuple[Any, str]:
    """(engine, a line saying where it runs); the warm server unless --no-server or a server backend."""
    from rlaif.cli.engines import connect_server, make_engine_factory, model_name
    from rlaif.cli.errors import UserError
    from rlaif.engine.warm import WarmServerError, connect
    from rlaif.models.model_zoo import ModelError, resolve_model

    t0 = time.monotonic()
    if engine_cfg.backend == "openai":
        engine = connect_server(engine_cfg, model_name(args.model), quiet=True)
        return engine, f"engine: the server at {engine_cfg.base_url} ({engine.model})"
    if engine_cfg.backend == "fake":
        model_id = "fake-model" if args.model in (None, "", "default") else args.model
    else:
        try:
            model_id = resolve_model(args.model, log=lambda m: err.print(m))
        except ModelError as exc:
            raise UserError(str(exc)) from None
    if args.no_server:
        engine = make_engine_factory(engine_cfg, model_id, 0, quiet=True)()
        return engine, f"engine: {engine_cfg.backend} in this process, loaded in {time.monotonic() - t0:.1f} s (--no-server)"
    try:
        engine = connect(engine_cfg.backend, model_id, _warm_settings(engine_cfg),
                         state_dir=Path(args.state_dir) if args.state_dir else None, idle_timeout_s=args.idle_timeout,
                         log=lambda m: err.print(m, markup=False, highlight=False))
    except WarmServerError as exc:
        raise UserError(str(exc)) from None
    took = time.monotonic() - t0
    if engine.started:
        how = f"started the warm engine server (pid {engine.pid}) in {took:.1f} s; the next try reuses it"
    else:
        how = f"reused the warm engine server (pid {engine.pid}, up {time.time() - engine.state['started_at']:.0f} s)"
    return engine, f"engine: {how} -- rlaif try --stop stops it"


def run(args: argparse.Namespace, console=None, err=None) -> int:
    from rich.console import Console

    from rlaif.cli.errors import UserError
    from rlaif.cli.engine_flags import engine_config
    from rlaif.settings import SettingsError as ConfigError
    from rlaif.cli.try_view import safe, show
    from rlaif.data.prompts import PromptError, read_prompts
    from rlaif.engine.warm import stop
    from rlaif.pipeline.workbench import run_workbench, sampling_for
    from rlaif.pipeline.workbench_sources import LintFailed, WorkbenchError, current_version, default_prompts, version_at

    console = console or Console(highlight=False)
    err = err or Console(stderr=True, highlight=False)
    if args.stop:
        print(stop(Path(args.state_dir) if args.state_dir else None))
        return 0
    if not args.principle:
        raise UserError("name the principle to try (rlaif try PRINCIPLE_ID), or pass --stop")
    if args.n < 1 or args.rounds < 1:
        raise UserError("-n and --rounds must be >= 1")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UserError("--max-tokens must be >= 1")
    try:
        engine_cfg = engine_config(args)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    t0 = time.monotonic()
    try:
        versions = [current_version(args.principle, args.constitution, args.principles_dir)]
        if args.against:
            versions.insert(0, version_at(versions[0], args.constitution, args.principles_dir, args.against))
        if args.prompts:
            prompts = read_prompts(args.prompts, limit=args.n)
            note = f"{len(prompts)} prompt(s): the first of {args.prompts}"
        else:
            prompts, note = default_prompts(versions[-1].principle, args.n)
            note = f"{len(prompts)} prompt(s): {note}"
    except LintFailed as exc:
        for p in exc.problems:
            print(p)
        print(f"rlaif try: {str(exc).splitlines()[0]}; fix it and try again", file=sys.stderr)
        return 2
    except (WorkbenchError, PromptError) as exc:
        raise UserError(str(exc)) from None
    source = versions[-1].source
    if not os.path.relpath(source).startswith(".."):
        source = os.path.relpath(source)
    header = [safe(f"principle {versions[-1].principle.id} ({source}); {note}; seed {args.seed}, "
                   f"{args.rounds} round(s)", "bold")]
    if len(versions) == 2 and versions[0].text == versions[1].text:
        header.append(safe(f"note: the file is unchanged since {args.against}", "yellow"))
    engine, where = _engine(args, engine_cfg, err)
    header.append(safe(where, "dim"))
    t1 = time.monotonic()
    try:
        with err.status("critique and revision ...") as status:
            result = run_workbench(_Progress(engine, status if err.is_terminal else None), versions, prompts,
                                   seed=args.seed, rounds=args.rounds, sampling=sampling_for(versions, args.max_tokens))
    except RuntimeError as exc:  # a server that went away mid-run: say so, no traceback
        raise UserError(str(exc)) from None
    finally:
        engine.close()
    t2 = time.monotonic()
    footer = [safe(f"{len(prompts)} prompt(s) x {len(versions)} version(s): tried in {t2 - t1:.1f} s "
                   f"(engine ready after {t1 - t0:.1f} s, {t2 - t0:.1f} s in all)", "dim")]
    show(console, result, header, footer)
    return 0
