"""A finished labelled run folder read back: its pairs, labels, comparisons and settings.

Both kinds are read the same way: ``rlaif label`` folders (and the folders ``rlaif relabel``
writes, which are label folders) keep one label row per pair in ``chunks/NNNNN.jsonl``, their
pairs in ``NNNNN.pairs.jsonl`` and final labels in ``labels.jsonl``; ``rlaif generate --label``
folders keep pair and label together in ``chunks/NNNNN.labels.jsonl``, and their final labels
are built again from them (:func:`rlaif.pipeline.label.finalise_labels`, deterministic).
Folders written before rlaif kept pairs and comparisons (:mod:`rlaif.pipeline.judge_records`)
read with ``pairs`` or ``records`` None.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.data import textio
from rlaif.data.runs import RunDir, RunFolderError
from rlaif.engine.base import SamplingConfig
from rlaif.pipeline.config import fingerprint
from rlaif.pipeline.judge import LabelSettings, Pair, PairLabel
from rlaif.pipeline.judge_records import JUDGEMENTS, PAIRS, pair_from_row
from rlaif.pipeline.label import FINALISE_ONLY, finalise_labels, label_from_row

_LABEL_FIELDS = {f.name for f in dataclasses.fields(LabelSettings)}


class RunReadError(ValueError):
    """A folder that is not a finished labelled run (one line, for the command line)."""


@dataclass
class LabelledRun:
    path: Path
    kind: str
    """'label' (rlaif label and rlaif relabel) or 'generate' (rlaif generate --label)."""
    fingerprint: str
    settings: dict[str, Any]
    manifest: dict[str, Any]
    label_settings: LabelSettings
    """How the run judged, final-output settings (length control, ties) included."""
    feedback_model: str
    chunk_size: int
    pair_ids: list[str]
    judge_labels: list[PairLabel]
    """The judge's labels, before length control."""
    labels: list[PairLabel]
    """The run's final labels (what its preference rows were built from)."""
    pairs: list[Pair] | None
    records: list[dict[str, Any]] | None
    """Every stored comparison (:mod:`rlaif.pipeline.judge_records`); None if the run kept none."""
    chunk_records: list[list[dict[str, Any]]] | None
    identity: dict[str, Any] | None
    """The judge of its comparisons (the latest chunk's), where recorded."""

    @property
    def pairs_sha256(self) -> str | None:
        """The hash ``rlaif label`` records of its pairs, computed the same way for every kind."""
        if self.pairs is not None:
            return fingerprint([[p.id, list(p.prompt), p.response_a, p.response_b] for p in self.pairs])
        return self.settings.get("pairs_sha256")

    def draws(self) -> dict[str, list[str]]:
        """Each pair's principles in the order they were drawn: from its comparisons, else (older
        folders, or a pair whose comparisons all failed) from its label; absent when unknown."""
        out: dict[str, list[str]] = {}
        for r in self.records or ():
            seen = out.setdefault(r["pair"], [])
            if r["principle"] not in seen:
                seen.append(r["principle"])
        for lab in self.judge_labels:
            if lab.per_principle and lab.pair_id not in out:
                out[lab.pair_id] = list(lab.per_principle)
        return out


def label_settings_from(section: dict[str, Any], finalise: dict[str, Any], seed: int | None = None) -> LabelSettings:
    """The :class:`LabelSettings` a run recorded (its ``label`` section; generate's has more keys,
    and its seed is the run's)."""
    values = {k: v for k, v in section.items() if k in _LABEL_FIELDS}
    values.update({k: v for k, v in (finalise or {}).items() if k in FINALISE_ONLY})
    if seed is not None:
        values["seed"] = seed
    if "cot_clamp" in values:
        values["cot_clamp"] = tuple(values["cot_clamp"])
    if isinstance(values.get("cot_sampling"), dict):
        values["cot_sampling"] = SamplingConfig(**values["cot_sampling"])
    return LabelSettings(**values)


