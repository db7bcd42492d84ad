"""One chunk of ``rlaif generate``: every stage on the engines, nothing written (the caller commits).

:class:`GenerateJob` is what runs a chunk, in this process or on a Ray replica (see
:mod:`rlaif.pipeline.distributed`); :func:`make_pairs` picks the pairs the labeller compares.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import time
from collections import Counter
from typing import Any, Callable

from rlaif.constitution import Constitution
from rlaif.data.records import PromptRecord, Trajectory
from rlaif.engine import answered_by
from rlaif.engine.base import Engine, describe
from rlaif.pipeline.config import GenerateConfig, LabelConfig
from rlaif.pipeline.constructed import CONSTRUCTED, constructed, contrast_stage, load_reward, reward_rows
from rlaif.pipeline.critique import LoopSettings, run_chunk
from rlaif.pipeline.distributed import ChunkResult, ChunkTask
from rlaif.pipeline.judge import Pair, label_pairs
from rlaif.pipeline.judge_records import JUDGEMENTS, JudgeCache, judge_identity, merged_records
from rlaif.pipeline.label import label_to_row
from rlaif.seeds import derive_seed

EngineFactory = Callable[[], Engine]


class GenerateJob:
    """Every stage of one chunk of ``rlaif generate`` on the policy's (and feedback model's) engine;
    writes nothing, so a Ray replica can run it (see :mod:`rlaif.pipeline.distributed`)."""

    def __init__(self, cfg: GenerateConfig, const: Constitution, engine_factory: EngineFactory,
                 feedback_factory: EngineFactory | None, n_chunks: int):
        self.cfg, self.const, self.n_chunks = cfg, const, n_chunks
        self.engine_factory, self.feedback_factory = engine_factory, feedback_factory
        self.loop = LoopSettings(cfg.rounds, cfg.samples_per_prompt, cfg.seed, cfg.sampling)
        self.reward = None  # west-of-n: the reward model or function, loaded on first use (on the replica under Ray)

    def start(self) -> tuple[Engine, Engine]:
        engine = self.engine_factory()
        try:
            return engine, (self.feedback_factory() if self.feedback_factory is not None else engine)
        except BaseException:
            engine.close()
            raise

    def describe(self, engines) -> dict[str, Any]:
        engine, feedback = engines  # after the work: a server's engine then knows which models answered
        return {**describe(engine), **({"feedback": describe(feedback)} if feedback is not engine else {})}

    def close(self, engines) -> None:
        engine, feedback = engines
        if feedback is not engine:
            feedback.close()
        engine.close()

    def run(self, engines, task: ChunkTask) -> ChunkResult:
        (engine, feedback), cfg, i, t0 = engines, self.cfg, task.index, time.time()
        tag = f"chunk {i + 1}/{self.n_chunks}"
        old_rows = {r["id"]: r for r in task.old_rows}
        old_labels = {r["pair"]["id"]: r for r in task.old_side.get("labels", ())}
        redo_ids = task.redo
        subset = task.items if redo_ids is None else [p for p in task.items if any(t.startswith(f"{p.id}#") for t in redo_ids)]
        fresh = {t.id: t for t in run_chunk(engine, self.const, subset, self.loop, label=tag)} if subset else {}
        # keep every committed row that did not fail transiently; take the new one otherwise
        trajs = [fresh[tid] if (tid in fresh and (redo_ids is None or tid in redo_ids)) else Trajectory.from_row(old_rows[tid])
                 for tid in _chunk_ids(task.items, cfg.samples_per_prompt)]
        side: dict[str, Any] = {}
        if cfg.label.pairs in CONSTRUCTED:  # west-of-n, rlcd: pairs labelled by construction
            trajs, side = self.construct(engine, trajs, task, {t for t in fresh if redo_ids is None or t in redo_ids}, tag)
        if cfg.label.enabled:
            pairs = (make_pairs(trajs, cfg.label, cfg.seed) if cfg.label.pairs not in CONSTRUCTED
                     else [c.pair for c in constructed(cfg.label.pairs, trajs, side)])
            keep = {p.id: old_labels[p.id] for p in pairs if _label_still_valid(old_labels.get(p.id), p)}
            need = [p for p in pairs if p.id not in keep]
            before = Counter(getattr(feedback, "reported_models", {}))
            cache = JudgeCache(judge_identity(feedback.model, cfg.engine.backend, cfg.engine.dtype), cfg.label)  # kept for relabelling
            new = dict(zip([p.id for p in need], label_pairs(feedback, self.const, need, cfg.label, desc=f"{tag} label", cache=cache)))
            answered = answered_by(feedback, before)  # what answered (a server's reported name), not what was asked for
            side["labels"] = [keep[p.id] if p.id in keep else {"pair": pair_to_row(p), **label_to_row(new[p.id]), "feedback_model": answered}
                              for p in pairs]
            side[JUDGEMENTS] = merged_records(task.old_side.get(JUDGEMENTS, ()), cache.records, set(keep), [p.id for p in pairs])
        stats = {"chunk": i, "wall_s": time.time() - t0, "conversations": len(trajs)}
        if cfg.label.enabled:
            stats["judge"] = cache.identity
        return ChunkResult([t.to_row() for t in trajs], stats, side)

    def construct(self, engine, trajs: list[Trajectory], task: ChunkTask, fresh: set[str], tag: str):
        """West-of-N: every final text's reward. RLCD: the contrast answers of the trajectories made in this
        run of the chunk (the others keep theirs); a (prompt, sample) whose contrast request failed is marked
        failed, so that a rerun redoes it as it redoes any failed trajectory."""
        lc = self.cfg.label
        if lc.pairs == "west-of-n":
            if self.reward is None:
                self.reward = load_reward(lc.reward_model, lc.reward_fn, bool(self.cfg.engine.trust_remote_code))
            return trajs, {"rewards": reward_rows(self.reward, trajs)}
        old = {r["id"]: r for r in task.old_side.get("contrast", ())}
        todo = [t for t in trajs if t.status == "ok" and (t.id in fresh or t.id not in old)]
        new = {r["id"]: r for r in contrast_stage(engine, self.const, todo, self.cfg.seed, self.cfg.sampling["response"], tag)}
        rows = [new.get(t.id) or old[t.id] for t in trajs if t.id in new or t.id in old]
        failed = {r["id"]: r for r in rows if r["error"]}
        trajs = [dataclasses.replace(t, status="failed", failure=f"contrast: {failed[t.id]['error']}", retryable=failed[t.id]["retryable"])
                 if t.id in failed else t for t in trajs]
        return trajs, {"contrast": [r for r in rows if not r["error"]]}


def _chunk_ids(prompts: list[PromptRecord], samples: int) -> list[str]:
    return [f"{p.id}#{s}" for p in prompts for s in range(samples)]


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
