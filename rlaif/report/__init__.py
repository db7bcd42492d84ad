"""``rlaif report RUN... [--out DIR]``: a static HTML report of run folders.

One self-contained file (``report.html``): Jinja2 templates with autoescaping (model text is
shown as text, never as markup), matplotlib figures drawn on the Agg backend and embedded as
PNG data URIs, inline CSS, no scripts, and a content security policy that lets the page load
nothing but its own embedded images: it opens offline and makes no request.

- :mod:`rlaif.report.folders`: which kind a run folder is, and its files.
- :mod:`rlaif.report.numbers`: the numbers, as pure functions.
- :mod:`rlaif.report.plots`: the figures.
- ``generate_section``, ``label_section``, ``train_section``: one section per kind of run.
- :mod:`rlaif.report.build`: sections per run, the side-by-side comparison, the file.

Importing this package imports neither matplotlib nor jinja2; building a report does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rlaif.report.folders import ReportError

__all__ = ["ReportError", "build_report", "refresh"]


def build_report(runs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write the report of one or several run folders; returns the path of ``report.html``
    (in the run folder, or in ``out``; several run folders need ``out``)."""
    from rlaif.report.build import build_report as _build

    return _build(runs, out)


def refresh(run_dir: str | Path) -> Path:
    """Write (or rewrite) ``RUN/report.html`` for one finished run folder and return its path.

    For commands to call when they finish (``rlaif generate``, ``label``, ``train``), then
    print the path. Raises :class:`ReportError` when the report cannot be made (the report's
    packages missing, a folder that is not a run folder); a caller that must not fail because
    of the report catches it and prints the message as a warning.
    """
    return build_report([run_dir])
