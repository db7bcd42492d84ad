"""``rlaif generate``: prompts -> critique-and-revise trajectories -> SFT and preference datasets."""

from __future__ import annotations

import itertools
import random
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
from rlaif.pipeline.config import LabelConfig
from rlaif.pipeline.critique import LoopSettings, run_chunk
from rlaif.seeds import derive_seed
from rlaif.pipeline.judge import Pair, label_pairs
from rlaif.pipeline.label import (FINALISE_ONLY, ai_preference_features, ai_preference_row, finalise_labels,
                             keep_for_dataset, label_from_row, label_to_row)
from rlaif.engine import answered_by
from rlaif.engine.base import Engine, describe
from rlaif.data.prompts import read_prompts
from rlaif.data.records import PromptRecord, Trajectory
from rlaif.data.runs import RunDir, chunked
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
    settings = cfg.label.settings(cfg.seed)
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
        src = by_id[pair.meta["a"].split(":")[0]]
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
    return {k: lc[k] for k in FINALISE_ONLY}


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
    if state == "done" and any(any(_retryable(run, i)) for i in run.committed()):
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
    # Committed chunks keep their rows, except those that failed for a transient reason
    # (a server that gave up after its retries): they are processed again.
    retry = {i: _retryable(run, i) for i in sorted(committed)}
    retry = {i: ids for i, ids in retry.items() if ids[0] or ids[1]}
    if state == "resume":
        log(f"resuming {run.path}: {len(chunks) - len(todo)} of {len(chunks)} chunks already committed"
            + (f"; retrying transient failures in {len(retry)} of them" if retry else ""))
    loop = LoopSettings(cfg.rounds, cfg.samples_per_prompt, cfg.seed, cfg.sampling)
    engine_info: dict[str, Any] = previous_engine
    work = sorted([*todo, *retry])
    if work:
        engine = engine_factory()
        feedback = engine
        try:
            if cfg.label.enabled and feedback_factory is not None:
                feedback = feedback_factory()
            bar = _tqdm(total=len(chunks), initial=len(chunks) - len(todo), desc="chunks", unit="chunk", disable=not show_progress)
            for i in work:
                t0 = time.time()
                tag = f"chunk {i + 1}/{len(chunks)}"
                old_rows = {r["id"]: r for r in run.read_chunk(i)} if i in retry else {}
                old_labels = {r["pair"]["id"]: r for r in run.read_chunk(i, "labels")} if i in retry and cfg.label.enabled else {}
                redo_ids = retry[i][0] if i in retry else None
                subset = chunks[i] if redo_ids is None else [p for p in chunks[i] if any(t.startswith(f"{p.id}#") for t in redo_ids)]
                fresh = {t.id: t for t in run_chunk(engine, const, subset, loop, label=tag)} if subset else {}
                # keep every committed row that did not fail transiently; take the new one otherwise
                trajs = [fresh[tid] if (tid in fresh and (redo_ids is None or tid in redo_ids)) else Trajectory.from_row(old_rows[tid])
                         for tid in _chunk_ids(chunks[i], cfg.samples_per_prompt)]
                side = {}
                if cfg.label.enabled:
                    pairs = make_pairs(trajs, cfg.label, cfg.seed)
                    keep = {p.id: old_labels[p.id] for p in pairs if _label_still_valid(old_labels.get(p.id), p)}
                    need = [p for p in pairs if p.id not in keep]
                    before = Counter(getattr(feedback, "reported_models", {}))
                    new = dict(zip([p.id for p in need], label_pairs(feedback, const, need, cfg.label.settings(cfg.seed), desc=f"{tag} label")))
                    answered = answered_by(feedback, before)  # what answered (a server's reported name), not what was asked for
                    side["labels"] = [keep[p.id] if p.id in keep else {"pair": pair_to_row(p), **label_to_row(new[p.id]), "feedback_model": answered}
                                      for p in pairs]
                stats = {"chunk": i, "wall_s": time.time() - t0, "conversations": len(trajs)}
                run.commit_chunk(i, [t.to_row() for t in trajs], stats, side)
                if i in todo:
                    bar.update(1)
            bar.close()
            engine_info = describe(engine)  # after the work: a server's engine then knows which models answered
            if feedback is not engine:
                engine_info["feedback"] = describe(feedback)
        finally:
            if feedback is not engine:
                feedback.close()
            engine.close()
    return finalize(run, cfg, const, settings, fp, model_id, engine_info, t_start, log, feedback_id=feedback_id)


