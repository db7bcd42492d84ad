"""Run folders as the report reads them: what kind each is, and its files, read once.

Kinds, recognised by their files:

- **generate**: ``manifest.json`` whose ``counts`` has ``trajectories`` (``rlaif generate``);
  with ``--label`` it also carries AI labels, and the report adds a label section.
- **label**: ``manifest.json`` whose ``settings.kind`` is ``"label"`` (``rlaif label``).
- **train**: ``metrics.jsonl`` and ``config.yaml`` (``rlaif train sft|rm|dpo|ppo``).
- **eval**: ``manifest.json`` whose ``settings.kind`` is ``"eval"`` (``rlaif eval``).

JSON Lines are split on "\\n" only (:mod:`rlaif.data.textio`), never ``str.splitlines``.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from rlaif.data import textio


class ReportError(Exception):
    """A folder the report cannot be made from (not a run folder, unreadable files)."""


KNOWN_KINDS = ("generate", "label", "train", "eval")


def detect_kind(path: Path) -> str:
    """``"generate"``, ``"label"``, ``"train"`` or ``"eval"``; :class:`ReportError` says why not."""
    if not path.exists():
        raise ReportError(f"{path} does not exist")
    if not path.is_dir():
        raise ReportError(f"{path} is not a folder; rlaif report takes run folders (made by rlaif generate, label, train or eval)")
    manifest = path / "manifest.json"
    if manifest.is_file():
        m = textio.read_json(manifest, ReportError)
        if not isinstance(m, dict):
            raise ReportError(f"{manifest} is not a JSON object")
        settings = m.get("settings") if isinstance(m.get("settings"), dict) else {}
        if settings.get("kind") in ("label", "eval"):
            return settings["kind"]
        if isinstance(m.get("counts"), dict) and "trajectories" in m["counts"]:
            return "generate"
        kind = settings.get("kind") or m.get("kind")
        raise ReportError(f"{path} holds a run of a kind rlaif report does not know ({kind or 'no kind recorded'}); "
                          f"it reports on {', '.join(KNOWN_KINDS)} run folders")
    if (path / "metrics.jsonl").is_file() and (path / "config.yaml").is_file():
        return "train"
    if (path / "settings.json").is_file() and (path / "chunks").is_dir():
        raise ReportError(f"{path} holds a run that has not finished (no manifest.json yet): run the same rlaif "
                          "generate/label/eval command again to finish it, then make the report")
    if (path / "config.yaml").is_file():
        raise ReportError(f"{path} holds a training run with no metrics.jsonl yet (it has not logged a step)")
    raise ReportError(f"{path} is not a run folder: it has no manifest.json (rlaif generate, label or eval) and no "
                      "metrics.jsonl with config.yaml (rlaif train)")


def read_jsonl_tolerant(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a JSON Lines file that may be being written (a training run's metrics): lines
    split on "\\n" only; lines that do not parse as a JSON object are skipped and counted."""
    rows, skipped = [], 0
    for _, line in textio.lines(textio.read_text(path, ReportError)):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            skipped += 1
    return rows, skipped


class RunFolder:
    """One run folder; its files are read on first use and kept."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.kind = detect_kind(self.path)
        self.name = self.path.resolve().name
        self.label = self.name  # the name shown; made unique among the report's runs
        self.notes: list[str] = []  # things the reader skipped, shown in the report

    @cached_property
    def manifest(self) -> dict[str, Any]:
        f = self.path / "manifest.json"
        return textio.read_json(f, ReportError) if f.is_file() else {}

    @cached_property
    def trajectories(self) -> list[dict[str, Any]]:
        """Every committed trajectory (``chunks/NNNNN.jsonl``) of a generate run, in order."""
        chunks = self.path / "chunks"
        if not chunks.is_dir():
            return []
        files = sorted(p for p in chunks.glob("[0-9]*.jsonl") if p.stem.isdigit())
        return [row for f in files for row in textio.read_jsonl(f, ReportError, what="damaged trajectory row")]

    @cached_property
    def chunk_stats(self) -> list[dict[str, Any]]:
        chunks = self.path / "chunks"
        files = sorted(chunks.glob("[0-9]*.stats.json")) if chunks.is_dir() else []
        return [textio.read_json(f, ReportError) for f in files]

    @cached_property
    def preferences(self) -> list[dict[str, Any]]:
        f = self.path / "preferences.jsonl"
        return textio.read_jsonl(f, ReportError, what="damaged preference row") if f.is_file() else []

    @cached_property
    def failed(self) -> list[dict[str, Any]]:
        f = self.path / "failed.jsonl"
        return textio.read_jsonl(f, ReportError, what="damaged row") if f.is_file() else []

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        f = self.path / "metrics.jsonl"
        if not f.is_file():
            return []
        rows, skipped = read_jsonl_tolerant(f)
        if skipped:
            self.notes.append(f"metrics.jsonl: {skipped} line(s) skipped (not a JSON object; a line still being written?)")
        return rows

    @cached_property
    def train_config(self) -> dict[str, Any]:
        f = self.path / "config.yaml"
        value = textio.read_yaml(f, ReportError) if f.is_file() else {}
        return value if isinstance(value, dict) else {}
