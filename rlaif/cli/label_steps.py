"""``rlaif label-steps``: its flags and its body (the work is in :mod:`rlaif.pipeline.label_steps`)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from rlaif.cli.engine_flags import add_engine_flags
from rlaif.cli.failures import add_allow_failures, finish
from rlaif.cli.settings_flags import add_config_flag


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``rlaif label-steps`` flags (engine flags as ``rlaif generate`` has them)."""
    p.add_argument("--solutions", metavar="FILE", help="solutions to label: prompt (or messages) with response (a text) or "
                                                       "completions (a list of steps)")
    p.add_argument("--prompts", metavar="FILE", help="prompts instead, with --samples solutions sampled per prompt by --model")
    p.add_argument("--samples", type=int, default=0, help="with --prompts: solutions sampled per prompt")
    p.add_argument("--out", required=True, help="run folder: DIR/steps, DIR/steps.jsonl, DIR/manifest.json")
    p.add_argument("--source", required=True, choices=["judge", "mc", "implicit"],
                   help="judge: the constitution judge per step; mc: Monte-Carlo completion scored by --reward-fn; "
                        "implicit: a DPO model (--model) against its reference")
    p.add_argument("--model", default="default", help="policy: samples solutions and (mc) continuations; (implicit) the DPO model")
    p.add_argument("--feedback-model", dest="feedback_model", default="default", help="judge: the feedback model")
    p.add_argument("--constitution", default="default", help="judge: constitution name or YAML path")
    p.add_argument("--principles-dir", dest="principles_dir", help="judge: principles folder (default: the constitution's)")
    p.add_argument("--ensemble", type=int, default=2, help="judge: principles per solution (default 2)")
    p.add_argument("--tie-band", dest="tie_band", type=float, default=0.0, help="judge: |P - 0.5| <= band is a tie (default 0)")
    p.add_argument("--reward-fn", dest="reward_fn", metavar="MODULE:FUNCTION", help="mc: scores completed solutions")
    p.add_argument("--k", type=int, default=4, help="mc: continuations per step prefix (default 4)")
    p.add_argument("--threshold", type=float, default=1.0, help="mc: a continuation is correct when its reward >= this (default 1.0)")
    p.add_argument("--reference", default="default", help="implicit: the DPO model's reference (default: default)")
    p.add_argument("--beta", type=float, default=0.1, help="implicit: the DPO beta the model was trained with (default 0.1)")
    p.add_argument("--step-split", dest="step_split", choices=["lines", "paragraphs", "regex", "marker"], default="lines",
                   help="how responses are cut into steps (default lines)")
    p.add_argument("--step-pattern", dest="step_pattern", default="", help="the regex or marker of --step-split regex / marker")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling of solutions and continuations (default 1.0)")
    p.add_argument("--top-p", dest="top_p", type=float, default=1.0, help="(default 1.0)")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=256, help="most tokens per solution or continuation (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="use only the first N rows")
    p.add_argument("--chunk-size", dest="chunk_size", type=int, default=32, help="rows per committed chunk (default 32)")
    add_engine_flags(p)
    add_config_flag(p)
    add_allow_failures(p)
    p.add_argument("--overwrite", action="store_true", help="delete an output folder made with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _engines(args, engine_cfg, roles: dict[str, str], clients: list) -> tuple[dict[str, Any], dict[str, str]]:
    """(factories by role, model ids by role); roles naming the same model share one engine."""
    from rlaif.cli.engines import connect_server, make_engine_factory, model_name
    from rlaif.models.model_zoo import resolve_model

    factories: dict[str, Any] = {}
    models: dict[str, str] = {}
    by_spec: dict[Any, tuple[Any, str]] = {}
    in_process = [s for s in dict.fromkeys(roles.values())]
    for role, spec in roles.items():
        if engine_cfg.backend == "openai":
            key = model_name(spec) if role != "policy" or not engine_cfg.served_model else engine_cfg.served_model
            if key not in by_spec:
                server = connect_server(engine_cfg, key, args.quiet)
                clients.append(server)
                by_spec[key] = ((lambda s=server: s), server.model)
        else:
            key = spec if engine_cfg.backend == "fake" else resolve_model(spec, log=lambda m: print(m, file=sys.stderr))
            if key not in by_spec:
                share = 1.0 / len(in_process)
                made: dict[str, Any] = {}

                def once(f=make_engine_factory(engine_cfg, key, args.seed, args.quiet, share=share), made=made):
                    if "e" not in made:  # one engine per model, whichever role asks first
                        made["e"] = f()
                    return made["e"]

                by_spec[key] = (once, key)
        factories[role], models[role] = by_spec[key]
    return factories, models


def run(args: argparse.Namespace) -> int:
    """Body of ``rlaif label-steps``; input problems raise :class:`rlaif.cli.errors.UserError`."""
    from rlaif.cli.errors import UserError
    from rlaif.cli.engine_flags import engine_config
    from rlaif.constitution import ConstitutionError, load_constitution
    from rlaif.data.prompts import PromptError, read_prompts
    from rlaif.data.runs import RunFolderError
    from rlaif.data.steps import StepSplitter
    from rlaif.engine.base import SamplingConfig
    from rlaif.models.model_zoo import ModelError
    from rlaif.pipeline.label_steps import StepLabelSettings, run_label_steps
    from rlaif.pipeline.step_sources import MCSettings, read_solutions
    from rlaif.reward.judge import StepJudgeSettings
    from rlaif.settings import SettingsError

    if bool(args.solutions) == bool(args.prompts):
        raise UserError("give one of --solutions FILE or --prompts FILE (with --samples N)")
    if args.prompts and args.samples < 1:
        raise UserError("--prompts needs --samples N (solutions sampled per prompt)")
    if args.solutions and args.samples:
        raise UserError("--samples goes with --prompts; --solutions already holds the solutions")
    if args.source == "mc" and not args.reward_fn:
        raise UserError("--source mc needs --reward-fn MODULE:FUNCTION (it scores the completed solutions)")
    if args.source != "mc" and args.reward_fn:
        raise UserError("--reward-fn is used by --source mc only")
    clients: list = []
    try:
        engine_cfg = engine_config(args)
        if engine_cfg.backend == "openai" and args.source == "implicit":
            raise ValueError("--source implicit needs the log-probabilities of given answers, which a server does not give; "
                             "use --backend vllm or transformers")
        sampling = SamplingConfig(args.temperature, args.top_p, args.max_tokens)
        splitter = StepSplitter(args.step_split, args.step_pattern)
        s = StepLabelSettings(args.source, splitter, args.seed, args.samples, sampling,
                              MCSettings(args.k, sampling, args.threshold), StepJudgeSettings(args.ensemble, args.tie_band, args.seed),
                              args.beta, args.chunk_size)
        items = read_prompts(args.prompts, limit=args.limit) if args.prompts else read_solutions(args.solutions, splitter, args.limit)
        const = load_constitution(args.constitution, args.principles_dir) if args.source == "judge" else None
        reward_fn = None
        if args.reward_fn:
            from rlaif.reward.functions import load_reward_fn

            reward_fn = load_reward_fn(args.reward_fn)
        roles = {}
        if args.samples or args.source in ("mc", "implicit"):
            roles["policy"] = args.model
        if args.source == "judge":
            roles["judge"] = args.feedback_model
        if args.source == "implicit":
            roles["reference"] = args.reference
        factories, models = _engines(args, engine_cfg, roles, clients)
        manifest = run_label_steps(items, args.out, s, factories, models, reward_fn, args.reward_fn or "", const,
                                   source=str(args.solutions or args.prompts), overwrite=args.overwrite,
                                   show_progress=not args.quiet)
    except (SettingsError, ConstitutionError, ModelError, PromptError, RunFolderError, ValueError, ImportError, AttributeError) as exc:
        raise UserError(str(exc)) from None
    finally:
        for client in clients:
            client.close()
    return report(manifest, args.allow_failures)


def report(m: dict[str, Any], allow_failures: float = 0.0) -> int:
    """Print the summary; the exit status (:func:`rlaif.cli.failures.finish`: 4 when solutions are
    missing because their requests failed, unless ``--allow-failures`` accepts them)."""
    c = m["counts"]
    share = f"{c['steps_correct'] / c['steps']:.1%}" if c["steps"] else "n/a"
    print(f"solutions {c['solutions']}   labelled {c['labelled']}   failed {c['failed']}   steps {c['steps']}   "
          f"labelled correct {share}" + (f"   continuation tokens {c['continuation_tokens']}" if c["continuation_tokens"] else ""))
    d = m.get("diagnostics")
    if d:
        pa, yes = d.get("phrasing_agreement"), d.get("yes_rate")
        print(f"step judge: phrasings agree {'n/a' if pa is None else f'{pa:.1%}'}   P(Yes) on average "
              f"{'n/a' if yes is None else f'{yes:.3f}'}   ties {d['ties']} of {d['steps']} steps")
    for w in m.get("warnings", []):
        print(f"rlaif: warning: {w}", file=sys.stderr)
    print(f"dataset: {m['outputs']['steps']}")
    return finish(m, allow_failures)
