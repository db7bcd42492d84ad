"""The ``--verdict`` flags, the same for ``rlaif label``, ``rlaif generate`` (as ``label.*`` settings) and
``rlaif eval`` (see :mod:`rlaif.pipeline.verdicts`)."""

from __future__ import annotations

import argparse
from typing import Any

from rlaif.pipeline.verdicts import VERDICT_FIELDS, VERDICT_FORMATS, VERDICT_MODES


def add_verdict_flags(p: argparse.ArgumentParser, dest_prefix: str = "", defaults: bool = True) -> None:
    """``dest_prefix`` "label." files them under generate's label settings; ``defaults`` False leaves
    them None (generate resolves its defaults from the settings layers)."""
    d = (lambda v: v) if defaults else (lambda v: None)  # noqa: E731
    p.add_argument("--verdict", dest=f"{dest_prefix}verdict", choices=list(VERDICT_MODES), default=d("logprobs"),
                   help="how the judge's verdict is read: 'logprobs' (option log-probabilities, default) or 'sampled' "
                        "(K sampled verdicts per comparison, for judges that return no log-probabilities)")
    p.add_argument("--verdict-samples", dest=f"{dest_prefix}verdict_samples", type=int, default=d(4), metavar="K",
                   help="sampled verdicts: valid votes per comparison (default 4)")
    p.add_argument("--verdict-format", dest=f"{dest_prefix}verdict_format", choices=list(VERDICT_FORMATS), default=d("json"),
                   help="sampled verdicts: 'json' ({\"answer\": \"A\"}, checked against a JSON schema; default) or 'letter' (the option alone)")
    p.add_argument("--no-verdict-grammar", dest=f"{dest_prefix}verdict_grammar", action="store_false", default=d(True),
                   help="sampled verdicts: do not send the format as a grammar (for a server that refuses response_format)")
    p.add_argument("--verdict-retries", dest=f"{dest_prefix}verdict_retries", type=int, default=d(2), metavar="N",
                   help="sampled verdicts: times a malformed verdict is asked again (default 2)")
    p.add_argument("--verdict-max-tokens", dest=f"{dest_prefix}verdict_max_tokens", type=int, default=d(32), metavar="N",
                   help="sampled verdicts: most tokens of one verdict (default 32)")


def verdict_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``verdict_*`` fields of :class:`rlaif.pipeline.judge.LabelSettings` from label's or eval's flags."""
    return {k: getattr(args, k) for k in VERDICT_FIELDS}
