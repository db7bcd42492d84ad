"""``rlaif label``: bring-your-own pairs -> AI preference dataset, with agreement reports.

Runs in chunks committed atomically like ``rlaif generate`` (same run-folder rules:
resumable, refuses other settings), and writes ``DIR/preferences`` the same way.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import rlaif
from rlaif.pipeline.config import fingerprint
from rlaif.constitution import Constitution
from rlaif.engine import answered_by
from rlaif.engine.base import Engine, describe
from rlaif.pipeline.judge import LabelSettings, Pair, PairLabel, label_pairs
from rlaif.pipeline.judge_records import JUDGEMENTS, PAIRS, JudgeCache, Reuse, merged_records, pair_row, read_side
from rlaif.data.runs import RunDir, chunked, missing
from rlaif.data.rows import preference_features, preference_row
from rlaif.pipeline.distributed import ChunkResult, ChunkTask, RayConfig, run_chunks
from rlaif.pipeline.verdicts import verdict_report, without_default_verdict


FINALISE_ONLY = ("length_control", "keep_ties")
"""Label settings that only shape how the committed labels become outputs: they are left out
of the run's fingerprint, so changing them rebuilds the outputs without scoring again."""


def finalise_record(finalise: dict[str, Any]) -> dict[str, Any]:
    """What a run's manifest records of how its labels became outputs: the :data:`FINALISE_ONLY`
    settings and, with length control, the method of its fit, so that a folder finalised by
    another method is rebuilt (from its committed scores, with no model) when run again."""
    if finalise.get("length_control"):
        from rlaif.pipeline.length_control import METHOD

        return {**finalise, "length_model": METHOD}
    return dict(finalise)


def label_to_row(lab: PairLabel) -> dict[str, Any]:
    row = asdict(lab)
    row["flags"] = list(lab.flags)
    row["slot_probs"] = {k: list(v) for k, v in lab.slot_probs.items()}
    return row


def label_from_row(row: dict[str, Any]) -> PairLabel:
    row = dict(row)
    row.pop("feedback_model", None)  # which model answered: provenance kept next to the label, not part of it
    row["flags"] = tuple(row.get("flags", ()))
    row["slot_probs"] = {k: tuple(v) for k, v in (row.get("slot_probs") or {}).items()}
    return PairLabel(**row)


def finalise_labels(pairs: Sequence[Pair], labels: Sequence[PairLabel], settings: LabelSettings,
                    principle_weights: dict[str, float] | None = None, calibration: Any = None) -> tuple[list[PairLabel], dict[str, Any]]:
    """The run's final labels from the judge's labels of *all* its pairs, and what was learned
    about the judge: ``{"diagnostics": ..., "length_control": ..., "calibration": ...}``.

    The diagnostics describe the judge's own labels. In order: ``principle_weights``
    (``--principle-reliability``) make each label the weighted mean of its principles
    (:func:`rlaif.pipeline.ratings.reweighted_label`); with ``settings.length_control`` the
    labels are corrected by the length model fitted over every pair (so this runs once the
    last chunk is committed; ``length_control["after"]`` holds the corrected labels' length
    correlation); a ``calibration`` (:class:`rlaif.pipeline.calibrate.Calibration`) then maps
    each label's P to the humans' (``calibration["swaps"]``: labels whose side changed).
    """
    from rlaif.pipeline.diagnostics import judge_diagnostics, label_length_bias
    from rlaif.pipeline.length_control import apply_length_control

    info: dict[str, Any] = {"diagnostics": judge_diagnostics(pairs, labels), "length_control": None, "calibration": None,
                            "verdicts": verdict_report(labels, settings)}
    final = list(labels)
    if principle_weights:
        from rlaif.pipeline.ratings import reweighted_label

        final = [reweighted_label(l, principle_weights, settings.tie_band) for l in final]
    if settings.length_control:
        final, fit = apply_length_control(pairs, final, settings.both_orders, settings.tie_band)
        info["length_control"] = {**fit.to_dict(), "after": label_length_bias(pairs, final) if fit.applied else None}
    if calibration is not None:
        from rlaif.pipeline.calibrate import calibrated_label

        done = [calibrated_label(l, calibration, settings.tie_band) for l in final]
        final = [l for l, _ in done]
        info["calibration"] = {"source": calibration.source, "coef": list(calibration.coef), "n": calibration.n,
                               "swaps": sum(swapped for _, swapped in done), "calibrated": sum("calibrated" in l.flags for l in final)}
    return final, info


