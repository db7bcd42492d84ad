"""``rlaif generate``: prompts -> critique-and-revise trajectories -> SFT and preference datasets."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import rlaif
from rlaif.pipeline.config import GenerateConfig, fingerprint
from rlaif.constitution import Constitution
from rlaif.pipeline.label import (FINALISE_ONLY, ai_preference_features, ai_preference_row, finalise_labels, finalise_record,
                             keep_for_dataset, label_from_row)
from rlaif.engine.base import Engine
from rlaif.data.prompts import read_prompts
from rlaif.data.records import PromptRecord, Trajectory
from rlaif.data.runs import RunDir, chunked, missing
from rlaif.pipeline.distributed import ChunkResult, ChunkTask, run_chunks
from rlaif.pipeline.constructed import CONSTRUCTED, constructed_rows, row_features
from rlaif.pipeline.generate_chunks import GenerateJob
from rlaif.pipeline.judge_records import JUDGEMENTS, pair_from_row, read_side
from rlaif.data.rows import preference_features, preference_row, sft_features, sft_row

EngineFactory = Callable[[], Engine]


def _provenance_features() -> dict[str, Any]:
    """Columns every generated row carries (see :func:`_provenance`)."""
    from datasets import Sequence, Value

    return {
        "id": Value("string"),
        "prompt_id": Value("string"),
        "sample": Value("int64"),
        "category": Value("string"),
        "constitution": Value("string"),
        "constitution_sha256": Value("string"),
        "principle_ids": Sequence(Value("string")),
        "model": Value("string"),
        "rounds": Value("int64"),
    }


def _features(kind: str):
    common = _provenance_features()
    return sft_features(common) if kind == "sft" else preference_features(common)


def _provenance(t: Trajectory, const: Constitution, model: str) -> dict[str, Any]:
    return {
        "id": t.id,
        "prompt_id": t.prompt_id,
        "sample": t.sample,
        "category": str(t.meta.get("category", "")),
        "constitution": const.name,
        "constitution_sha256": const.sha256,
        "principle_ids": [r.principle_id for r in t.rounds],
        "model": model,
        "rounds": len(t.rounds),
    }


def sft_rows(trajs: list[Trajectory], const: Constitution, model: str) -> list[dict[str, Any]]:
    """Prompt plus final revision, as conversational ``messages``."""
    return [sft_row(t.prompt, t.final, **_provenance(t, const, model)) for t in trajs if t.status == "ok" and t.final]


def preference_rows(trajs: list[Trajectory], const: Constitution, model: str) -> list[dict[str, Any]]:
    """TRL conversational preference rows: final revision (chosen) over initial response (rejected).

    Trajectories without a revision, or whose revision repeats the initial response, carry
    no preference and are left out.
    """
    rows = []
    for t in trajs:
        if t.status != "ok" or not t.rounds or not t.final or t.initial is None or t.final == t.initial.text:
            continue
        rows.append(preference_row(t.prompt, t.final, t.initial.text, "revision", **_provenance(t, const, model)))
    return rows


def token_stats(trajs: list[Trajectory]) -> dict[str, dict[str, int]]:
    stats: dict[str, Counter] = {s: Counter() for s in ("response", "critique", "revision")}
    for t in trajs:
        steps = [("response", t.initial)] if t.initial else []
        for r in t.rounds:
            steps += [("critique", r.critique), ("revision", r.revision)]
        for stage, step in steps:
            c = stats[stage]
            c["requests"] += 1
            c["prompt_tokens"] += step.prompt_tokens
            c["completion_tokens"] += step.completion_tokens
            c["hit_length_limit"] += step.finish_reason == "length"
    return {k: dict(v) for k, v in stats.items()}


def _ai_extra_features():
    from datasets import Sequence, Value

    # The pair's own id replaces the trajectory id; "sample" is per response, so it is left out.
    extra = {k: v for k, v in _provenance_features().items() if k not in ("id", "sample")}
    return {**extra, "response_ids": Sequence(Value("string"))}


def ai_rows(run: RunDir, trajs: list[Trajectory], cfg: GenerateConfig, const: Constitution, model_id: str,
            feedback_id: str | None = None):
    """Preference rows from the committed AI labels, with the trajectories' provenance; the
    counts, and the diagnostics and length control of :func:`rlaif.pipeline.label.finalise_labels`."""
    by_id = {t.id: t for t in trajs}
    settings = cfg.label
    rows, counts = [], Counter()
    raw = run.read_chunks("labels")
    # Each label row names the model that answered it; rows committed before that was recorded
    # fall back to the feedback model the run was started with.
    answered = [r.pop("feedback_model", None) or feedback_id or cfg.label.feedback_model or model_id for r in raw]
    read = [(pair_from_row(r.pop("pair")), label_from_row(r)) for r in raw]
    pairs = [p for p, _ in read]
    # Labels are final only now that every pair is scored (length control fits over all of them).
    labels, judge = finalise_labels(pairs, [l for _, l in read], settings)
    for pair, lab, judge_name in zip(pairs, labels, answered):
        counts["label_pairs"] += 1
        counts["label_failed"] += lab.error is not None
        counts["label_ties"] += lab.error is None and lab.chosen is None
        counts["label_orders_agreed"] += lab.order_agreement == 1.0
        counts["label_revision_preferred"] += cfg.label.pairs == "revision" and lab.error is None and lab.chosen == "b"
        if not keep_for_dataset(lab, settings):
            continue
        # "a" is the trajectory id (ends in "#<sample>"), with ":initial" in revision pairs; a prompt id may hold ":"
        src = by_id[pair.meta["a"].removesuffix(":initial")]
        row = ai_preference_row(pair, lab, judge_name)
        prov = _provenance(src, const, model_id)
        row.update({k: prov[k] for k in ("prompt_id", "category", "constitution", "constitution_sha256", "principle_ids", "model", "rounds")})
        row["response_ids"] = [pair.meta["a"], pair.meta["b"]] if lab.chosen == "a" else [pair.meta["b"], pair.meta["a"]]
        rows.append(row)
    return rows, dict(counts), judge


def git_commit() -> dict[str, Any]:
    root = Path(rlaif.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}
    if sha.returncode != 0:
        return {"commit": None}
    return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def run_settings(cfg: GenerateConfig, const: Constitution, prompts: list[PromptRecord], model_id: str) -> dict[str, Any]:
    """The settings that shape the rows; their hash is the run's fingerprint."""
    settings = cfg.to_dict()
    settings.pop("out")
    settings.pop("ray")  # where chunks run does not change their rows
    for k in FINALISE_ONLY:  # they shape only how committed labels become rows
        settings["label"].pop(k, None)
    settings["model"] = model_id
    settings["constitution_sha256"] = const.sha256
    settings["prompts_sha256"] = fingerprint([[p.id, list(p.messages)] for p in prompts])
    settings["n_prompts"] = len(prompts)
    return settings


