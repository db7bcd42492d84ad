"""One function per command of the command line. Heavy imports stay inside the functions."""

from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """An error caused by the input; printed without a traceback, exit status 2."""


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
    from rlaif.model_zoo import ModelError, prepare_default_model

    try:
        path = prepare_default_model(force=getattr(args, "force", False),
                                     log=(lambda m: print(m, file=sys.stderr)) if args.model_command == "path" else print)
    except ModelError as exc:
        raise UserError(str(exc)) from None
    print(path)
    return 0


def cmd_constitution(args: argparse.Namespace) -> int:
    from rlaif.constitution import ConstitutionError, load_constitution

    if args.constitution_command == "import":
        from rlaif.hf_import import ImportErrorHF, import_hf_constitution

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


def cmd_generate(args: argparse.Namespace) -> int:
    from rlaif.config import ConfigError, load_yaml, resolve
    from rlaif.constitution import ConstitutionError, load_constitution
    from rlaif.generate import generate, summary_table
    from rlaif.model_zoo import ModelError, resolve_model
    from rlaif.prompts import PromptError
    from rlaif.runs import RunFolderError

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "overwrite", "quiet", "version")}
    try:
        file_values = load_yaml(args.config) if args.config else {}
        const_spec = flags.get("constitution") or file_values.get("constitution") or "default"
        pdir = flags.get("principles_dir") or file_values.get("principles_dir")
        const = load_constitution(const_spec, pdir)
        cfg = resolve(file_values, flags, const.defaults)
        # Resolve (and if needed prepare) the model before any engine starts, so a wrong
        # path is reported in a second rather than after vLLM's start-up.
        model_id = cfg.model if cfg.engine.backend == "fake" else resolve_model(cfg.model)
    except (ConfigError, ConstitutionError, ModelError) as exc:
        raise UserError(str(exc)) from None

    def engine_factory():
        from rlaif.engine import create_engine

        e = cfg.engine
        if e.backend == "fake":
            return create_engine(model_id, "fake")
        return create_engine(
            model_id,
            "vllm",
            max_model_len=e.max_model_len,
            gpu_memory_utilization=e.gpu_memory_utilization,
            enforce_eager=e.enforce_eager,
            dtype=e.dtype,
            trust_remote_code=e.trust_remote_code,
            seed=cfg.seed,
            show_progress=not args.quiet,
        )

    try:
        manifest = generate(cfg, const, engine_factory, model_id, overwrite=args.overwrite, show_progress=not args.quiet)
    except (PromptError, RunFolderError) as exc:
        raise UserError(str(exc)) from None
    print()
    print(summary_table(manifest))
    print()
    print(f"datasets: {manifest['outputs']['sft']}  {manifest['outputs']['preferences']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from rlaif.train import main as train_main
    except ImportError as exc:
        raise UserError(f"training needs extra packages ({exc}); install with: pip install 'rlaif[train]'") from None
    return train_main(args.kind, args.config, args.overrides)
