"""``rlaif bon``: best-of-N (rejection) sampling against a reward model.

For every prompt, N responses are sampled (one seeded request each, so a prompt's
samples do not depend on the batch), every response is scored by the reward model, and

* the best response becomes an SFT row (``DIR/sft``, ``messages`` as ``rlaif generate``
  writes them), and
* best versus worst becomes a preference pair (``DIR/preferences``, TRL's conversational
  ``prompt`` / ``chosen`` / ``rejected``) with both rewards and their difference
  ``reward_gap`` (not ``margin``, which in rlaif's rows is only ever the labeller's 0-3 level).

Responses that hit the token limit take no part unless ``--keep-truncated`` (a
half-finished answer makes poor SFT data); a prompt whose best and worst responses are
the same text, or whose reward gap is not above ``--min-margin``, gives no pair. The run
folder works like ``rlaif generate``'s: chunks of prompts are committed atomically, a
rerun with the same settings resumes, and ``manifest.json`` is written last.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from rlaif.engine.base import ChatRequest, Engine, SamplingConfig, describe
from rlaif.data import rows as schema
from rlaif.data.records import PromptRecord
from rlaif.data.runs import RunDir, chunked, missing

RewardFn = Callable[[Sequence[list[dict]], Sequence[str]], Any]


@dataclass(frozen=True)
class BonSettings:
    """What shapes a best-of-N run's rows."""

    n: int = 4
    """Responses sampled per prompt (at least 2)."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=256))
    seed: int = 0
    keep_truncated: bool = False
    """Let responses cut at max_tokens be chosen or rejected."""
    min_margin: float = 0.0
    """A pair needs best - worst reward above this."""
    chunk_size: int = 64
    """Prompts per committed chunk (one engine call and one scoring pass each)."""

    def __post_init__(self):
        if self.n < 2:
            raise ValueError("n must be at least 2 (best and worst of N)")
        if self.min_margin < 0 or self.chunk_size < 1:
            raise ValueError("min_margin must be >= 0 and chunk_size >= 1")


@dataclass(frozen=True)
class Candidate:
    sample: int
    text: str
    finish_reason: str
    completion_tokens: int
    reward: float | None
    """None when the response could not be generated (an engine error)."""
    error: str | None = None
    """Why the response could not be generated."""
    retryable: bool = False
    """It failed for now (a server that gave up): the next run samples it again (:mod:`rlaif.data.runs`)."""


def pick(cands: Sequence[Candidate], keep_truncated: bool = False, min_margin: float = 0.0) -> tuple[Candidate | None, Candidate | None]:
    """Best and worst eligible candidates; worst is None when they make no pair.

    Eligible: generated without error, not empty, and (unless ``keep_truncated``) ended
    before the token limit. Ties go to the lower sample index, so the choice is stable.
    """
    ok = [c for c in cands if c.reward is not None and c.text.strip() and (keep_truncated or c.finish_reason != "length")]
    if not ok:
        return None, None
    best = max(ok, key=lambda c: (c.reward, -c.sample))
    worst = min(ok, key=lambda c: (c.reward, c.sample))
    if worst is best or worst.text == best.text or best.reward - worst.reward <= min_margin:
        return best, None
    return best, worst


def sft_row(prompt: list[dict], best: Candidate, meta: dict[str, Any]) -> dict[str, Any]:
    return schema.sft_row(prompt, best.text, reward=best.reward, sample=best.sample, **meta)


def preference_row(prompt: list[dict], best: Candidate, worst: Candidate, meta: dict[str, Any]) -> dict[str, Any]:
    return schema.preference_row(prompt, best.text, worst.text, "reward-model", chosen_reward=best.reward,
                                 rejected_reward=worst.reward, reward_gap=best.reward - worst.reward, **meta)


def _features(kind: str):
    from datasets import Value

    common = {"prompt_id": Value("string"), "category": Value("string"), "n": Value("int64"),
              "mean_reward": Value("float64"), "model": Value("string"), "reward_model": Value("string")}
    if kind == "sft":
        return schema.sft_features({"reward": Value("float64"), "sample": Value("int64"), **common})
    return schema.preference_features({"chosen_reward": Value("float64"), "rejected_reward": Value("float64"),
                                       "reward_gap": Value("float64"), **common})


def sample_and_score(engine: Engine, reward_fn: RewardFn, prompts: Sequence[PromptRecord], s: BonSettings,
                     old: dict[str, dict] | None = None) -> list[dict]:
    """One chunk: N samples per prompt in one engine call, all scored in one reward call; chunk rows.
    ``old``: the chunk's committed rows by prompt id; only their candidates that failed for now are sampled again."""
    from rlaif.data.runs import failed_for_now
    from rlaif.seeds import derive_seed

    slots = [(j, k) for j, p in enumerate(prompts) for k in range(s.n)
             if old is None or p.id not in old or failed_for_now(old[p.id]["candidates"][k])]
    reqs = [ChatRequest(prompts[j].messages, seed=derive_seed(s.seed, prompts[j].id, k, "bon")) for j, k in slots]
    outs = engine.generate(reqs, s.sampling, desc="best-of-n") if reqs else []
    done = [i for i, o in enumerate(outs) if o.ok]
    rewards: dict[int, float] = {}
    if done:
        import torch

        got = torch.as_tensor(reward_fn([list(reqs[i].messages) for i in done], [outs[i].text for i in done]), dtype=torch.float64)
        rewards = dict(zip(done, got.reshape(-1).tolist()))
    new = {slot: asdict(Candidate(slot[1], o.text, o.finish_reason, o.completion_tokens, rewards.get(i), o.error, o.retryable))
           for i, (slot, o) in enumerate(zip(slots, outs))}
    rows = []
    for j, p in enumerate(prompts):
        kept = old[p.id]["candidates"] if old is not None and p.id in old else [None] * s.n
        rows.append({"prompt_id": p.id, "prompt": [dict(m) for m in p.messages],
                     "category": str(p.meta.get("category", "")), "candidates": [new.get((j, k), kept[k]) for k in range(s.n)]})
    return rows


