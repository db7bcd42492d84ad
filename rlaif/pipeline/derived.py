"""Run folders made from another run's rows (``rlaif calibrate``, ``rlaif export``).

A derived folder holds what a labelled run holds for the commands after it: ``preferences/``
(``datasets.save_to_disk``) and ``preferences.jsonl``, ``manifest.json`` (``settings.kind`` is
"label", so ``rlaif report`` shows it as labels; ``derived_from`` names the source run and its
fingerprint), the copies of ``constitution/`` and ``principles/`` when the source has them, and
the command's own files (``calibration.json``, ...). It holds no ``chunks/`` and no
``reviews.jsonl``: its rows may be oriented differently from the source's (swapped pairs), so
ratings of the source would be read the wrong way round.

The folder is written whole under a temporary name next to ``--out`` and renamed into place:
after a crash there is either no folder or the complete one. An existing ``--out`` is refused
unless ``overwrite``.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import rlaif
from rlaif.data import textio
from rlaif.data.runs import RunDir, atomic_write_text

NEW_COLUMNS: dict[str, str] = {
    # column -> Value dtype or "[dtype]" for a list; added to the source's features when missing
    "chosen_prob": "float64", "likert": "int64", "margin": "float64", "flags": "[string]",
    "judge_chosen_prob": "float64",
    "ai_label_source": "string", "ai_chosen_prob": "float64", "ai_agrees": "bool",
    "human_ratings": "int64", "human_likerts": "[int64]", "human_reviewers": "[string]",
    "human_flags_chosen": "[string]", "human_flags_rejected": "[string]",
}


class DerivedError(ValueError):
    """An output folder that cannot be written as asked (one line, exit status 2)."""


def check_out(out: str | Path, source: str | Path, overwrite: bool) -> Path:
    """``--out`` checked before any work: not the source, not an existing folder (unless ``overwrite``)."""
    out, source = Path(out), Path(source)
    if out.resolve() == source.resolve():
        raise DerivedError(f"--out {out} is the run folder itself; write the new run to another folder")
    if out.exists() and not out.is_dir():
        raise DerivedError(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DerivedError(f"--out {out} already holds files; choose another folder, or pass --overwrite to replace it")
    return out


def features_for(source: Path, rows: Sequence[Mapping[str, Any]]):
    """The source's preference features with the columns of :data:`NEW_COLUMNS` the rows use."""
    import datasets

    try:
        base = dict(datasets.load_from_disk(str(source / "preferences")).features)
    except (FileNotFoundError, OSError, ValueError):
        base = dict(datasets.Dataset.from_list([dict(r) for r in rows]).features) if rows else {}
    used = {k for r in rows for k in r}
    for name, dtype in NEW_COLUMNS.items():
        if name in used and name not in base:
            base[name] = datasets.Sequence(datasets.Value(dtype[1:-1])) if dtype.startswith("[") else datasets.Value(dtype)
    missing = used - set(base)
    if missing:
        raise DerivedError(f"rows carry columns the source's dataset does not describe: {sorted(missing)}")
    return datasets.Features({k: v for k, v in base.items() if k in used})


def derived_manifest(source: Path, command: str, counts: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The new folder's manifest: the source's judge, constitution and diagnostics, new counts."""
    src_file = source / "manifest.json"
    src = textio.read_json(src_file, DerivedError) if src_file.is_file() else {}
    settings = src.get("settings") if isinstance(src.get("settings"), dict) else {}
    kind = settings.get("kind") or ("generate" if "trajectories" in (src.get("counts") or {}) else None)
    return {
        "rlaif_version": rlaif.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"kind": "label", "derived": command, "label": settings.get("label") or {},
                     "feedback_model": settings.get("feedback_model"), "constitution_sha256": settings.get("constitution_sha256")},
        "derived_from": {"path": str(source), "kind": kind, "fingerprint": src.get("fingerprint"), "command": command},
        "constitution": src.get("constitution"),
        "engine": src.get("engine"),
        "diagnostics": src.get("diagnostics"),
        "length_control": src.get("length_control"),
        "counts": counts,
        **extra,
    }


def write_derived(out: Path, source: Path, rows: list[dict[str, Any]], manifest: dict[str, Any],
                  files: Mapping[str, Any], overwrite: bool) -> Path:
    """Write the whole folder under a temporary name, then rename it to ``out`` (see the module docstring)."""
    out = Path(out)
    features = features_for(source, rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        run = RunDir(tmp)
        tmp.mkdir()
        run.save_dataset("preferences", rows, features)
        for sub in ("constitution", "principles"):
            if (source / sub).is_dir():
                shutil.copytree(source / sub, tmp / sub)
        for name, value in files.items():
            atomic_write_text(tmp / name, textio.dumps(value, indent=2))
        manifest = {**manifest, "outputs": {"preferences": str(out / "preferences")}}
        run.write_manifest(manifest)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            if not overwrite and any(out.iterdir()):
                raise DerivedError(f"--out {out} already holds files; pass --overwrite to replace it")
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
