"""``rlaif publish``: its flags and its body (the work is in :mod:`rlaif.data.publish`)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a finished run folder (rlaif generate, label or bon)")
    p.add_argument("--out", required=True, help="folder to write: one parquet config per dataset and README.md, the dataset card")
    p.add_argument("--name", help="the dataset's pretty name in the card (default: rlaif <run folder name>)")
    p.add_argument("--license", default="other", help="license id in the card's metadata (default: other; e.g. apache-2.0)")
    p.add_argument("--language", action="append", default=[], metavar="CODE",
                   help="language code of the data (repeatable; e.g. en)")
    p.add_argument("--push", metavar="HUB_ID", help="also upload the folder to this Hub dataset repository (user/name)")
    p.add_argument("--private", action="store_true", help="with --push: create the repository private")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    from rlaif.cli.errors import UserError
    from rlaif.data.publish import PublishError, publish, push
    from rlaif.engine.failures import FAILED_EXIT

    try:
        out = publish(args.run, args.out, pretty_name=args.name, license=args.license, language=args.language,
                      overwrite=args.overwrite)
    except PublishError as exc:
        raise UserError(str(exc)) from None
    print(f"load it with: datasets.load_dataset({str(out)!r}, NAME, split='train')")
    if args.push:
        try:
            url = push(out, args.push, private=args.private)
        except Exception as exc:  # noqa: BLE001 - network, auth, a bad id: one line, the folder is kept
            print(f"rlaif: error: the upload to {args.push} failed ({type(exc).__name__}: {exc}); "
                  f"the folder {out} is complete, push it again later", file=sys.stderr)
            return FAILED_EXIT
        print(f"pushed: {url}")
    return 0
