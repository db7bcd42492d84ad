"""``rlaif publish RUN --out DIR``: a run folder's datasets as a folder ready to share.

``DIR`` holds one config per dataset of the run, each a parquet file with one ``train`` split:

    DIR/README.md                               the dataset card: YAML metadata + provenance in words
    DIR/sft/train-<hash>.parquet                (generate, bon: conversational ``messages``)
    DIR/preferences/train-<hash>.parquet        (TRL's ``prompt`` / ``chosen`` / ``rejected``)
    DIR/steps/train-<hash>.parquet              (where the run has step labels)
    DIR/provenance/manifest.json, judge_card.json, constitution sources

so that ``datasets.load_dataset(DIR, "preferences", split="train")`` (or the Hub id after
``--push``) reads it. ``<hash>`` is the first 16 hex digits of the file's sha256: ``datasets``
caches a local folder's config by the folder's name and its data file paths, not their content
(seen with datasets 5.2: a second folder called ``pub`` loaded the first one's cached rows), so a
file name that changes with the content keeps a republished folder from reading stale rows. The card (:mod:`rlaif.data.card`) names the configs in its YAML
``configs:`` section, which is how ``datasets`` finds them. Empty datasets are left out (and said
so in the card). The folder is written beside ``DIR`` and renamed into place at the end, so a crash
never leaves half a dataset; an existing ``DIR`` is replaced only with ``overwrite``.

``push`` uploads the folder to a Hub dataset repository with ``huggingface_hub.HfApi``
(``create_repo(..., repo_type="dataset", exist_ok=True)`` then ``upload_folder``); the token is
huggingface_hub's own (``HF_TOKEN`` or ``huggingface-cli login``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

CONFIGS = ("sft", "preferences", "steps")


class PublishError(ValueError):
    """The run folder cannot be published as asked; the message says why."""


def read_run(run: str | Path) -> dict[str, Any]:
    """The finished run's manifest (RunDir's reader: output paths point into the folder as it is now)."""
    from rlaif.data.runs import RunDir, RunFolderError

    path = Path(run)
    if not (path / "manifest.json").is_file():
        hint = " (it has not finished: run the same command again)" if (path / "chunks").is_dir() else ""
        raise PublishError(f"{path} is not a finished run folder: no manifest.json{hint}")
    try:
        return RunDir(str(path)).read_manifest()
    except RunFolderError as exc:
        raise PublishError(str(exc)) from None


def load_configs(run: Path) -> dict[str, Any]:
    """The run's datasets by config name (saved ``datasets`` folders), empty ones left out."""
    import datasets

    out = {}
    for name in CONFIGS:
        folder = run / name
        if (folder / "dataset_info.json").is_file() or (folder / "state.json").is_file():
            ds = datasets.load_from_disk(str(folder))
            if len(ds):
                out[name] = ds
    return out


def human_ratings(run: Path) -> dict[str, Any] | None:
    """Agreement of the AI labels with the ratings ``rlaif review`` stored in ``RUN/reviews.jsonl``, or None."""
    if not (run / "reviews.jsonl").is_file() or not (run / "preferences.jsonl").is_file():
        return None
    from rlaif.review.data import ReviewStore, load_pairs
    from rlaif.review.stats import compute_stats

    pairs = {p.id: p for p in load_pairs(run)}
    reviews = ReviewStore(run / "reviews.jsonl", pairs).reviews()
    return compute_stats(pairs, reviews) if reviews else None


def publish(run: str | Path, out: str | Path, *, pretty_name: str | None = None, license: str = "other",
            language: list[str] | None = None, overwrite: bool = False, log: Callable[[str], None] = print) -> Path:
    """Write ``out`` from run folder ``run`` (see the module docstring); returns ``out``."""
    from rlaif.data.card import dataset_card

    run, out = Path(run), Path(out)
    manifest = read_run(run)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PublishError(f"{out} exists and is not empty; give another --out or add --overwrite")
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents:
        raise PublishError("--out must be outside the run folder")
    configs = load_configs(run)
    if not configs:
        raise PublishError(f"{run} holds no rows to publish (its sft and preference datasets are empty)")
    judge_card = _read_json(run / "judge_card.json")
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    import datasets

    bars_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    files = {}
    try:
        for name, ds in configs.items():
            (work / name).mkdir()
            tmp = work / name / "train.parquet"
            ds.to_parquet(str(tmp))
            files[name] = f"{name}/train-{_sha256(tmp)[:16]}.parquet"
            tmp.rename(work / files[name])
    finally:
        if bars_on:
            datasets.enable_progress_bars()
    prov = work / "provenance"
    prov.mkdir()
    shutil.copy2(run / "manifest.json", prov / "manifest.json")
    if judge_card is not None:
        shutil.copy2(run / "judge_card.json", prov / "judge_card.json")
    for rel in (manifest.get("constitution") or {}).get("files") or {}:
        src = run / rel
        if src.is_file() and ".." not in Path(rel).parts and not Path(rel).is_absolute():
            (prov / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, prov / rel)
    card = dataset_card(manifest, configs, files, pretty_name=pretty_name or f"rlaif {run.name}", license=license,
                        language=language, judge_card=judge_card, humans=human_ratings(run),
                        missing=[c for c in CONFIGS if c not in configs and (run / c).is_dir()])
    (work / "README.md").write_text(card, encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    log(f"{out}: " + ", ".join(f"{name} ({len(ds)} rows)" for name, ds in configs.items()) + " + README.md")
    return out


def push(folder: str | Path, repo_id: str, private: bool = False, api: Any = None) -> str:
    """Upload a published folder to the Hub dataset repository ``repo_id``; returns its URL."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                      commit_message="rlaif publish: datasets and dataset card")
    return f"https://huggingface.co/datasets/{repo_id}"


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PublishError(f"{path} is not readable JSON: {exc}") from None