def candidates(row: dict) -> list[dict]:
    """Where a chunk row keeps its requests' results: its candidates (see :meth:`rlaif.data.runs.RunDir.to_redo`)."""
    return row["candidates"]


def build_rows(rows: list[dict], s: BonSettings, model_id: str, reward_id: str) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """SFT rows, preference rows and reward statistics from committed chunk rows."""
    sft, prefs = [], []
    best_r, worst_r, all_r, truncated = [], [], [], 0
    for r in rows:
        cands = [Candidate(**c) for c in r["candidates"]]
        scored = [c.reward for c in cands if c.reward is not None]
        truncated += sum(c.finish_reason == "length" for c in cands)
        all_r += scored
        best, worst = pick(cands, s.keep_truncated, s.min_margin)
        if best is None:
            continue
        meta = {"prompt_id": r["prompt_id"], "category": r["category"], "n": len(cands),
                "mean_reward": sum(scored) / len(scored), "model": model_id, "reward_model": reward_id}
        sft.append(sft_row(r["prompt"], best, meta))
        best_r.append(best.reward)
        if worst is not None:
            prefs.append(preference_row(r["prompt"], best, worst, meta))
            worst_r.append(worst.reward)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    stats = {"responses": len(rows) * s.n, "scored": len(all_r), "truncated": truncated,
             "mean_reward": mean(all_r), "mean_best_reward": mean(best_r), "mean_worst_reward": mean(worst_r)}
    return sft, prefs, stats


def run_bon(prompts: list[PromptRecord], engine_factory: Callable[[], Engine], reward_fn: RewardFn, s: BonSettings,
            out: str, model_id: str, reward_id: str, source: str = "", overwrite: bool = False,
            show_progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) best-of-N sampling into run folder ``out``; returns the manifest."""
    from rlaif.pipeline.config import fingerprint

    t_start = time.time()
    settings = {"kind": "bon", **asdict(s), "model": model_id, "reward_model": reward_id,
                "prompts_sha256": fingerprint({"p": [[p.id, list(p.messages)] for p in prompts]}), "n_prompts": len(prompts)}
    fp = fingerprint(settings)
    run = RunDir(out)
    state = run.open(settings, fp, overwrite=overwrite)
    retry = run.to_redo(candidates, key="prompt_id") if state != "new" else {}  # responses that failed for now
    if state == "done" and not retry:
        log(f"{run.path} is already complete: nothing to do.")
        return run.read_manifest()
    chunks = chunked(prompts, s.chunk_size)
    todo = [i for i in range(len(chunks)) if i not in run.committed()]
    if state != "new":
        log(f"resuming {run.path}: {len(chunks) - len(todo)} of {len(chunks)} chunks already committed"
            + (f"; sampling again the responses that failed for now in {len(retry)} of them" if retry else ""))
    engine_info: dict[str, Any] = {}
    work = sorted([*todo, *retry])
    if work:
        from tqdm.auto import tqdm

        engine = engine_factory()
        try:
            for i in tqdm(work, desc="chunks", disable=not show_progress):
                t0 = time.time()
                old = {r["prompt_id"]: r for r in run.read_chunk(i)} if i in retry else None
                rows = sample_and_score(engine, reward_fn, chunks[i], s, old)
                run.commit_chunk(i, rows, {"chunk": i, "wall_s": time.time() - t0})
            engine_info = describe(engine)  # after the work: a server's engine then knows which models answered
        finally:
            engine.close()
    raw = run.read_chunks()
    sft, prefs, stats = build_rows(raw, s, model_id, reward_id)
    run.save_dataset("sft", sft, _features("sft"))
    run.save_dataset("preferences", prefs, _features("preferences"))
    wall = sum(x.get("wall_s", 0.0) for x in run.chunk_stats())
    manifest = {
        "command": sys.argv, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": fp, "settings": settings, "prompts": {"path": source, "count": len(prompts)},
        "engine": engine_info, "counts": {"prompts": len(prompts), "sft_rows": len(sft), "preference_rows": len(prefs), **stats},
        "missing": [missing("responses", [c for r in raw for c in r["candidates"]])],
        "timing": {"sample_and_score_wall_s": round(wall, 2), "this_invocation_wall_s": round(time.time() - t_start, 2)},
        "outputs": {k: str(run.path / k) for k in ("sft", "preferences", "sft.jsonl", "preferences.jsonl")},
    }
    run.write_manifest(manifest)
    return manifest