def ai_preference_features(extra: dict[str, Any] | None = None):
    from datasets import Sequence, Value

    return preference_features(
        {
            "chosen_prob": Value("float64"),
            "margin": Value("float64"),
            "likert": Value("int64"),
            "order_agreement": Value("float64"),
            "label_principles": Sequence(Value("string")),
            "label_principle_probs": Sequence(Value("float64")),
            "flags": Sequence(Value("string")),
            "feedback_model": Value("string"),
            "id": Value("string"),
            **(extra or {}),
        }
    )


def ai_preference_row(pair: Pair, lab: PairLabel, feedback_model: str) -> dict[str, Any]:
    """TRL conversational preference row with the AI label's graded outputs.

    ``chosen_prob`` is the probability that ``chosen`` is the better response;
    ``label_principle_probs`` are each principle's P(chosen better). A tie (kept only when
    asked) names no winner: the pair stays in its own order, with ``chosen_prob`` 0.5,
    ``margin`` 0, ``likert`` 0 and the flag "tie", so soft-label losses learn no side from it.
    """
    tie = lab.chosen is None
    a_wins = lab.chosen == "a" or tie
    chosen, rejected = (pair.response_a, pair.response_b) if a_wins else (pair.response_b, pair.response_a)
    probs = [p if a_wins else 1.0 - p for p in lab.per_principle.values()]
    return preference_row(
        pair.prompt, chosen, rejected, "ai",
        chosen_prob=lab.chosen_prob,
        margin=0.0 if tie else lab.margin,
        likert=0 if tie else lab.likert if a_wins else 9 - lab.likert,
        order_agreement=lab.order_agreement,
        label_principles=list(lab.per_principle),
        label_principle_probs=probs,
        flags=list(lab.flags),
        feedback_model=feedback_model,
        id=pair.id,
    )


def keep_for_dataset(lab: PairLabel, settings: LabelSettings) -> bool:
    if lab.error or "identical" in lab.flags:
        return False
    return settings.keep_ties or lab.chosen is not None


def agreement_report(pairs: Sequence[Pair], labels: Sequence[PairLabel]) -> dict[str, Any] | None:
    """Agreement with reference labels: overall, one order only, per category, split by
    whether the two orders agreed; calibration (Brier score of P(reference answer)); and
    split by whether the reference's better answer is the longer or the shorter one, with
    their mean, the length-controlled agreement (``by_length``, see
    :func:`rlaif.pipeline.diagnostics.length_split_agreement`). A tie counts as a miss."""
    from rlaif.pipeline.diagnostics import length_split_agreement

    scored = [(p, l) for p, l in zip(pairs, labels) if p.label and not l.error]
    if not scored:
        return None

    def summary(items) -> dict[str, Any]:
        n = len(items)
        if not n:
            return {"n": 0}
        hits = sum(l.chosen == p.label for p, l in items)
        ties = sum(l.chosen is None for _, l in items)
        first = sum((l.first_order_p_a > 0.5) == (p.label == "a") for p, l in items)
        brier = sum(((l.p_a if p.label == "a" else 1 - l.p_a) - 1.0) ** 2 for p, l in items) / n
        split = length_split_agreement(_length_records(items))
        return {"n": n, "agreement": hits / n, "ties": ties, "first_order_agreement": first / n, "brier": brier,
                "length_controlled_agreement": split["length_controlled"], "by_length": split}

    by_cat: dict[str, list] = defaultdict(list)
    for p, l in scored:
        by_cat[str(p.meta.get("category", "all"))].append((p, l))
    overall = summary(scored)
    return {
        "overall": overall,
        "by_length": overall["by_length"],
        "length_controlled_agreement": overall["length_controlled_agreement"],
        "orders_agreed": summary([(p, l) for p, l in scored if l.order_agreement == 1.0]),
        "orders_disagreed": summary([(p, l) for p, l in scored if l.order_agreement < 1.0]),
        "by_category": {c: summary(v) for c, v in sorted(by_cat.items())},
        "position_a_rate_first_order": sum(l.first_order_p_a > 0.5 for _, l in scored) / len(scored),
    }


