"""One function per command of the command line. Heavy imports stay inside the functions."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rlaif.cli.engines import connect_server, make_engine_factory, model_name
from rlaif.cli.errors import UserError


def cmd_lint(args: argparse.Namespace) -> int:
    from rlaif.constitution import lint

    problems = lint(args.paths or None)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 2
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from rlaif.models.model_zoo import ModelError, prepare_default_model

    try:
        path = prepare_default_model(force=getattr(args, "force", False),
                                     log=(lambda m: print(m, file=sys.stderr)) if args.model_command == "path" else print)
    except ModelError as exc:
        raise UserError(str(exc)) from None
    print(path)
    return 0


def cmd_constitution(args: argparse.Namespace) -> int:
    from rlaif.constitution import ConstitutionError, load_constitution

    if args.constitution_command in ("test", "audit"):
        from rlaif.cli.constitution import run

        return run(args)
    if args.constitution_command == "import":
        from rlaif.constitution.hf_import import ImportErrorHF, import_hf_constitution

        try:
            written = import_hf_constitution(args.file, args.out, name=args.name, force=args.force)
        except ImportErrorHF as exc:
            raise UserError(str(exc)) from None
        for path in written:
            print(path)
        print(f"wrote {len(written)} files; check them with: rlaif lint {args.out}", file=sys.stderr)
        return 0
    try:
        const = load_constitution(args.name)
    except ConstitutionError as exc:
        raise UserError(str(exc)) from None
    total = sum(const.weights)
    print(f"{const.name}: {const.description}")
    print(f"sha256 {const.sha256}")
    print(f"{len(const.demonstrations)} demonstrations, {len(const.comparison_examples)} comparison examples")
    print(f"{'principle':<28}{'p(sample)':>10}  tags")
    for p, w in sorted(zip(const.principles, const.weights), key=lambda x: -x[1]):
        print(f"{p.id:<28}{w / total:>10.3f}  {', '.join(p.tags)}")
    return 0


def _same_model(a: str, b: str) -> bool:
    import os

    return a == b or (os.path.isdir(a) and os.path.isdir(b) and os.path.realpath(a) == os.path.realpath(b))


def _same_server(a: str, b: str) -> bool:
    from rlaif.engine.server_pool import parse_base_urls

    return set(parse_base_urls(a)) == set(parse_base_urls(b))


def _engine_config(args: argparse.Namespace):
    from rlaif.cli.engine_flags import engine_config
    from rlaif.settings import SettingsError as ConfigError

    try:
        return engine_config(args)
    except ConfigError as exc:
        raise UserError(str(exc)) from None


def cmd_label(args: argparse.Namespace) -> int:
    from rlaif.constitution import ConstitutionError, load_constitution
    from rlaif.pipeline.judge import LabelSettings
    from rlaif.pipeline.label import format_report, label_run
    from rlaif.pipeline.judge_records import judge_identity
    from rlaif.models.model_zoo import ModelError, resolve_model
    from rlaif.data.prompts import PromptError, read_pairs
    from rlaif.data.runs import RunFolderError
    from rlaif.cli.ray_flags import ray_config, tensor_parallel
    from rlaif.pipeline.distributed import DistributedError
    from rlaif.cli.verdict_flags import verdict_settings
    from rlaif.cli.estimate import estimate_label
    from rlaif.cli.ratings import label_options

    engine_cfg = _engine_config(args)
    try:
        ray = ray_config(args)
        on_ray = bool(ray.address)  # replicas start their own engines, quietly
        const = load_constitution(args.constitution, args.principles_dir)
        settings = LabelSettings(
            ensemble=args.ensemble, both_orders=not args.single_order, cot=args.cot, cot_clamp=tuple(args.cot_clamp),
            tie_band=args.tie_band, keep_ties=args.keep_ties, few_shot=args.few_shot, seed=args.seed,
            length_control=args.length_control, **verdict_settings(args),
        )
        pairs = read_pairs(args.pairs, limit=args.limit)
        judge = None
        if engine_cfg.backend == "openai":
            # The judge's name on its server: --feedback-served-model, else --feedback-model,
            # else --served-model, else the server's first model.
            name = engine_cfg.feedback_served_model or args.feedback_model or engine_cfg.served_model
            judge = connect_server(engine_cfg, name, args.quiet, base_url=engine_cfg.feedback_base_url)
            model_id = judge.model
            factory = lambda: judge  # noqa: E731
            if on_ray:
                factory = make_engine_factory(engine_cfg, model_id, args.seed, True, base_url=engine_cfg.feedback_base_url)
        else:
            spec = args.feedback_model or "default"
            model_id = spec if engine_cfg.backend == "fake" else resolve_model(spec, log=lambda m: print(m, file=sys.stderr))
            factory = make_engine_factory(engine_cfg, model_id, args.seed, args.quiet or on_ray, tensor_parallel=tensor_parallel(ray))
        try:
            weights, calibration = label_options(args, const, model_id)
            if args.estimate:
                return estimate_label(args, pairs, const, settings, factory, model_id)
            manifest = label_run(
                pairs, args.out, const, settings, factory, model_id,
                chunk_size=args.chunk_size, overwrite=args.overwrite, source=str(args.pairs), show_progress=not args.quiet,
                ray=ray, in_process_model=engine_cfg.backend in ("vllm", "transformers"),
                principle_weights=weights, calibration=calibration,
                judge_id=judge_identity(model_id, engine_cfg.backend, engine_cfg.dtype),
            )
        finally:
            if judge is not None:
                judge.close()
    except (ConstitutionError, ModelError, PromptError, RunFolderError, DistributedError, ValueError) as exc:
        raise UserError(str(exc)) from None
    c = manifest["counts"]
    print(f"pairs {c['pairs']}   labelled {c['labelled']}   failed {c['failed']}   ties {c['ties']}   identical {c['identical']}")
    print(f"preference rows {c['preference_rows']} -> {manifest['outputs']['preferences']}")
    if manifest.get("preference_lengths"):
        from rlaif.pipeline.diagnostics import format_preference_lengths

        print(format_preference_lengths(manifest["preference_lengths"]))
    if manifest.get("agreement"):
        print(format_report(manifest["agreement"]))
    _refresh_report(args.out)
    return _judge_report(manifest, args)


def _judge_report(manifest, args: argparse.Namespace) -> int:
    """Print a labelled run's judge diagnostics and warnings, and the rows it lacks; the exit status
    (rows missing: 4 unless --allow-failures; else --strict and the judge looks uninformative: 3)."""
    from rlaif.cli.failures import finish
    from rlaif.pipeline.diagnostics import STRICT_EXIT, format_diagnostics, run_warnings
    from rlaif.pipeline.verdicts import print_verdict_lines

    if manifest.get("diagnostics") and "label_pairs" not in manifest.get("counts", {}):  # generate prints them in its table
        print("\n".join(format_diagnostics(manifest["diagnostics"], manifest.get("length_control"))))
    warnings = run_warnings(manifest)
    print_verdict_lines(manifest)
    for w in warnings:
        print(f"rlaif: {w}", file=sys.stderr)
    return finish(manifest, args.allow_failures) or (STRICT_EXIT if warnings and args.strict else 0)


def _server_engines(cfg, quiet: bool, clients: list):
    """Policy and feedback engines of ``rlaif generate --backend openai``.

    The policy is ``--served-model`` (else ``--model`` unless it is 'default', else the server's first
    model) at ``--base-url``. The feedback
    model is ``--feedback-served-model`` (else ``--feedback-model``) at ``--feedback-base-url``
    (else ``--base-url``); with neither a name nor a server of its own, the policy judges. Returns
    (policy factory, policy name, feedback factory or None, feedback name).
    """
    e = cfg.engine
    policy = connect_server(e, e.served_model or model_name(cfg.model), quiet)
    clients.append(policy)
    feedback = None
    if cfg.label.enabled:
        name = e.feedback_served_model or cfg.label.feedback_model
        url = e.feedback_base_url or e.base_url
        if not (_same_server(url, e.base_url) and name in (None, policy.model)):
            feedback = connect_server(e, name, quiet, base_url=url)
            clients.append(feedback)
    return (lambda: policy), policy.model, (lambda: feedback) if feedback else None, (feedback or policy).model


def cmd_generate(args: argparse.Namespace) -> int:
    from rlaif.pipeline.config import ConfigError, load_yaml, resolve
    from rlaif.constitution import ConstitutionError, load_constitution
    from rlaif.pipeline.generate import generate, summary_table
    from rlaif.models.model_zoo import ModelError, resolve_model
    from rlaif.data.prompts import PromptError
    from rlaif.data.runs import RunFolderError
    from rlaif.cli.ray_flags import tensor_parallel
    from rlaif.pipeline.distributed import DistributedError
    from rlaif.cli.estimate import NOT_RUN_SETTINGS, estimate_generate

    flags = {k: v for k, v in vars(args).items() if k not in NOT_RUN_SETTINGS}
    try:
        file_values = load_yaml(args.config, args.overrides)
        const_spec = flags.get("constitution") or file_values.get("constitution") or "default"
        pdir = flags.get("principles_dir") or file_values.get("principles_dir")
        const = load_constitution(const_spec, pdir)
        cfg = resolve(file_values, flags, const.defaults)
        # Resolve (and if needed prepare) the model before any engine starts, so a wrong
        # path is reported in a second rather than after vLLM's start-up.
        resolve = (lambda m: m) if cfg.engine.backend in ("fake", "openai") else (lambda m: resolve_model(m, log=lambda x: print(x, file=sys.stderr)))
        model_id = resolve(cfg.model)
        feedback_id = resolve(cfg.label.feedback_model) if cfg.label.enabled and cfg.label.feedback_model else model_id
    except (ConfigError, ConstitutionError, ModelError) as exc:
        raise UserError(str(exc)) from None
    clients = []  # server clients made here, closed when the command ends
    try:
        on_ray = bool(cfg.ray.address)  # replicas start their own engines (clients too), quietly
        if cfg.engine.backend == "openai":
            engine_factory, model_id, feedback_factory, feedback_id = _server_engines(cfg, args.quiet, clients)
            if on_ray:
                engine_factory = make_engine_factory(cfg.engine, model_id, cfg.seed, True)
                feedback_factory = feedback_factory and make_engine_factory(
                    cfg.engine, feedback_id, cfg.seed, True, base_url=cfg.engine.feedback_base_url or cfg.engine.base_url)
        else:
            # The feedback model is its own engine unless it is the policy model, which then judges too.
            two = cfg.label.enabled and not _same_model(feedback_id, model_id)
            quiet, tp = args.quiet or on_ray, tensor_parallel(cfg.ray)
            engine_factory = make_engine_factory(cfg.engine, model_id, cfg.seed, quiet, share=0.5 if two else 1.0, tensor_parallel=tp)
            feedback_factory = make_engine_factory(cfg.engine, feedback_id, cfg.seed, quiet, share=0.5, tensor_parallel=tp) if two else None
        try:
            if args.estimate:
                return estimate_generate(args, cfg, const, engine_factory, model_id, feedback_factory, feedback_id)
            manifest = generate(cfg, const, engine_factory, model_id, overwrite=args.overwrite, show_progress=not args.quiet,
                                feedback_factory=feedback_factory, feedback_id=feedback_id)
        except (PromptError, RunFolderError, DistributedError) as exc:
            raise UserError(str(exc)) from None
    finally:
        for client in clients:
            client.close()
    print()
    print(summary_table(manifest))
    print()
    print(f"datasets: {manifest['outputs']['sft']}  {manifest['outputs']['preferences']}")
    _refresh_report(Path(manifest["outputs"]["sft"]).parent)
    return _judge_report(manifest, args)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from rlaif.cli.ratings import run_calibrate

    return run_calibrate(args)


def cmd_export(args: argparse.Namespace) -> int:
    from rlaif.cli.ratings import run_export

    return run_export(args)


def cmd_bon(args: argparse.Namespace) -> int:
    from rlaif.cli.bon import run

    return run(args)


def cmd_label_steps(args: argparse.Namespace) -> int:
    from rlaif.cli.label_steps import run

    return run(args)


def cmd_eval(args: argparse.Namespace) -> int:
    from rlaif.cli.eval import run

    code = run(args)
    if not args.estimate:
        _refresh_report(args.out)
    return code


def cmd_publish(args: argparse.Namespace) -> int:
    from rlaif.cli.publish import run

    return run(args)


def cmd_try(args: argparse.Namespace) -> int:
    from rlaif.cli.try_ import run

    return run(args)


def cmd_relabel(args: argparse.Namespace) -> int:
    from rlaif.cli.relabel import run_relabel

    code = run_relabel(args)
    _refresh_report(args.out)
    return code


def cmd_diff(args: argparse.Namespace) -> int:
    from rlaif.cli.relabel import run_diff

    return run_diff(args)


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from rlaif.train import main as train_main
    except ImportError as exc:
        raise UserError(f"training needs extra packages ({exc}); install with: pip install 'rlaif[train]'") from None
    from rlaif.train.config import TrainConfigError

    try:
        code = train_main(args.kind, args.config, args.overrides)
    except TrainConfigError as exc:
        raise UserError(f"rlaif train {args.kind}: {exc}") from None
    if code == 0 and os.environ.get("RANK", "0") == "0" and _reports_on():
        _refresh_report(_train_run_dir(args))
    return code


def _reports_on() -> bool:
    return os.environ.get("RLAIF_REPORT", "1") != "0"  # the test suite, and scripts that make their own, set 0


_TRAIN_CONFIGS = {"sft": ("rlaif.train.sft", "SFTConfig"), "rm": ("rlaif.train.rm", "RMConfig"),
                  "dpo": ("rlaif.train.dpo", "DPOConfig"), "ppo": ("rlaif.train.ppo", "PPOConfig"),
                  "online-dpo": ("rlaif.train.online_dpo", "OnlineDPOConfig"), "grpo": ("rlaif.train.grpo", "GRPOConfig"),
                  "prm": ("rlaif.train.prm", "PRMConfig")}


def _train_run_dir(args: argparse.Namespace):
    import importlib

    from rlaif.train.config import load_config

    module, name = _TRAIN_CONFIGS[args.kind]
    return load_config(getattr(importlib.import_module(module), name), args.config, args.overrides).run_dir


def _refresh_report(run_dir) -> None:
    """Rewrite RUN/report.html and print its path; a report that cannot be built is a warning, never a failure."""
    if not _reports_on():
        return
    from rlaif.report import ReportError, refresh

    try:
        print(f"report: {refresh(run_dir)}")
    except ReportError as exc:
        print(f"rlaif: warning: no report ({exc})", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - the run itself is done and saved; say what failed and go on
        print(f"rlaif: warning: the report failed ({type(exc).__name__}: {exc})", file=sys.stderr)


def cmd_review(args: argparse.Namespace) -> int:
    from rlaif.cli.pages import review

    return review(args)


def cmd_report(args: argparse.Namespace) -> int:
    from rlaif.cli.pages import report

    return report(args)