def finalise_settings(cfg: GenerateConfig) -> dict[str, Any]:
    """The label settings applied when outputs are built (left out of the fingerprint)."""
    lc = cfg.to_dict()["label"]
    return finalise_record({k: lc[k] for k in FINALISE_ONLY})


def generate(
    cfg: GenerateConfig,
    const: Constitution,
    engine_factory: EngineFactory,
    model_id: str,
    overwrite: bool = False,
    feedback_factory: EngineFactory | None = None,
    log: Callable[[str], None] = print,
    show_progress: bool = True,
    feedback_id: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) a critique-and-revise job and write its datasets; returns the manifest.

    ``feedback_factory`` starts the feedback model's own engine (None: the policy's engine
    judges); ``feedback_id`` names it for label rows committed before rlaif recorded, per label,
    the model that answered (see :func:`rlaif.engine.answered_by`).
    """
    t_start = time.time()
    prompts = read_prompts(cfg.prompts, limit=cfg.limit)
    settings = run_settings(cfg, const, prompts, model_id)
    fp = fingerprint(settings)
    run = RunDir(cfg.out)
    state = run.open(settings, fp, overwrite=overwrite)
    # Committed chunks keep their rows, except those that failed for a transient reason
    # (a server that gave up after its retries): they are processed again.
    retry = _to_redo(run) if state != "new" else {}
    if state == "done" and retry:
        state = "resume"  # finished, but with transient failures to try again
    previous_engine: dict[str, Any] = {}
    if state == "done":
        manifest = run.read_manifest()
        if manifest.get("finalise", finalise_settings(cfg)) == finalise_settings(cfg):
            log(f"{run.path} is already complete: nothing to do ({manifest['counts']['trajectories']} trajectories).")
            return manifest
        # Every pair is scored; only how labels become rows changed: rebuild the outputs, no model needed.
        log(f"{run.path}: every chunk is committed; building the outputs again with {finalise_settings(cfg)}")
        previous_engine = manifest.get("engine") or {}

    chunks = chunked(prompts, cfg.chunk_size)
    committed = run.committed()
    todo = [i for i in range(len(chunks)) if i not in committed]
    if state == "resume":
        log(f"resuming {run.path}: {len(chunks) - len(todo)} of {len(chunks)} chunks already committed"
            + (f"; retrying transient failures in {len(retry)} of them" if retry else ""))
    engine_info: dict[str, Any] = previous_engine
    work = sorted([*todo, *retry])
    if work:
        tasks = [ChunkTask(i, chunks[i]) if i not in retry else
                 ChunkTask(i, chunks[i], frozenset(retry[i][0]), tuple(run.read_chunk(i)),
                           {**_old_side(run, i), JUDGEMENTS: read_side(run, i, JUDGEMENTS)}) for i in work]
        bar = _tqdm(total=len(chunks), initial=len(chunks) - len(todo), desc="chunks", unit="chunk", disable=not show_progress)

        new_chunks = set(todo)

        def commit(task: ChunkTask, result: ChunkResult) -> None:
            run.commit_chunk(task.index, result.rows, result.stats, result.side)
            if task.index in new_chunks:
                bar.update(1)

        job = GenerateJob(cfg, const, engine_factory, feedback_factory if cfg.label.enabled else None, len(chunks))
        engine_info = run_chunks(job, tasks, commit, cfg.ray, in_process_model=cfg.engine.backend in ("vllm", "transformers"),
                                 log=log, bar=bar)
        bar.close()
    return finalize(run, cfg, const, settings, fp, model_id, engine_info, t_start, log, feedback_id=feedback_id)


def _to_redo(run: RunDir) -> dict[int, tuple[set[str], set[str]]]:
    """Per committed chunk, the ids of its trajectories and of its label pairs that failed for now."""
    trajs, labels = run.to_redo(), run.to_redo(key=lambda r: r["pair"]["id"], side="labels")
    return {i: (trajs.get(i, set()), labels.get(i, set())) for i in sorted({*trajs, *labels})}


def _old_side(run: RunDir, index: int) -> dict[str, tuple[dict[str, Any], ...]]:
    """A committed chunk's side rows that a redo keeps: its labels, and RLCD's contrast answers (asked once)."""
    return {name: tuple(run.read_chunk(index, name)) for name in ("labels", "contrast")
            if (run.chunks / f"{index:05d}.{name}.jsonl").exists()}


def finalize(run: RunDir, cfg, const, settings, fp, model_id, engine_info, t_start, log, feedback_id=None) -> dict[str, Any]:
    """Build every output from the committed chunks (idempotent); manifest last."""
    raw = run.read_chunks()
    trajs = [Trajectory.from_row(r) for r in raw]
    lost = [missing("trajectories", raw)]
    sft = sft_rows(trajs, const, model_id)
    run.save_dataset("sft", sft, _features("sft"))
    label_counts: dict[str, int] = {}
    judge: dict[str, Any] = {}
    if cfg.label.pairs in CONSTRUCTED:  # west-of-n, rlcd: labelled by construction (the judge, with --label, checks them)
        prefs, label_counts, judge = constructed_rows(run, trajs, cfg, const, model_id, lambda t: _provenance(t, const, model_id))
        if cfg.label.enabled:  # the judge's check of the pairs: a check whose requests failed is missing too
            lost.append(missing("AI labels", run.read_chunks("labels")))
        run.save_dataset("preferences", prefs, row_features(cfg.label.pairs, _ai_extra_features()))
    elif cfg.label.enabled:
        prefs, label_counts, judge = ai_rows(run, trajs, cfg, const, model_id, feedback_id)
        lost.append(missing("AI labels", run.read_chunks("labels")))
        run.save_dataset("preferences", prefs, ai_preference_features(_ai_extra_features()))
    else:
        prefs = preference_rows(trajs, const, model_id)
        run.save_dataset("preferences", prefs, _features("preferences"))
    from rlaif.pipeline.diagnostics import preference_lengths, text_length_counter

    lengths = preference_lengths(prefs, *text_length_counter(model_id))
    failed = [{"id": t.id, "prompt_id": t.prompt_id, "reason": t.failure} for t in trajs if t.status == "failed"]
    run.write_jsonl("failed.jsonl", failed)
    run.copy_sources(const.file_texts)
    stats = token_stats(trajs)
    gen_wall = sum(s.get("wall_s", 0.0) for s in run.chunk_stats())
    completion_tokens = sum(s.get("completion_tokens", 0) for s in stats.values())
    principle_counts = Counter(r.principle_id for t in trajs for r in t.rounds)
    manifest = {
        "rlaif_version": rlaif.__version__,
        "git": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "fingerprint": fp,
        "settings": settings,
        "finalise": finalise_settings(cfg),
        "constitution": {
            **const.provenance(),
            "files": {rel: _sha(text) for rel, text in const.file_texts.items()},
        },
        "prompts": {"path": str(cfg.prompts), "sha256": settings["prompts_sha256"], "count": settings["n_prompts"]},
        "model": {"spec": cfg.model, "resolved": model_id},
        "engine": engine_info,
        "counts": {
            "prompts": settings["n_prompts"],
            "trajectories": len(trajs),
            "ok": sum(t.status == "ok" for t in trajs),
            "failed": len(failed),
            "sft_rows": len(sft),
            "preference_rows": len(prefs),
            "principles_used": dict(sorted(principle_counts.items())),
            **label_counts,
        },
        "missing": lost,
        **({"diagnostics": judge["diagnostics"], "length_control": judge["length_control"]} if judge else {}),
        **({"verdicts": judge["verdicts"]} if judge.get("verdicts") else {}),
        **({"pair_check": judge["pair_check"]} if judge.get("pair_check") else {}),
        "preference_lengths": lengths,
        "tokens": stats,
        "timing": {
            "generation_wall_s": round(gen_wall, 2),
            "completion_tokens_per_s": round(completion_tokens / gen_wall, 2) if gen_wall else None,
            "this_invocation_wall_s": round(time.time() - t_start, 2),
        },
        "outputs": {
            "sft": str(run.path / "sft"),
            "preferences": str(run.path / "preferences"),
            "sft_jsonl": str(run.path / "sft.jsonl"),
            "preferences_jsonl": str(run.path / "preferences.jsonl"),
            "failed_jsonl": str(run.path / "failed.jsonl"),
        },
    }
    run.write_manifest(manifest)
    return manifest


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _tqdm(**kwargs):
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


def summary_table(manifest: dict[str, Any]) -> str:
    """A plain-text summary of a finished run."""
    c, tok, timing = manifest["counts"], manifest["tokens"], manifest["timing"]
    lines = [
        f"run folder      {Path(manifest['outputs']['sft']).parent}",
        f"constitution    {manifest['constitution']['name']} ({manifest['constitution']['sha256'][:12]})",
        f"model           {manifest['model']['resolved']}",
        f"prompts         {c['prompts']}   trajectories {c['trajectories']}   ok {c['ok']}   failed {c['failed']}",
        f"sft rows        {c['sft_rows']}   preference rows {c['preference_rows']}",
    ]
    if manifest.get("preference_lengths"):
        from rlaif.pipeline.diagnostics import format_preference_lengths

        lines.append(format_preference_lengths(manifest["preference_lengths"]))
    if "constructed_pairs" in c:
        check = manifest.get("pair_check")
        lines.append(f"pairs           {c['constructed_pairs']} by construction ({manifest['settings']['label']['pairs']})"
                     + (f"   the judge agrees with {100 * check['agreement']:.0f}% of {check['judged']} judged" if check and
                        check.get("agreement") is not None else ""))
    if "label_pairs" in c:
        lines.append(
            f"AI labels       {c['label_pairs']} pairs   failed {c.get('label_failed', 0)}   ties {c.get('label_ties', 0)}   "
            f"both orders agreed {c.get('label_orders_agreed', 0)}"
            + (f"   revision preferred {c.get('label_revision_preferred', 0)}" if "label_revision_preferred" in c else "")
        )
    if manifest.get("diagnostics"):
        from rlaif.pipeline.diagnostics import format_diagnostics

        lines += format_diagnostics(manifest["diagnostics"], manifest.get("length_control"))
    lines += [
        "",
        f"{'stage':<10}{'requests':>10}{'prompt tok':>12}{'output tok':>12}{'hit limit':>11}",
    ]
    for stage in ("response", "critique", "revision"):
        s = tok.get(stage, {})
        lines.append(
            f"{stage:<10}{s.get('requests', 0):>10}{s.get('prompt_tokens', 0):>12}{s.get('completion_tokens', 0):>12}{s.get('hit_length_limit', 0):>11}"
        )
    rate = timing.get("completion_tokens_per_s")
    lines.append("")
    lines.append(f"generation time {timing['generation_wall_s']:.1f} s" + (f"   {rate:.1f} output tok/s" if rate else ""))
    return "\n".join(lines)