def read_labelled_run(path: str | Path) -> LabelledRun:
    run = RunDir(path)
    if not run.path.is_dir():
        raise RunReadError(f"{run.path} is not a run folder")
    try:
        stored = textio.read_json(run.settings_file, RunFolderError) if run.settings_file.exists() else None
        if stored is None:
            raise RunReadError(f"{run.path} holds no run (no settings.json)")
        if not run.manifest_file.exists():
            raise RunReadError(f"{run.path} has not finished: run the command that made it again to complete it")
        manifest = run.read_manifest()
        settings = stored["settings"]
        if settings.get("kind") == "label":
            return _read_label(run, stored, manifest)
        if "prompts_sha256" in settings and isinstance(settings.get("label"), dict):
            if not settings["label"].get("enabled"):
                raise RunReadError(f"{run.path} was generated without --label: it has no AI labels")
            return _read_generate(run, stored, manifest)
    except RunFolderError as exc:
        raise RunReadError(str(exc)) from None
    raise RunReadError(f"{run.path} is not a labelled run (made by rlaif label, rlaif relabel or rlaif generate --label)")


def _side(run: RunDir, name: str) -> list[list[dict[str, Any]]] | None:
    """Every committed chunk's side file, or None when a chunk has none."""
    indexes = sorted(run.committed())
    if not all((run.chunks / f"{i:05d}.{name}.jsonl").exists() for i in indexes):
        return None
    return [run.read_chunk(i, name) for i in indexes]


def _identity(run: RunDir) -> dict[str, Any] | None:
    found = [s["judge"] for s in run.chunk_stats() if s.get("judge")]
    return found[-1] if found else None


def _read_label(run: RunDir, stored: dict[str, Any], manifest: dict[str, Any]) -> LabelledRun:
    s = stored["settings"]
    judge_labels = [label_from_row(r) for r in run.read_chunks()]
    final_rows = textio.read_jsonl(run.path / "labels.jsonl", RunFolderError)
    labels = [label_from_row({k: v for k, v in r.items() if k != "id"}) for r in final_rows]
    pair_rows = _side(run, PAIRS)
    chunk_records = _side(run, JUDGEMENTS)
    return LabelledRun(
        path=run.path, kind="label", fingerprint=stored["fingerprint"], settings=s, manifest=manifest,
        label_settings=label_settings_from(s["label"], manifest.get("finalise", {})),
        feedback_model=s["feedback_model"], chunk_size=s["chunk_size"],
        pair_ids=[lab.pair_id for lab in judge_labels], judge_labels=judge_labels, labels=labels,
        pairs=None if pair_rows is None else [pair_from_row(r) for rows in pair_rows for r in rows],
        records=None if chunk_records is None else [r for rows in chunk_records for r in rows],
        chunk_records=chunk_records, identity=_identity(run),
    )


def _read_generate(run: RunDir, stored: dict[str, Any], manifest: dict[str, Any]) -> LabelledRun:
    s = stored["settings"]
    rows = run.read_chunks("labels")
    pairs = [pair_from_row(r["pair"]) for r in rows]
    judge_labels = [label_from_row({k: v for k, v in r.items() if k != "pair"}) for r in rows]
    settings = label_settings_from(s["label"], manifest.get("finalise", {}), seed=s.get("seed", 0))
    labels, _ = finalise_labels(pairs, judge_labels, settings)
    chunk_records = _side(run, JUDGEMENTS)
    return LabelledRun(
        path=run.path, kind="generate", fingerprint=stored["fingerprint"], settings=s, manifest=manifest,
        label_settings=settings, feedback_model=s["label"].get("feedback_model") or s["model"], chunk_size=s["chunk_size"],
        pair_ids=[p.id for p in pairs], judge_labels=judge_labels, labels=labels, pairs=pairs,
        records=None if chunk_records is None else [r for rows in chunk_records for r in rows],
        chunk_records=chunk_records, identity=_identity(run),
    )