def _length_records(items) -> list[tuple[int, int, bool]]:
    """(chars of the reference-better answer, chars of the other, agreed) per labelled pair."""
    out = []
    for p, l in items:
        better, other = (p.response_a, p.response_b) if p.label == "a" else (p.response_b, p.response_a)
        out.append((len(better), len(other), l.chosen == p.label))
    return out


def format_report(report: dict[str, Any]) -> str:
    o = report["overall"]
    bl = o["by_length"]
    lc = o["length_controlled_agreement"]
    lines = [
        f"length-controlled agreement with reference labels: {'n/a (needs both strata)' if lc is None else f'{lc:.1%}'}"
        f"  (better answer longer: {_fmt(bl['longer'])}; shorter: {_fmt(bl['shorter'])}"
        + (f"; equal length: {_fmt(bl['equal'])}" if bl["equal"]["n"] else "") + ")",
        f"agreement with reference labels: {o['agreement']:.1%} of {o['n']} pairs "
        f"(one order only: {o['first_order_agreement']:.1%}; Brier {o['brier']:.3f}; ties {o['ties']})",
        f"  orders agreed:    {_fmt(report['orders_agreed'])}",
        f"  orders disagreed: {_fmt(report['orders_disagreed'])}",
    ]
    for cat, s in report["by_category"].items():
        lc_cat = s.get("length_controlled_agreement") if s.get("n") else None
        lines.append(f"  {cat:<18}{_fmt(s)}" + (f"   length-controlled {lc_cat:.1%}" if lc_cat is not None else ""))
    return "\n".join(lines)


def _fmt(s: dict[str, Any]) -> str:
    return f"{s['agreement']:.1%} of {s['n']}" if s.get("n") else "none"


class LabelJob:
    """Labels one chunk of pairs on the feedback model's engine; writes nothing, so a Ray replica
    can run it (see :mod:`rlaif.pipeline.distributed`). A task with ``redo`` labels only those
    pairs again and keeps every other committed row. With ``judge_id`` (:func:`rlaif.pipeline.
    judge_records.judge_identity`) the chunk's pairs and comparisons are kept in side files, so
    that the run can be relabelled; ``reuse`` (a relabel) gives the pairs' draws and the
    comparisons that need not be sent again."""

    def __init__(self, const: Constitution, settings: LabelSettings, engine_factory: Callable[[], Engine], n_chunks: int,
                 judge_id: dict[str, Any] | None = None, reuse: Reuse | None = None):
        self.const, self.settings, self.engine_factory, self.n_chunks = const, settings, engine_factory, n_chunks
        self.judge_id, self.reuse = judge_id, reuse

    def start(self) -> tuple[Engine]:
        return (self.engine_factory(),)

    def describe(self, engines) -> dict[str, Any]:
        return describe(engines[0])  # after the work: a server's engine then knows which models answered

    def close(self, engines) -> None:
        engines[0].close()

    def run(self, engines, task: ChunkTask) -> ChunkResult:
        engine, t0 = engines[0], time.time()
        desc = f"chunk {task.index + 1}/{self.n_chunks} label"
        before = Counter(getattr(engine, "reported_models", {}))
        cache = None if self.judge_id is None else JudgeCache(self.judge_id, self.settings, self.reuse.entries if self.reuse else None)
        kw = {"desc": desc, "cache": cache, "draws": self.reuse.draws if self.reuse else None}
        if task.redo is not None:
            again = [p for p in task.items if p.id in task.redo]
            fresh = [label_to_row(l) for l in label_pairs(engine, self.const, again, self.settings, **kw)]
            new = {r["pair_id"]: r for r in fresh}
            rows = [new.get(r["pair_id"], r) for r in task.old_rows]
        else:
            fresh = rows = [label_to_row(l) for l in label_pairs(engine, self.const, task.items, self.settings, **kw)]
        answered = answered_by(engine, before)  # what answered (a server's reported name), not what was asked for
        for row in fresh:
            row["feedback_model"] = answered
        stats = {"chunk": task.index, "wall_s": time.time() - t0, "pairs": len(rows)}
        if cache is None:
            return ChunkResult(rows, stats)
        keep = set() if task.redo is None else {p.id for p in task.items} - task.redo  # pairs not judged again
        side = {PAIRS: [pair_row(p) for p in task.items],
                JUDGEMENTS: merged_records(task.old_side.get(JUDGEMENTS, ()), cache.records, keep, [p.id for p in task.items])}
        return ChunkResult(rows, {**stats, "judge": self.judge_id}, side)


