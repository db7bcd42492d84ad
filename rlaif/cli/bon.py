"""``rlaif bon``: its flags and its body (the sampling and scoring live in :mod:`rlaif.pipeline.bon`)."""
from __future__ import annotations

import argparse
import sys

from rlaif.pipeline.bon import BonSettings, run_bon
from rlaif.cli.engine_flags import add_engine_flags
from rlaif.cli.failures import add_allow_failures, epilog, finish, stopped_line
from rlaif.cli.settings_flags import add_config_flag
from rlaif.engine.base import SamplingConfig


# ------------------------------------------------------------------ command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``rlaif bon`` flags (engine flags as ``rlaif generate`` has them)."""
    p.add_argument("--prompts", required=True, help="prompt file (.jsonl, .txt, .parquet) or saved dataset folder")
    p.add_argument("--reward-model", dest="reward_model", help="sequence-classification reward model folder (e.g. runs/rm-demo/final) or hub id")
    p.add_argument("--reward-fn", dest="reward_fn", help="programmatic reward instead: package.module:function(prompts, responses)")
    p.add_argument("--n", type=int, default=4, help="responses per prompt (default 4)")
    p.add_argument("--out", required=True, help="run folder: DIR/sft, DIR/preferences, DIR/manifest.json")
    p.add_argument("--model", default="default", help="policy model: 'default', a folder or a hub id")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", dest="top_p", type=float, default=1.0)
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=256, help="most tokens per response")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--chunk-size", dest="chunk_size", type=int, default=64, help="prompts per committed chunk")
    p.add_argument("--keep-truncated", dest="keep_truncated", action="store_true", help="let responses cut at --max-tokens be chosen")
    p.add_argument("--min-margin", dest="min_margin", type=float, default=0.0, help="pairs need best - worst reward above this")
    p.add_argument("--reward-batch-size", dest="reward_batch_size", type=int, default=8)
    p.add_argument("--reward-device", dest="reward_device", default="auto", help="auto, cpu or cuda[:N]")
    add_engine_flags(p)
    add_config_flag(p)
    add_allow_failures(p)
    p.add_argument("--overwrite", action="store_true", help="delete an output folder made with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlaif bon", description="Best-of-N sampling scored by a reward model.")
    add_arguments(p)
    epilog(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Body of ``rlaif bon``; input problems raise :class:`rlaif.cli.errors.UserError`."""
    from rlaif.cli.engines import connect_server, make_engine_factory, model_name
    from rlaif.cli.errors import UserError
    from rlaif.cli.engine_flags import engine_config
    from rlaif.settings import SettingsError as ConfigError
    from rlaif.models.model_zoo import ModelError, resolve_model
    from rlaif.data.prompts import PromptError, read_prompts
    from rlaif.data.runs import RunFolderError

    if bool(args.reward_model) == bool(args.reward_fn):
        raise UserError("give one of --reward-model or --reward-fn")
    try:
        engine_cfg = engine_config(args)
        s = BonSettings(args.n, SamplingConfig(args.temperature, args.top_p, args.max_tokens), args.seed,
                        args.keep_truncated, args.min_margin, args.chunk_size)
        prompts = read_prompts(args.prompts, limit=args.limit)
        quiet_log = lambda m: print(m, file=sys.stderr)  # noqa: E731
        model_id = args.model if engine_cfg.backend in ("fake", "openai") else resolve_model(args.model, log=quiet_log)
        from rlaif.train.rollout import SequenceClassifierReward, load_reward_fn

        if args.reward_fn:
            reward_fn, reward_id = load_reward_fn(args.reward_fn), args.reward_fn
        else:
            import torch

            device = args.reward_device if args.reward_device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
            reward_id = resolve_model(args.reward_model, log=quiet_log)
            reward_fn = SequenceClassifierReward(reward_id, device, args.reward_batch_size,
                                                 trust_remote_code=bool(engine_cfg.trust_remote_code))
        server = None
        if engine_cfg.backend == "openai":
            # the policy is --served-model (else --model unless 'default', else the server's first model)
            server = connect_server(engine_cfg, engine_cfg.served_model or model_name(args.model), args.quiet)
            model_id, factory = server.model, (lambda: server)
        else:
            factory = make_engine_factory(engine_cfg, model_id, args.seed, args.quiet)
        try:
            m = run_bon(prompts, factory, reward_fn, s, args.out, model_id, reward_id, source=str(args.prompts),
                        overwrite=args.overwrite, show_progress=not args.quiet)
        finally:
            if server is not None:
                server.close()
    except (ConfigError, ModelError, PromptError, RunFolderError, ValueError, ImportError, AttributeError) as exc:
        raise UserError(str(exc)) from None
    c = m["counts"]
    fmt = lambda x: "n/a" if x is None else f"{x:.4g}"  # noqa: E731
    print(f"prompts {c['prompts']}   responses {c['responses']}   truncated {c['truncated']}   "
          f"sft rows {c['sft_rows']}   preference rows {c['preference_rows']}")
    print(f"mean reward {fmt(c['mean_reward'])}   best {fmt(c['mean_best_reward'])}   worst {fmt(c['mean_worst_reward'])}")
    print(f"datasets: {m['outputs']['sft']}  {m['outputs']['preferences']}")
    return finish(m, args.allow_failures)


def main(argv: list[str] | None = None) -> int:
    """``python -m rlaif.cli.bon ...``: parse, run, and turn input errors into exit status 2."""
    from rlaif.cli.errors import UserError
    from rlaif.cli.settings_flags import apply_settings
    from rlaif.engine.failures import FAILED_EXIT, ServerGone
    from rlaif.settings import SettingsError

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    args.overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if len(args.overrides) != len(extra):
        parser.error(f"unrecognized arguments: {' '.join(e for e in extra if e not in args.overrides)}")
    try:
        apply_settings(parser, args, argv)
        return run(args)
    except (SettingsError, UserError) as exc:
        print(f"rlaif: error: {exc}", file=sys.stderr)
        return 2
    except ServerGone as exc:
        print(stopped_line(exc), file=sys.stderr)
        return FAILED_EXIT


if __name__ == "__main__":
    sys.exit(main())
