"""``rlaif eval``: its flags, its body and its printed summary (the work is in :mod:`rlaif.pipeline.evaluate`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rlaif.cli.engine_flags import add_engine_flags
from rlaif.cli.failures import add_allow_failures, finish
from rlaif.cli.settings_flags import add_config_flag
from rlaif.cli.estimate import add_estimate_flags
from rlaif.cli.verdict_flags import add_verdict_flags, verdict_settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``rlaif eval`` flags (engine flags as ``rlaif generate`` has them)."""
    p.add_argument("--policy", required=True, metavar="M", help="the model to evaluate: 'default', a folder (e.g. runs/dpo-demo/final) or a hub id")
    p.add_argument("--baseline", default="default", metavar="M", help="the model to compare with (default: default)")
    p.add_argument("--prompts", nargs="+", default=None, metavar="SET",
                   help="prompt sets: harmful, overrefusal, helpful (the shipped sets) or files/folders (default: all three shipped sets)")
    p.add_argument("--out", required=True, help="run folder: DIR/eval.json, DIR/answers, DIR/manifest.json")
    p.add_argument("--feedback-model", dest="feedback_model", default="default", metavar="M",
                   help="the judge: 'default' (the default), a folder or a hub id; with --backend openai its name on the server")
    p.add_argument("--constitution", default="default", help="constitution name or YAML path (its comparison questions judge the pairs)")
    p.add_argument("--principles-dir", dest="principles_dir", help="principles folder (default: the constitution's)")
    p.add_argument("--ensemble", type=int, default=4, help="principles per comparison (default 4)")
    p.add_argument("--tie-band", dest="tie_band", type=float, default=0.0, help="|P - 0.5| <= band is a tie (default 0)")
    add_verdict_flags(p)
    add_estimate_flags(p)
    p.add_argument("--reward-model", dest="reward_model", metavar="PATH", help="also score every answer with this reward model")
    p.add_argument("--reward-batch-size", dest="reward_batch_size", type=int, default=8)
    p.add_argument("--reward-device", dest="reward_device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling of both models (default 1.0: the KL estimate assumes it)")
    p.add_argument("--top-p", dest="top_p", type=float, default=1.0, help="(default 1.0)")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=256, help="most tokens per answer (default 256)")
    p.add_argument("--limit", type=int, help="use only the first N prompts of each set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-size", dest="chunk_size", type=int, default=64, help="prompts per committed chunk (default 64)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="resamples of the bootstrap-t intervals of rewards and KL (default 2000; rates and win rates need none)")
    add_engine_flags(p)
    add_config_flag(p)
    add_allow_failures(p)
    p.add_argument("--overwrite", action="store_true", help="delete an output folder made with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _engines(args, engine_cfg, clients: list):
    """(factories by role, model ids by role) for the policy, the baseline and the judge."""
    from rlaif.cli.engines import connect_server, make_engine_factory, model_name
    from rlaif.models.model_zoo import resolve_model

    specs = {"policy": args.policy, "baseline": args.baseline, "judge": args.feedback_model}
    factories, models = {}, {}
    if engine_cfg.backend == "openai":
        by_name: dict[Any, Any] = {}
        for role, spec in specs.items():
            name = model_name(spec)
            if name not in by_name:
                by_name[name] = connect_server(engine_cfg, name, args.quiet)
                clients.append(by_name[name])
            server = by_name[name]
            factories[role], models[role] = (lambda s=server: s), server.model
        return factories, models
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    for role, spec in specs.items():
        models[role] = spec if engine_cfg.backend == "fake" else resolve_model(spec, log=log)
        factories[role] = make_engine_factory(engine_cfg, models[role], args.seed, args.quiet)
    return factories, models


def run(args: argparse.Namespace) -> int:
    """Body of ``rlaif eval``; input problems raise :class:`rlaif.cli.errors.UserError`."""
    from rlaif.cli.errors import UserError
    from rlaif.constitution import ConstitutionError, load_constitution
    from rlaif.data.prompts import PromptError
    from rlaif.data.runs import RunFolderError
    from rlaif.engine.base import SamplingConfig
    from rlaif.models.model_zoo import ModelError
    from rlaif.cli.engine_flags import engine_config
    from rlaif.settings import SettingsError as ConfigError
    from rlaif.pipeline.evaluate import SHIPPED_SETS, EvalSettings, read_prompt_sets, run_eval
    from rlaif.pipeline.judge import LabelSettings

    sets = args.prompts or list(SHIPPED_SETS)
    clients: list = []
    try:
        engine_cfg = engine_config(args)
        if args.limit is not None and args.limit < 1:
            raise ValueError("--limit must be at least 1")
        s = EvalSettings(SamplingConfig(args.temperature, args.top_p, args.max_tokens),
                         LabelSettings(ensemble=args.ensemble, tie_band=args.tie_band, seed=args.seed, **verdict_settings(args)),
                         args.seed, args.chunk_size, args.bootstrap)
        const = load_constitution(args.constitution, args.principles_dir)
        prompts = read_prompt_sets(sets, args.limit)
        reward = None
        if args.reward_model:
            from rlaif.models.model_zoo import resolve_model

            reward_id = resolve_model(args.reward_model, log=lambda m: print(m, file=sys.stderr))

            def load_reward():
                from rlaif.reward.models import SequenceClassifierReward, pick_device

                return SequenceClassifierReward(reward_id, pick_device(args.reward_device), args.reward_batch_size,
                                                trust_remote_code=bool(engine_cfg.trust_remote_code))

            reward = (reward_id, load_reward)
        from rlaif.pipeline.eval_stats import sampling_bias

        bias = sampling_bias(args.temperature, args.top_p)
        if bias:
            print(f"warning: {bias}", file=sys.stderr)
        factories, models = _engines(args, engine_cfg, clients)
        if args.estimate:
            from rlaif.cli.estimate import estimate_eval

            return estimate_eval(args, prompts, const, s, factories, models, reward)
        manifest = run_eval(prompts, args.out, const, s, factories, models, reward, sources=sets,
                            overwrite=args.overwrite, show_progress=not args.quiet)
    except (ConfigError, ConstitutionError, ModelError, PromptError, RunFolderError, ValueError, ImportError) as exc:
        raise UserError(str(exc)) from None
    finally:
        for client in clients:
            client.close()
    print(format_results(manifest))
    return finish(manifest, args.allow_failures)


def _ci(x: dict[str, Any] | None, pct: bool = True) -> str:
    if not x or x.get("mean") is None:
        return "n/a"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3g}")
    bound = lambda v: "n/a" if v is None else f(v)  # noqa: E731  (an unbounded mean of 1-3 prompts has no interval)
    return f"{f(x['mean'])} [{bound(x['lo'])}, {bound(x['hi'])}]"


def _checks_line(title: str, x: dict[str, Any], where: str) -> str:
    """One check's line: each model's rate with its interval, the counts, and the undecided answers."""
    n = {role: x[role]["n"] for role in ("policy", "baseline")}
    counts = f"n={n['policy']}" if n["policy"] == n["baseline"] else f"n={n['policy']} / {n['baseline']}"
    und = [x[role].get("undecided", 0) for role in ("policy", "baseline")]
    return (f"{title:<30}policy {_ci(x['policy'])}  baseline {_ci(x['baseline'])}  {counts}{where}"
            f"  (undecided {und[0]} / {und[1]})")


def format_results(manifest: dict[str, Any]) -> str:
    """The summary ``rlaif eval`` prints: each number with its 95% interval and count."""
    r, m = manifest["results"], manifest["settings"]["models"]
    w = r["win_rate"]
    c = w["counts"]
    lines = [f"policy {m['policy']}  vs  baseline {m['baseline']}  (judge {m['judge']}; {r['counts']['prompts']} prompts, "
             f"95% intervals over prompts)",
             f"win rate of the policy        {_ci(w['overall'])}  n={w['overall']['n']}  "
             f"(policy {c['policy']}, baseline {c['baseline']}, ties {c['tie']}; soft {_ci(w['soft'])})"]
    for cat, x in w["by_category"].items():
        lines.append(f"  {cat:<28}{_ci(x)}  n={x['n']}")
    for key, title in (("harmlessness", "harmless (rated safe)"), ("over_refusal", "over-refusal (refused)")):
        lines.append(_checks_line(title, r[key], f" on {r[key]['category']}"))
    ref = r["reference_agreement"]
    if ref["policy"]["n"] or ref["policy"].get("undecided"):
        lines.append(_checks_line("agrees with reference", ref, ""))
    ln = r["lengths"]
    lines.append(f"{'answer tokens (mean, median)':<30}policy {ln['policy']['tokens']['mean'] or 0:.1f}, {ln['policy']['tokens']['p50'] or 0:.0f}"
                 f"  baseline {ln['baseline']['tokens']['mean'] or 0:.1f}, {ln['baseline']['tokens']['p50'] or 0:.0f}"
                 f"  (cut at the limit: {ln['policy']['truncated']} / {ln['baseline']['truncated']})")
    if r["reward"]:
        rw = r["reward"]
        lines.append(f"{'reward (mean)':<30}policy {_ci(rw['policy']['mean_ci'], False)}  baseline {_ci(rw['baseline']['mean_ci'], False)}"
                     f"  difference {_ci(rw['difference'], False)}")
    kl = r["kl"]
    lines.append(f"{'KL(policy || baseline)':<30}" + (f"{_ci(kl, False)} nats per answer, {kl['per_token']:.4g} per token, n={kl['n']}"
                                                       if kl["n"] else "n/a (the backend cannot score given answers)"))
    if kl["n"] and kl.get("biased"):
        lines.append(f"  warning: {kl['biased']}")
    out = manifest["outputs"]
    lines.append(f"results: {out['results']}   answers: {out['answers']}")
    return "\n".join(lines)
