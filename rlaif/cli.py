"""The ``rlaif`` command line. Argument parsing only: each command calls one function."""

from __future__ import annotations

import argparse
import sys


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
    p.add_argument("--backend", dest="engine.backend", choices=["vllm", "fake"], help="engine backend (default: vllm)")
    p.add_argument("--max-model-len", dest="engine.max_model_len", type=int, help="context length")
    p.add_argument("--gpu-memory-utilization", dest="engine.gpu_memory_utilization", type=float,
                   help="engine memory share (of CPU memory on CPU hosts)")
    p.add_argument("--enforce-eager", dest="engine.enforce_eager", action=argparse.BooleanOptionalAction,
                   help="skip graph compilation (default: on for CPU hosts)")
    p.add_argument("--dtype", dest="engine.dtype", help="model dtype (default: auto)")
    p.add_argument("--trust-remote-code", dest="engine.trust_remote_code", action="store_true", default=None,
                   help="allow code shipped with the model to run")
    p.add_argument("--overwrite", action="store_true", help="delete a run folder made with other settings and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.epilog = "Per-stage sampling: --{response,critique,revision}-{temperature,top-p,max-tokens}."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlaif", description="RLAIF: constitutions to datasets to trained models.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

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

    _add_generate(sub)

    p = sub.add_parser("train", help="train a model on rlaif data")
    p.add_argument("kind", choices=["sft", "rm", "dpo"], help="what to train")
    p.add_argument("--config", required=True, help="training YAML file")
    p.add_argument("overrides", nargs="*", help="key=value settings that override the file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from rlaif import __version__

        print(f"rlaif {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return 2
    from rlaif import commands

    try:
        return getattr(commands, f"cmd_{args.command}")(args)
    except KeyboardInterrupt:
        print("\ninterrupted. Committed work is kept; run the same command again to continue.", file=sys.stderr)
        return 130
    except commands.UserError as exc:
        print(f"rlaif: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