def label_run(
    pairs: list[Pair],
    out: str,
    const: Constitution,
    settings: LabelSettings,
    engine_factory: Callable[[], Engine],
    feedback_model: str,
    chunk_size: int = 256, overwrite: bool = False, source: str = "",
    log: Callable[[str], None] = print, show_progress: bool = True,
    ray: RayConfig | None = None,
    in_process_model: bool = True,
    principle_weights: dict[str, float] | None = None,
    calibration: Any = None,
    judge_id: dict[str, Any] | None = None,
    reuse: Reuse | None = None,
) -> dict[str, Any]:
    """Label (or resume labelling) the pairs into ``out``; returns the manifest. ``ray``: run the
    chunks on Ray replicas (see :mod:`rlaif.pipeline.distributed`); ``in_process_model``: the
    engine loads the model itself (replicas then ask Ray for a GPU where there are some).
    ``principle_weights`` (``--principle-reliability``) enter the fingerprint; a ``calibration``
    (``--calibration``) only shapes the outputs, like length control (see :func:`finalise_labels`).
    ``judge_id`` and ``reuse``: see :class:`LabelJob` (a relabel: :mod:`rlaif.pipeline.relabel`)."""
    t_start = time.time()
    label_settings = without_default_verdict(asdict(settings))  # older run folders keep their fingerprint
    finalise = finalise_record({k: label_settings.pop(k) for k in FINALISE_ONLY})
    if calibration is not None:  # absent when unset: runs made before keep their finalise settings
        finalise["calibration"] = {"coef": list(calibration.coef), "target": calibration.target, "n": calibration.n}
    run_settings = {
        "kind": "label",
        "pairs_sha256": fingerprint([[p.id, list(p.prompt), p.response_a, p.response_b] for p in pairs]),
        "n_pairs": len(pairs),
        "constitution_sha256": const.sha256,
        "feedback_model": feedback_model,
        "label": label_settings,
        "chunk_size": chunk_size,
        **({"relabel": reuse.settings} if reuse is not None else {}),
    }
    if principle_weights:  # absent when unset: runs made before keep their fingerprint
        run_settings["principle_reliability"] = dict(sorted(principle_weights.items()))
    fp = fingerprint(run_settings)
    run = RunDir(out)
    state = run.open(run_settings, fp, overwrite=overwrite)
    # pairs whose label failed for a transient reason (a server that gave up) are labelled again
    retry = run.to_redo(key="pair_id") if state != "new" else {}
    if state == "done" and retry:
        state = "resume"  # finished, but with transient failures to try again
    previous_engine: dict[str, Any] = {}
    if state == "done":
        manifest = run.read_manifest()
        if manifest.get("finalise") == finalise:
            log(f"{run.path} is already complete: nothing to do ({manifest['counts']['pairs']} pairs).")
            return manifest
        # Every pair is scored; only how labels become rows changed: rebuild the outputs, no model needed.
        log(f"{run.path}: every pair is already scored; building the outputs again with {finalise}")
        previous_engine = manifest.get("engine") or {}
    chunks = chunked(pairs, chunk_size)
    committed = run.committed()
    todo = [i for i in range(len(chunks)) if i not in committed]
    if state == "resume":
        log(f"resuming {run.path}: {len(chunks) - len(todo)} of {len(chunks)} chunks already committed"
            + (f"; retrying transient failures in {len(retry)} of them" if retry else ""))
    engine_info: dict[str, Any] = previous_engine
    work = sorted([*todo, *retry])
    if work:
        from tqdm.auto import tqdm

        tasks = [ChunkTask(i, chunks[i], frozenset(retry[i]), tuple(run.read_chunk(i)), {JUDGEMENTS: read_side(run, i, JUDGEMENTS)})
                 if i in retry else ChunkTask(i, chunks[i]) for i in work]
        bar = tqdm(total=len(chunks), initial=len(chunks) - len(todo), desc="chunks", unit="chunk", disable=not show_progress)
        new_chunks = set(todo)

        def commit(task: ChunkTask, result: ChunkResult) -> None:
            run.commit_chunk(task.index, result.rows, result.stats, result.side)
            if task.index in new_chunks:
                bar.update(1)

        engine_info = run_chunks(LabelJob(const, settings, engine_factory, len(chunks), judge_id, reuse), tasks, commit, ray,
                                 in_process_model=in_process_model, log=log, bar=bar)
        bar.close()

    raw = run.read_chunks()
    answered = [r.get("feedback_model") or feedback_model for r in raw]  # older folders: the requested judge
    judge_labels = [label_from_row(r) for r in raw]
    labels, judge = finalise_labels(pairs, judge_labels, settings, principle_weights, calibration)
    if principle_weights:
        log(f"principle weights: {sum('reweighted' in l.flags for l in labels)} labels averaged with "
            + ", ".join(f"{k} x{w:g}" for k, w in sorted(principle_weights.items()) if w != 1.0))
    if calibration is not None:
        c = judge["calibration"]
        log(f"calibration: {c['calibrated']} labels calibrated, {c['swaps']} swapped (calibrated P below 0.5)")
    rows = [ai_preference_row(p, l, fm) for p, l, fm in zip(pairs, labels, answered) if keep_for_dataset(l, settings)]
    for row, pair in zip(rows, [p for p, l in zip(pairs, labels) if keep_for_dataset(l, settings)]):
        row["category"] = str(pair.meta.get("category", ""))
        row["reference_label"] = pair.label or ""
        row["constitution_sha256"] = const.sha256
    from datasets import Value

    run.save_dataset("preferences", rows, ai_preference_features({
        "category": Value("string"), "reference_label": Value("string"), "constitution_sha256": Value("string")}))
    run.write_jsonl("labels.jsonl", ({"id": p.id, **label_to_row(l)} for p, l in zip(pairs, labels)))
    report = agreement_report(pairs, labels)
    from rlaif.pipeline.diagnostics import preference_lengths, text_length_counter

    lengths = preference_lengths(rows, *text_length_counter(feedback_model))
    gen_wall = sum(s.get("wall_s", 0.0) for s in run.chunk_stats())
    manifest = {
        "rlaif_version": rlaif.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": fp,
        "settings": run_settings,
        "finalise": finalise,
        "source": source,
        "constitution": const.provenance(),
        "engine": engine_info,
        "counts": {
            "pairs": len(pairs),
            "labelled": sum(l.error is None for l in labels),
            "failed": sum(l.error is not None for l in labels),
            "ties": sum(l.error is None and l.chosen is None for l in labels),
            "identical": sum("identical" in l.flags for l in labels),
            "preference_rows": len(rows),
        },
        "missing": [missing("pairs", raw)],
        "agreement": report,
        "preference_lengths": lengths,
        "diagnostics": judge["diagnostics"],
        "length_control": judge["length_control"],
        **({"calibration": judge["calibration"]} if calibration is not None else {}),
        **({"verdicts": judge["verdicts"]} if judge["verdicts"] else {}),
        "timing": {"label_wall_s": round(gen_wall, 2), "pairs_per_s": round(len(pairs) / gen_wall, 3) if gen_wall else None,
                   "this_invocation_wall_s": round(time.time() - t_start, 2)},
        "outputs": {"preferences": str(run.path / "preferences"), "labels": str(run.path / "labels.jsonl")},
    }
    run.write_manifest(manifest)
    return manifest