def _chunk_ids(prompts: list[PromptRecord], samples: int) -> list[str]:
    return [f"{p.id}#{s}" for p in prompts for s in range(samples)]


def _retryable(run: RunDir, index: int) -> tuple[set[str], set[str]]:
    """Ids of a committed chunk's trajectories and label pairs that failed transiently."""
    trajs = {r["id"] for r in run.read_chunk(index) if r["status"] == "failed" and r.get("retryable")}
    labels = set()
    if (run.chunks / f"{index:05d}.labels.jsonl").exists():
        labels = {r["pair"]["id"] for r in run.read_chunk(index, "labels") if r.get("error") and r.get("retryable")}
    return trajs, labels


def _label_still_valid(row: dict[str, Any] | None, pair: Pair) -> bool:
    if row is None or (row.get("error") and row.get("retryable")):
        return False
    old = row["pair"]
    return old["response_a"] == pair.response_a and old["response_b"] == pair.response_b


def make_pairs(trajs: list[Trajectory], lc: LabelConfig, seed: int) -> list[Pair]:
    """Pairs to label from one chunk's trajectories (see :class:`rlaif.pipeline.config.LabelConfig`)."""
    ok = [t for t in trajs if t.status == "ok" and t.final is not None and t.initial is not None]
    pairs: list[Pair] = []
    if lc.pairs == "revision":
        for t in ok:
            if t.rounds:
                pairs.append(Pair(f"{t.id}:initial~final", t.prompt, t.initial.text, t.final,
                                  meta={"category": t.meta.get("category", ""), "a": f"{t.id}:initial", "b": f"{t.id}:final"}))
        return pairs
    by_prompt: dict[str, list[Trajectory]] = {}
    for t in ok:
        by_prompt.setdefault(t.prompt_id, []).append(t)
    for pid, group in by_prompt.items():
        combos = list(itertools.combinations(group, 2))
        if lc.pairs == "samples-random" and len(combos) > lc.pairs_per_prompt:
            rng = random.Random(derive_seed(seed, pid, "pairs"))
            combos = sorted(rng.sample(combos, lc.pairs_per_prompt), key=lambda c: (c[0].sample, c[1].sample))
        for x, y in combos:
            pairs.append(Pair(f"{pid}#{x.sample}~{y.sample}", x.prompt, x.final, y.final,
                              meta={"category": x.meta.get("category", ""), "a": x.id, "b": y.id}))
    return pairs


def pair_to_row(p: Pair) -> dict[str, Any]:
    return {"id": p.id, "prompt": [dict(m) for m in p.prompt], "response_a": p.response_a, "response_b": p.response_b, "meta": p.meta}


def pair_from_row(r: dict[str, Any]) -> Pair:
    return Pair(r["id"], tuple(r["prompt"]), r["response_a"], r["response_b"], None, r.get("meta") or {})


def finalize(run: RunDir, cfg, const, settings, fp, model_id, engine_info, t_start, log, feedback_id=None) -> dict[str, Any]:
    """Build every output from the committed chunks (idempotent); manifest last."""
    trajs = [Trajectory.from_row(r) for r in run.read_chunks()]
    sft = sft_rows(trajs, const, model_id)
    run.save_dataset("sft", sft, _features("sft"))
    label_counts: dict[str, int] = {}
    judge: dict[str, Any] = {}
    if cfg.label.enabled:
        prefs, label_counts, judge = ai_rows(run, trajs, cfg, const, model_id, feedback_id)
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
        **({"diagnostics": judge["diagnostics"], "length_control": judge["length_control"]} if judge else {}),
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
    if "label_pairs" in c:
        lines.append(
            f"AI labels       {c['label_pairs']} pairs   failed {c.get('label_failed', 0)}   ties {c.get('label_ties', 0)}   "
            f"both orders agreed {c.get('label_orders_agreed', 0)}   revision preferred {c.get('label_revision_preferred', 0)}"
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

