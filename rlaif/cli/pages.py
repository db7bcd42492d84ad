"""``rlaif review`` and ``rlaif report``: the commands that serve or write pages."""

from __future__ import annotations

import argparse

from rlaif.cli.errors import UserError


def review(args: argparse.Namespace) -> int:
    try:
        import rlaif.review.app  # noqa: F401  (the web packages: starlette, uvicorn, jinja2)
        from rlaif.review.server import run
    except ImportError as exc:
        raise UserError(f"rlaif review needs the web packages ({exc}); install with: pip install 'rlaif[review]'") from None
    from rlaif.review.access import check_allowed_host
    from rlaif.review.data import ReviewError

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0-65535, not {args.port}")
    if not 0 < args.target < 50:
        raise UserError(f"--target must be between 0 and 50 percentage points, not {args.target:g}")
    try:
        allowed = [check_allowed_host(h) for h in args.allowed_hosts]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        return run(args.run, host=args.host, port=args.port, reviewer=args.reviewer, allowed_hosts=allowed,
                   order=args.order, target=args.target / 100)
    except ReviewError as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:  # a bad --reviewer name
        raise UserError(f"--reviewer: {exc}") from None
    except OSError as exc:
        raise UserError(str(exc)) from None


def report(args: argparse.Namespace) -> int:
    from rlaif.report import ReportError, build_report

    try:
        path = build_report(args.runs, args.out)
    except ReportError as exc:
        raise UserError(str(exc)) from None
    print(path)
    return 0
