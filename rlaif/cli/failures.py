"""A run whose requests failed is not a success: ``--allow-failures``, the missing-rows line, exit status 4.

Every command that writes a run folder (``generate``, ``label``, ``bon``, ``eval``) ends through
:func:`finish`: when rows are missing because their requests failed (the manifest's ``missing``
entries, :func:`rlaif.data.runs.missing`), it prints one line saying how many and what to do, and
the command exits with :data:`rlaif.engine.failures.FAILED_EXIT` unless ``--allow-failures``
accepts them. A command stopped early because its server is gone
(:class:`rlaif.engine.failures.ServerGone`) prints :func:`stopped_line` and exits with the same status.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rlaif.engine.failures import FAILED_EXIT

EXIT_STATUS = ("exit status: 0 done; 2 bad input; 3 --strict and the judge looks uninformative; "
               f"{FAILED_EXIT} requests failed: the server stopped answering (the command stopped early) or rows are "
               "missing (unless --allow-failures); committed work is kept and rerunning the same command continues; "
               "130 interrupted.")
"""The exit statuses, as every command's help ends with them."""


def share(text: str) -> float:
    """``--allow-failures``' value: a share of rows in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return value


def add_allow_failures(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-failures", dest="allow_failures", nargs="?", type=share, const=1.0, default=0.0, metavar="SHARE",
                   help=f"exit 0 although rows are missing because their requests failed (with SHARE: while at most that "
                        f"share of them is); default: any missing row exits with status {FAILED_EXIT}")


def epilog(p: argparse.ArgumentParser) -> None:
    """Append the exit statuses to a command's help."""
    p.epilog = f"{p.epilog} {EXIT_STATUS}" if p.epilog else EXIT_STATUS


def finish(manifest: dict[str, Any], allow: float = 0.0) -> int:
    """Print what a finished run lacks, if anything; the exit status (``allow``: the share of rows
    that may be missing, per kind of row)."""
    lost = [m for m in manifest.get("missing") or [] if m["missing"]]
    if not lost:
        return 0
    what = ", ".join(f"{m['missing']} of {m['of']} {m['what']}" for m in lost)
    retry = sum(m["to_retry"] for m in lost)
    for_good = sum(m["missing"] - m["to_retry"] for m in lost)
    how = "; ".join(x for x in (
        f"{retry} failed for now: run the same command again to retry them" if retry else "",
        f"{for_good} failed for good (the error is in the run's rows)" if for_good else "") if x)
    if any(m["missing"] > allow * m["of"] for m in lost):
        print(f"rlaif: incomplete: missing {what} ({how}); --allow-failures accepts a run with rows missing", file=sys.stderr)
        return FAILED_EXIT
    print(f"rlaif: warning: missing {what} ({how}); accepted by --allow-failures", file=sys.stderr)
    return 0


def stopped_line(exc: BaseException) -> str:
    """The one line a command stopped by :class:`rlaif.engine.failures.ServerGone` prints."""
    return f"rlaif: stopped early: {exc}. Committed work is kept; run the same command again to continue."
