"""The ``rlaif`` command line. Argument parsing only: each command calls one function."""

from __future__ import annotations

import argparse
import sys

from rlaif.cli.engine_flags import add_engine_flags
from rlaif.cli.failures import EXIT_STATUS, add_allow_failures, epilog
from rlaif.cli.ray_flags import add_ray_flags
from rlaif.cli.settings_flags import add_config_flag
from rlaif.cli.estimate import add_estimate_flags
from rlaif.cli.verdict_flags import add_verdict_flags
from rlaif.pipeline.verdicts import NoLogprobsError


def _add_feedback_server_flags(p) -> None:
    p.add_argument("--feedback-base-url", dest="engine.feedback_base_url", metavar="URL",
                   help="openai backend: the feedback model's server (default: --base-url)")
    p.add_argument("--feedback-served-model", dest="engine.feedback_served_model", metavar="NAME",
                   help="openai backend: the feedback model's name on its server (default: --feedback-model; without "
                        "either, the policy's model (label: --served-model) or the first model of --feedback-base-url)")


SETTINGS_COMMANDS = ("generate", "label", "bon", "eval", "train", "label-steps")  # they take --config FILE and key=value settings


def _add_label(sub) -> None:
    p = sub.add_parser("label", help="AI preference labels for your own pairs of responses")
    p.add_argument("--pairs", required=True, help="JSONL/parquet/dataset with prompt (or messages), response_a, response_b, optional label")
    p.add_argument("--out", required=True, help="output folder (DIR/preferences, DIR/labels.jsonl, DIR/manifest.json)")
    p.add_argument("--feedback-model", dest="feedback_model",
                   help="feedback model: 'default' (the default), a folder or a hub id; with --backend openai its name on the server")
    p.add_argument("--constitution", default="default", help="constitution name or YAML path (its comparison questions are used)")
    p.add_argument("--principles-dir", dest="principles_dir", help="principles folder (default: the constitution's)")
    p.add_argument("--ensemble", type=int, default=4, help="principles sampled per pair (default 4)")
    p.add_argument("--cot", action="store_true", help="let the feedback model reason before the verdict is read")
    p.add_argument("--cot-clamp", nargs=2, type=float, metavar=("LO", "HI"), default=(0.4, 0.6), help="CoT probability band (default 0.4 0.6)")
    p.add_argument("--single-order", action="store_true", help="score only the given order (for measuring position bias)")
    p.add_argument("--tie-band", type=float, default=0.0, help="|P - 0.5| <= band counts as a tie (default 0: exactly 0.5)")
    p.add_argument("--keep-ties", action="store_true",
                   help="keep ties in the preference dataset (flagged, chosen_prob 0.5, no side); default: leave them out")
    p.add_argument("--drop-ties", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old scripts
    p.add_argument("--length-control", action="store_true",
                   help="remove the part of the judge's preference that the length difference explains (fitted over all pairs)")
    p.add_argument("--strict", action="store_true", help="exit with status 3 when the judge looks uninformative (outputs are still written)")
    p.add_argument("--few-shot", action="store_true", help="show the constitution's comparison examples before each question")
    p.add_argument("--principle-reliability", dest="principle_reliability", metavar="FILE",
                   help="weigh principles in the ensemble average by this file of rlaif calibrate (flagged ones down)")
    p.add_argument("--calibration", metavar="FILE",
                   help="map the labels' probabilities with this calibration of rlaif calibrate (same judge and constitution)")
    add_verdict_flags(p)
    add_estimate_flags(p)
    add_config_flag(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="use only the first N pairs")
    p.add_argument("--chunk-size", type=int, default=256, help="pairs per committed chunk")
    add_engine_flags(p)
    _add_feedback_server_flags(p)
    add_ray_flags(p)
    add_allow_failures(p)
    p.add_argument("--overwrite", action="store_true", help="delete an output folder made with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    epilog(p)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="critique-and-revise prompts into SFT and preference datasets")
    p.add_argument("--prompts", help="prompt file (.jsonl, .txt, .parquet) or saved dataset folder")
    p.add_argument("--out", help="run folder (e.g. runs/my-run); resumed if it holds the same run")
    p.add_argument("--config", help="YAML file with any of these settings (flags win)")
    p.add_argument("--constitution", help="constitution name or YAML path (default: default)")
    p.add_argument("--principles-dir", dest="principles_dir", help="principles folder (default: the constitution's)")
    p.add_argument("--model", help="policy model: 'default', a local folder or a hub id")
    p.add_argument("--rounds", type=int, help="critique-and-revision rounds")
    p.add_argument("--samples", dest="samples_per_prompt", type=int, help="samples per prompt")
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--seed", type=int, help="run seed")
    p.add_argument("--chunk-size", dest="chunk_size", type=int, help="conversations per chunk (one batched call per stage)")
    for stage in ("response", "critique", "revision"):
        p.add_argument(f"--{stage}-temperature", dest=f"sampling.{stage}.temperature", type=float, help=argparse.SUPPRESS)
        p.add_argument(f"--{stage}-top-p", dest=f"sampling.{stage}.top_p", type=float, help=argparse.SUPPRESS)
        p.add_argument(f"--{stage}-max-tokens", dest=f"sampling.{stage}.max_tokens", type=int, help=argparse.SUPPRESS)
    add_engine_flags(p)
    p.add_argument("--label", dest="label.enabled", action="store_true", default=None,
                   help="AI preference labels instead of 'the revision wins'")
    p.add_argument("--pairs", dest="label.pairs", choices=["revision", "samples-all", "samples-random", "west-of-n", "rlcd"],
                   help="what to compare: initial vs final revision (default), or pairs of samples; labelled by construction: "
                        "west-of-n (best vs worst of --samples N under --reward-model/--reward-fn) or rlcd (answers to a "
                        "positive vs a negative system prompt made from a principle); with --label the judge checks them")
    p.add_argument("--reward-model", dest="label.reward_model", help="--pairs west-of-n: reward model folder or hub id")
    p.add_argument("--reward-fn", dest="label.reward_fn", help="--pairs west-of-n: programmatic reward, package.module:function")
    p.add_argument("--pairs-per-prompt", dest="label.pairs_per_prompt", type=int, help="with --pairs samples-random")
    p.add_argument("--feedback-model", dest="label.feedback_model",
                   help="feedback model, its own engine (default: the policy model, same engine); with --backend openai its name on the server")
    _add_feedback_server_flags(p)
    p.add_argument("--ensemble", dest="label.ensemble", type=int, help="principles per pair (default 4)")
    p.add_argument("--cot", dest="label.cot", action="store_true", default=None, help="chain-of-thought labels")
    p.add_argument("--keep-ties", dest="label.keep_ties", action="store_true", default=None,
                   help="keep ties (flagged, chosen_prob 0.5, no side); default: leave them out")
    p.add_argument("--drop-ties", dest="label.keep_ties", action="store_false", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tie-band", dest="label.tie_band", type=float, help="|P - 0.5| <= band is a tie (default 0: exactly 0.5)")
    p.add_argument("--length-control", dest="label.length_control", action="store_true", default=None,
                   help="remove the length-explained part of the judge's preference (fitted over all pairs)")
    p.add_argument("--strict", action="store_true", help="with --label: exit with status 3 when the judge looks uninformative")
    add_verdict_flags(p, "label.", defaults=False)
    add_estimate_flags(p)
    add_ray_flags(p)
    add_allow_failures(p)
    p.add_argument("--overwrite", action="store_true", help="delete a run folder made with other settings and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.epilog = "Per-stage sampling: --{response,critique,revision}-{temperature,top-p,max-tokens}."
    epilog(p)


def _add_review(sub) -> None:
    p = sub.add_parser("review", help="rate a run's preference pairs in the browser (blind) and compare with the AI labels")
    p.add_argument("run", help="run folder holding preferences.jsonl (from rlaif generate or rlaif label)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--reviewer", help="your name, so the page does not ask for it")
    p.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=[], metavar="NAME",
                   help="a host name the server also answers to (repeatable; the bound address, localhost on loopback "
                        "and, with --host 0.0.0.0, IP addresses and this machine's name are always accepted)")
    p.add_argument("--order", choices=["queue", "file"], default="queue",
                   help="queue (default): what a rating teaches most, alternating with a random sample for the estimate; "
                        "file: the file's order")
    p.add_argument("--target", type=float, default=10.0, metavar="POINTS",
                   help="stop when the agreement's 95%% interval is within +-POINTS percentage points (default 10)")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="a static HTML report of run folders (several: side by side)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders made by rlaif generate, label, train or eval")
    p.add_argument("--out", help="folder to write report.html into (default: the run folder; needed for several runs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlaif", description="RLAIF: constitutions to datasets to trained models.", epilog=EXIT_STATUS)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    parser.subcommands = sub.choices  # name -> that command's parser

    p = sub.add_parser("lint", help="check principle and constitution files")
    p.add_argument("paths", nargs="*", help="files or folders (default: rlaif's principles/ and constitution/)")

    p = sub.add_parser("model", help="manage the embedded default model")
    msub = p.add_subparsers(dest="model_command", required=True)
    mp = msub.add_parser("prepare", help="download and convert SmolLM2-135M-Instruct once (idempotent)")
    mp.add_argument("--force", action="store_true", help="convert again even if the model is ready")
    msub.add_parser("path", help="print the default model's folder (preparing it if needed)")

    p = sub.add_parser("constitution", help="work with constitution files")
    csub = p.add_subparsers(dest="constitution_command", required=True)
    ci = csub.add_parser("import", help="import a Hugging Face Constitutional AI JSON file")
    ci.add_argument("file", help="JSON with 'constitutions' ({critic, revision} pairs) and 'system_chat'")
    ci.add_argument("--out", required=True, help="folder to write principles/ and constitution/ into")
    ci.add_argument("--name", help="constitution name (default: from the file name)")
    ci.add_argument("--force", action="store_true", help="replace files that already exist")
    cs = csub.add_parser("show", help="list a constitution's principles and weights")
    cs.add_argument("name", nargs="?", default="default", help="constitution name or path")
    from rlaif.cli.constitution import add_audit_arguments, add_test_arguments

    add_test_arguments(csub.add_parser("test", help="judge every principle's test cases under it (pass rates, exit 5 below --min-pass)"))
    add_audit_arguments(csub.add_parser("audit", help="how the judge's preference moves when nothing but the presentation changes"))

    _add_generate(sub)
    _add_label(sub)
    _add_review(sub)
    _add_report(sub)

    from rlaif.cli.ratings import add_calibrate_arguments, add_export_arguments

    add_calibrate_arguments(sub.add_parser("calibrate", help="calibrate a run's AI labels on its human ratings; per-principle reliability"))
    add_export_arguments(sub.add_parser("export", help="a run folder whose rated pairs carry the human verdict as their label"))

    p = sub.add_parser("bon", help="best-of-N sampling scored by a reward model (SFT and preference data)")
    from rlaif.cli.bon import add_arguments

    add_arguments(p)

    p = sub.add_parser("label-steps", help="step labels for solutions (judge, Monte-Carlo completion or implicit rewards) "
                                           "in TRL's stepwise format")
    from rlaif.cli.label_steps import add_arguments as add_label_steps_arguments

    add_label_steps_arguments(p)

    p = sub.add_parser("eval", help="a policy against a baseline: win rates, harmlessness, over-refusal, reward, KL")
    from rlaif.cli.eval import add_arguments as add_eval_arguments

    add_eval_arguments(p)

    p = sub.add_parser("publish", help="a run's datasets as a shareable folder: parquet configs and a dataset card (--push: to the Hub)")
    from rlaif.cli.publish import add_arguments as add_publish_arguments

    add_publish_arguments(p)

    p = sub.add_parser("try", help="the principle workbench: critique and revise a few prompts with one principle, side by side")
    from rlaif.cli.try_ import add_arguments as add_try_arguments

    add_try_arguments(p)

    p = sub.add_parser("relabel", help="judge a labelled run again with an edited constitution: only the changed requests are sent")
    from rlaif.cli.relabel import add_diff_arguments, add_relabel_arguments

    add_relabel_arguments(p)
    _add_feedback_server_flags(p)
    p = sub.add_parser("diff", help="what changed between two labelled runs of the same pairs: flips, agreement, judge")
    add_diff_arguments(p)

    for name in ("bon", "eval", "label-steps"):
        epilog(sub.choices[name])
    p = sub.add_parser("train", help="train a model on rlaif data: sft, rm (reward model), dpo, ppo, online-dpo, grpo or prm "
                                     "(process reward model)")
    p.add_argument("kind", choices=["sft", "rm", "dpo", "ppo", "online-dpo", "grpo", "prm"], help="what to train")
    p.add_argument("--config", help="training YAML file (optional: key=value settings alone also work)")
    p.add_argument("overrides", nargs="*", help="key=value settings that override the file")
    epilog(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    # vLLM's CPU backend turns on flush-to-zero in this process; numpy then warns, once per float type,
    # that the smallest subnormal is zero whenever something asks for finfo (saving a dataset does).
    # It changes nothing rlaif computes, so the four lines of noise are left out.
    warnings.filterwarnings("ignore", message="The value of the smallest subnormal", category=UserWarning)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in SETTINGS_COMMANDS:
        # key=value settings (rlaif/settings.py) may come anywhere after the command
        args.overrides = getattr(args, "overrides", None) or []
        args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if not ("=" in e and not e.startswith("-"))]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("label", "bon", "eval", "label-steps"):
        from rlaif.cli.settings_flags import apply_settings
        from rlaif.settings import SettingsError

        argv = sys.argv[1:] if argv is None else list(argv)
        try:
            apply_settings(parser.subcommands[args.command], args, argv[argv.index(args.command) + 1:])
        except SettingsError as exc:
            print(f"rlaif: error: {exc}", file=sys.stderr)
            return 2
    if args.version:
        from rlaif import __version__

        print(f"rlaif {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return 2
    from rlaif.cli import commands
    from rlaif.cli.errors import UserError
    from rlaif.cli.failures import stopped_line
    from rlaif.engine.failures import FAILED_EXIT, ServerGone

    try:
        return getattr(commands, f"cmd_{args.command.replace('-', '_')}")(args)
    except ServerGone as exc:  # a server (or the in-process engine) stopped answering: stopped early, resumable
        print(stopped_line(exc), file=sys.stderr)
        return FAILED_EXIT
    except KeyboardInterrupt:
        print("\ninterrupted. Committed work is kept; run the same command again to continue.", file=sys.stderr)
        return 130
    except (UserError, NoLogprobsError) as exc:  # a judge without log-probabilities: the same for every command
        print(f"rlaif: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

