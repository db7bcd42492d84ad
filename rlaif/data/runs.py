"""Run folders: settings fingerprint, atomic chunk commits, resume, finalize, manifest.

Layout of ``runs/<name>/``::

    settings.json            resolved settings and their fingerprint (written first)
    chunks/00000.jsonl       committed chunks: one trajectory per line
    chunks/00000.stats.json  wall time of that chunk
    constitution/, principles/   copies of the files that shaped the run
    sft/, preferences/       datasets.save_to_disk folders   (finalize)
    sft.jsonl, preferences.jsonl                              (finalize)
    manifest.json            provenance and counts; written last

A chunk is committed by writing ``NNNNN.jsonl.tmp``, flushing, fsyncing and renaming it:
a chunk file either exists whole or not at all, whatever moment the process dies. The set
of committed chunk files is the only state; finalize rebuilds every output from it, so it
can be repeated safely.

A committed chunk is committed again (the same atomic way) in one case only: when some of
its rows failed for a transient reason, the next run of the same command (``rlaif generate``,
``label``, ``bon``, ``eval``) redoes those rows and writes every other row back unchanged.
Chunk files without such rows are never rewritten.

Failed rows, the one convention every command keeps: a row, or a part of one (a label, a
yes/no check, one of best-of-N's candidates), whose request failed records ``error`` (the
message; a trajectory: ``status: failed``) and ``retryable``: true when it failed for now (a
connection error, a timeout, 429 or 5xx after the engine's retries; see
:mod:`rlaif.engine.failures`), false when it failed for good (a prompt longer than the
context). :meth:`RunDir.to_redo` finds the rows to redo, :func:`missing` counts what a
finished run lacks (the manifest's ``missing`` entries, which set the command's exit status).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from rlaif.data import textio


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked (other settings, damaged files)."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunDir:
    def __init__(self, path: str | Path, chunks: str = "chunks"):
        """``chunks`` is the folder of committed chunks inside the run folder; a run made of
        stages (``rlaif eval``) gives each stage its own, e.g. ``chunks/policy``."""
        self.path = Path(path)
        self.chunks = self.path / chunks

    # ------------------------------------------------------------ settings

    @property
    def settings_file(self) -> Path:
        return self.path / "settings.json"

    def open(self, settings: dict[str, Any], fingerprint: str, overwrite: bool = False) -> str:
        """Prepare the folder for a run with these settings.

        Returns ``"new"``, ``"resume"`` or ``"done"``. A folder holding a run with other
        settings is refused unless ``overwrite`` is set, which deletes its outputs first.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} exists and is not a folder")
        settings = json.loads(json.dumps(settings, default=str))  # compare as stored (tuples become lists)
        if self.settings_file.exists():
            try:
                old = textio.read_json(self.settings_file, RunFolderError)
            except RunFolderError:
                old = {}
            if old.get("fingerprint") != fingerprint:
                if not overwrite:
                    changed = _diff(old.get("settings", {}), settings)
                    raise RunFolderError(
                        f"{self.path} holds a run made with other settings ({changed}); "
                        "choose another --out, or pass --overwrite to delete it and start over"
                    )
                self.clear()
            elif self.manifest_file.exists():
                return "done"
            else:
                self._sweep_temp()
                return "resume"
        elif self.path.exists() and any(self.path.iterdir()):
            known = {"chunks", "sft", "preferences", "manifest.json"}
            if not overwrite and any(p.name in known for p in self.path.iterdir()):
                raise RunFolderError(f"{self.path} holds files of an unknown run; choose another --out or pass --overwrite")
            if overwrite:
                self.clear()
        self.chunks.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.settings_file, textio.dumps({"fingerprint": fingerprint, "settings": settings}, indent=2, default=str))
        return "new"

    def clear(self) -> None:
        for name in ("chunks", "sft", "preferences", "constitution", "principles"):
            shutil.rmtree(self.path / name, ignore_errors=True)
        for name in ("sft.jsonl", "preferences.jsonl", "manifest.json", "settings.json", "failed.jsonl"):
            (self.path / name).unlink(missing_ok=True)

    def _sweep_temp(self) -> None:
        """Remove half-written files left by a process that died mid-write."""
        for tmp in list(self.chunks.glob("*.tmp")) + list(self.path.glob(".*.tmp*")):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------ chunks

    def chunk_file(self, index: int) -> Path:
        return self.chunks / f"{index:05d}.jsonl"

    def committed(self) -> set[int]:
        return {int(p.stem) for p in self.chunks.glob("[0-9]*.jsonl") if p.stem.isdigit()}

    def commit_chunk(self, index: int, rows: Iterable[dict[str, Any]], stats: dict[str, Any],
                     side: dict[str, Iterable[dict[str, Any]]] | None = None) -> None:
        """Commit a finished chunk atomically (again, when redoing its transient failures).

        Side files (``NNNNN.<name>.jsonl``, e.g. labels) and stats are written first; the
        rename of the main chunk file is the commit point, so side files without it mean nothing.
        """
        atomic_write_text(self.chunks / f"{index:05d}.stats.json", textio.dumps(stats))
        for name, side_rows in (side or {}).items():
            atomic_write_text(self.chunks / f"{index:05d}.{name}.jsonl", textio.dumps_jsonl(side_rows))
        atomic_write_text(self.chunk_file(index), textio.dumps_jsonl(rows))

    def to_redo(self, parts: Parts | None = None, key: str | Callable[[dict[str, Any]], str] = "id",
                side: str | None = None) -> dict[int, set[str]]:
        """Ids (``row[key]``) per committed chunk of the rows with a part that failed for now: the
        rows the next run redoes. ``parts(row)`` names where a row keeps its requests' results (the
        row itself by default); ``side``: look in that side file of each chunk (where it exists)."""
        get = (lambda r: r[key]) if isinstance(key, str) else key
        out: dict[int, set[str]] = {}
        for index in sorted(self.committed()):
            if side is not None and not (self.chunks / f"{index:05d}.{side}.jsonl").exists():
                continue
            ids = {get(row) for row in self.read_chunk(index, side) if any(failed_for_now(p) for p in (parts or whole_row)(row))}
            if ids:
                out[index] = ids
        return out

    def read_chunks(self, side: str | None = None) -> list[dict[str, Any]]:
        """Rows of every committed chunk in order (or of their ``side`` files)."""
        return [row for index in sorted(self.committed()) for row in self.read_chunk(index, side)]

    def read_chunk(self, index: int, side: str | None = None) -> list[dict[str, Any]]:
        path = self.chunk_file(index) if side is None else self.chunks / f"{index:05d}.{side}.jsonl"
        if not path.exists():
            raise RunFolderError(f"{path} is missing for committed chunk {index}")
        # split on "\n" only (textio.lines): chunks written by older versions hold raw U+2028,
        # U+2029 and U+0085 inside strings, which str.splitlines() would cut rows at
        return textio.read_jsonl(path, RunFolderError, what="damaged row")

    def chunk_stats(self) -> list[dict[str, Any]]:
        out = []
        for index in sorted(self.committed()):
            f = self.chunks / f"{index:05d}.stats.json"
            if f.exists():
                out.append(textio.read_json(f, RunFolderError))
        return out

    # ------------------------------------------------------------ outputs

    @property
    def manifest_file(self) -> Path:
        return self.path / "manifest.json"

    def save_dataset(self, name: str, rows: list[dict[str, Any]], features=None) -> None:
        """Write ``name/`` with ``save_to_disk`` and ``name.jsonl``, each replaced atomically."""
        import datasets

        target = self.path / name
        tmp = self.path / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        datasets.disable_progress_bars()  # a bar per tiny save is noise next to the stage bars
        ds = datasets.Dataset.from_list(rows, features=features) if rows else _empty_dataset(features)
        # an empty dataset is saved as 0 shards by default, which load_from_disk cannot read back
        ds.save_to_disk(str(tmp), **({} if rows or features is None else {"num_shards": 1}))
        old = self.path / f".{name}.old.tmp"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
        atomic_write_text(self.path / f"{name}.jsonl", textio.dumps_jsonl(rows))

    def copy_sources(self, file_texts: dict[str, str]) -> None:
        for rel, text in file_texts.items():
            atomic_write_text(self.path / rel, text)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(self.manifest_file, textio.dumps(manifest, indent=2, default=str))

    def read_manifest(self) -> dict[str, Any]:
        """The finished run's manifest, its output paths pointing into this folder (a run folder that
        was moved or copied names where its files are now, not where they were written)."""
        manifest = textio.read_json(self.manifest_file, RunFolderError)
        outputs = manifest.get("outputs")
        if isinstance(outputs, dict):
            manifest["outputs"] = {k: str(self.path / Path(v).name) if isinstance(v, str) and Path(v).parent != self.path else v
                                   for k, v in outputs.items()}
        return manifest

    def write_jsonl(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        """Replace ``name`` (e.g. ``failed.jsonl``) atomically with these rows."""
        atomic_write_text(self.path / name, textio.dumps_jsonl(rows))


Parts = Callable[[dict[str, Any]], Iterable[Any]]


def whole_row(row: dict[str, Any]) -> tuple[dict[str, Any]]:
    return (row,)


def failed(part: Any) -> bool:
    """A row or part of one that records a failed request: ``error`` set, or ``status: failed``."""
    return isinstance(part, dict) and bool(part.get("error") or part.get("status") == "failed")


def failed_for_now(part: Any) -> bool:
    """A failed row or part whose failure was transient (``retryable``): the next run does it again."""
    return failed(part) and bool(part.get("retryable"))


def missing(what: str, rows: Iterable[dict[str, Any]], parts: Parts | None = None) -> dict[str, Any]:
    """A manifest's ``missing`` entry: of the ``rows`` (named ``what``), how many lack something
    because a request failed, and how many of those failed for now (``to_retry``)."""
    rows = list(rows)
    bad = [[p for p in (parts or whole_row)(r) if failed(p)] for r in rows]
    return {"what": what, "of": len(rows), "missing": sum(bool(b) for b in bad),
            "to_retry": sum(any(failed_for_now(p) for p in b) for b in bad)}


def _empty_dataset(features):
    import datasets

    if features is not None:
        return datasets.Dataset.from_dict({k: [] for k in features}, features=features)
    return datasets.Dataset.from_dict({})


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _diff(a, b, f"{prefix}{key}.")
            if inner:
                changes.append(inner)
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return "; ".join(changes[:4]) + ("; ..." if len(changes) > 4 else "")


def chunked(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]

