"""Builds the HTML report: sections per run folder, a comparison when there are several.

A section is one entry of :data:`SECTIONS`: which runs it applies to, a function from a run
to the template's context, a function comparing several runs' contexts, and a template. A
run folder gets every section that applies to it (a ``generate --label`` run: generate and
label). A new kind of run folder is one more entry and one more template.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rlaif.report.folders import ReportError, RunFolder

HERE = Path(__file__).parent
REPORT_NAME = "report.html"


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    template: str
    applies: Callable[[RunFolder], bool]
    build: Callable[[RunFolder], dict[str, Any]]
    compare: Callable[[list[tuple[RunFolder, dict[str, Any]]]], list[dict[str, Any]]]


def _sections() -> list[Section]:
    from rlaif.report import eval_section, generate_section, judge_card_section, label_section, ratings_section, train_section

    return [
        Section("generate", "Critique and revision", "generate.html", generate_section.applies, generate_section.build,
                generate_section.compare),
        Section("label", "AI labels", "label.html", label_section.applies, label_section.build, label_section.compare),
        Section("ratings", "Human ratings", "ratings.html", ratings_section.applies, ratings_section.build, ratings_section.compare),
        Section("judge_card", "Judge audit", "judge_card.html", judge_card_section.applies, judge_card_section.build,
                judge_card_section.compare),
        Section("train", "Training", "train.html", train_section.applies, train_section.build, train_section.compare),
        Section("eval", "Evaluation", "eval.html", eval_section.applies, eval_section.build, eval_section.compare),
    ]


def _labels(runs: Sequence[RunFolder]) -> None:
    """Names to show: the folder name, with as many parent folders as needed to be unique."""
    parts = [r.path.resolve().parts for r in runs]
    depth = 1
    while depth < max(len(p) for p in parts):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            break
        depth += 1
    for r, p in zip(runs, parts):
        r.label = "/".join(p[-depth:])


def _fmt(value: Any, kind: str) -> str:
    """A value of the side-by-side table in its row's format ("pct", "num" or "text")."""
    return _pct(value) if kind == "pct" else _num(value) if kind == "num" else "–" if value is None else str(value)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e6):
            return f"{value:.{digits}g}"
        return f"{value:,.{digits}f}"
    return str(value)


def _environment():
    try:
        from jinja2 import Environment, FileSystemLoader, StrictUndefined
    except ImportError as exc:
        raise ReportError(f"rlaif report needs jinja2 and matplotlib ({exc}); install with: pip install 'rlaif[report]'") from None
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, num=_num)
    return env


def render(paths: Sequence[str | Path]) -> str:
    """The report's HTML for these run folders (one or several)."""
    if not paths:
        raise ReportError("no run folder given")
    env = _environment()  # before any work: a missing package is said at once
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ReportError(f"rlaif report needs jinja2 and matplotlib ({exc}); install with: pip install 'rlaif[report]'") from None
    runs = [RunFolder(p) for p in paths]
    seen = {}
    for r in runs:
        key = r.path.resolve()
        if key in seen:
            raise ReportError(f"{r.path} is given twice")
        seen[key] = r
    _labels(runs)
    sections = _sections()
    columns = []
    by_section: dict[str, list[tuple[RunFolder, dict[str, Any]]]] = {}
    for run in runs:
        parts = []
        for s in sections:
            if s.applies(run):
                ctx = s.build(run)
                parts.append({"section": s, "ctx": ctx})
                by_section.setdefault(s.key, []).append((run, ctx))
        columns.append({"run": run, "parts": parts})
    comparison = None
    if len(runs) > 1:
        rows: dict[tuple[str, str], str] = {}  # (section title, row name) -> format, in order
        for s in sections:
            for run, ctx in by_section.get(s.key, []):
                for name, _, kind in ctx["headline"]:
                    rows.setdefault((s.title, name), kind)
        table = []
        for (title, name), kind in rows.items():
            values = []
            for col in columns:
                value = None
                for part in col["parts"]:
                    if part["section"].title == title:
                        value = {n: v for n, v, _ in part["ctx"]["headline"]}.get(name)
                values.append(_fmt(value, kind))
            table.append({"section": title, "name": name, "values": values})
        figures = [fig for s in sections for fig in s.compare(by_section.get(s.key, []))]
        comparison = {"table": table, "figures": figures}
    template = env.get_template("report.html")
    return template.render(
        columns=columns, comparison=comparison, multi=len(runs) > 1,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        title="rlaif report: " + ", ".join(r.label for r in runs),
    )


def build_report(paths: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write the report of these run folders and return its path.

    One run folder: ``RUN/report.html``, or ``OUT/report.html`` with ``out``. Several run
    folders compare side by side and need ``out``.
    """
    from rlaif.data.runs import atomic_write_text

    paths = [Path(p) for p in paths]
    if out is None and len(paths) > 1:
        raise ReportError("a report over several run folders needs --out DIR (where to write report.html)")
    html = render(paths)
    target_dir = Path(out) if out is not None else paths[0]
    if target_dir.exists() and not target_dir.is_dir():
        raise ReportError(f"--out {target_dir} exists and is not a folder")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / REPORT_NAME
        atomic_write_text(target, html)
    except OSError as exc:
        raise ReportError(f"cannot write {target_dir / REPORT_NAME}: {exc.strerror or exc}") from None
    os.chmod(target, 0o644)
    return target
