"""``rlaif eval``: a policy model against a baseline on evaluation prompt sets.

The run folder works like ``rlaif generate``'s (settings fingerprint, atomic chunk commits,
resume, ``manifest.json`` last), in four stages, each committed chunk by chunk in its own
folder and finished before the next starts, so only the engines a stage needs are running:

1. ``chunks/policy``: the policy answers every prompt (one seeded request each) and scores
   its own answers (per-token log-probabilities at temperature 1);
2. ``chunks/baseline``: the baseline answers every prompt and scores the *policy's* answers,
   which gives the KL estimate of the policy to the baseline (:func:`eval_stats.kl_estimate`);
3. ``chunks/judge``: the labeller compares the two answers to each prompt under the
   constitution (:func:`rlaif.pipeline.judge.label_pairs`: both orders, an ensemble of
   principles; a tie names no side) and asks yes/no questions about every answer
   (:mod:`rlaif.pipeline.eval_judge`: refusal, safety, and agreement with a reference answer);
4. ``chunks/reward`` (with a reward model): the reward model scores every answer.

The results (:mod:`rlaif.pipeline.eval_results`) are built from the committed chunks:
``answers/`` + ``answers.jsonl`` (one row per prompt: both answers and every judgement),
``eval.json`` (the numbers with their 95% intervals) and ``manifest.json``. A finished run whose
results were built with other interval methods (an older rlaif) has them built again from
its chunks, with no model.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from rlaif.constitution import Constitution, builtin_principles_dir
from rlaif.data.prompts import PromptError, read_prompts
from rlaif.data.records import PromptRecord
from rlaif.data.runs import RunDir, chunked, missing
from rlaif.engine.base import ChatRequest, Engine, SamplingConfig, describe
from rlaif.pipeline.eval_judge import run_checks
from rlaif.pipeline.eval_stats import METHODS
from rlaif.pipeline.judge import LabelSettings, Pair, label_pairs
from rlaif.pipeline.verdicts import judge_engine, without_default_verdict
from rlaif.seeds import derive_seed

SHIPPED_SETS = ("harmful", "overrefusal", "helpful")
"""Names ``--prompts`` takes for the shipped sets (``prompts/eval-<name>.jsonl``)."""
KEEP_FIELDS = ("subcategory", "reference")
STAGES = ("policy", "baseline", "judge", "reward")
ROLES = ("policy", "baseline", "judge")


@dataclass(frozen=True)
class EvalSettings:
    """What shapes an eval run's answers and judgements."""

    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=256))
    """How both models answer. At temperature 1 and top-p 1 the answers are samples of the models
    themselves, which is what the KL estimate assumes."""
    label: LabelSettings = field(default_factory=LabelSettings)
    seed: int = 0
    chunk_size: int = 64
    """Prompts per committed chunk (one batched engine call per stage and chunk)."""
    n_boot: int = 2000
    """Resamples of the bootstrap-t intervals (the means of unbounded values: rewards, KL); the
    other intervals need none (:mod:`rlaif.pipeline.eval_stats`)."""

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if self.n_boot < 100:
            raise ValueError("n_boot must be at least 100")


def prompt_set_path(spec: str) -> Path:
    """A shipped set's name (``harmful``, ``overrefusal``, ``helpful``) or a file or folder."""
    if spec in SHIPPED_SETS:
        return builtin_principles_dir().parent / "prompts" / f"eval-{spec}.jsonl"
    return Path(spec)


def read_prompt_sets(specs: Sequence[str], limit: int | None = None) -> list[PromptRecord]:
    """The prompts of every set, ``limit`` from each; a prompt without a category gets its set's name.
    Ids must be unique over all sets."""
    out: list[PromptRecord] = []
    seen: dict[str, str] = {}
    for spec in specs:
        path = prompt_set_path(spec)
        name = spec if spec in SHIPPED_SETS else path.stem
        for rec in read_prompts(path, limit=limit, keep=KEEP_FIELDS):
            if rec.id in seen:
                raise PromptError(f"prompt id {rec.id!r} is in both {seen[rec.id]} and {spec}; ids must be unique over the sets")
            seen[rec.id] = spec
            meta = {"category": str(rec.meta.get("category") or name), "set": name,
                    **{k: str(rec.meta[k]) for k in KEEP_FIELDS if k in rec.meta}}
            out.append(PromptRecord(rec.id, rec.messages, meta))
    return out


class _Engines:
    """Engines by role, started on first use; one engine serves every role whose model is the same."""

    def __init__(self, factories: dict[str, Callable[[], Engine]], models: dict[str, str]):
        self.factories, self.models, self.open = factories, models, {}
        self.info: dict[str, Any] = {}

    def get(self, role: str) -> Engine:
        key = self.models[role]
        if key not in self.open:
            self.open[key] = self.factories[role]()
        return self.open[key]

    def keep_only(self, roles: Sequence[str]) -> None:
        """Close every engine no role in ``roles`` needs."""
        wanted = {self.models[r] for r in roles}
        for key in [k for k in self.open if k not in wanted]:
            engine = self.open.pop(key)
            self.info[key] = describe(engine)
            engine.close()

    def close(self) -> None:
        self.keep_only([])


def _logprobs(engine: Engine, convs, texts, ended) -> tuple[list[Any], str | None]:
    """Per-token log-probs of the answers under ``engine``, or (Nones, why not)."""
    fn = getattr(engine, "response_logprobs", None)
    if fn is None:
        return [None] * len(texts), f"the {type(engine).__name__} backend cannot score given answers"
    try:
        return fn(convs, texts, ended), None
    except NotImplementedError as exc:
        return [None] * len(texts), str(exc)


def answer_stage(engine: Engine, prompts: Sequence[PromptRecord], role: str, s: EvalSettings,
                 score_texts: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One chunk of the policy or baseline stage: answers, and the log-probs of the policy's answers
    (``score_texts``: the policy stage's rows by id; None for the policy, which scores its own)."""
    reqs = [ChatRequest(p.messages, derive_seed(s.seed, p.id, "eval", role), tag=p.id) for p in prompts]
    outs = engine.generate(reqs, s.sampling, desc=f"{role} answers")
    rows = [{"id": p.id, "text": o.text, "finish_reason": o.finish_reason, "tokens": o.completion_tokens,
             "error": o.error, "retryable": o.retryable} for p, o in zip(prompts, outs)]
    scored = rows if score_texts is None else [score_texts[p.id] for p in prompts]
    todo = [i for i, r in enumerate(scored) if r.get("error") is None]
    lps, why = _logprobs(engine, [prompts[i].messages for i in todo], [scored[i]["text"] for i in todo],
                         [scored[i]["finish_reason"] == "stop" for i in todo])
    for row in rows:
        row["policy_logprobs"], row["logprobs_error"] = None, "no policy answer"
    for i, lp in zip(todo, lps):
        rows[i]["policy_logprobs"] = lp
        rows[i]["logprobs_error"] = why or (None if lp is not None else "prompt and answer do not fit the context")
    return rows


def judge_stage(engine: Engine, const: Constitution, prompts: Sequence[PromptRecord], policy: dict[str, dict[str, Any]],
                baseline: dict[str, dict[str, Any]], s: EvalSettings) -> list[dict[str, Any]]:
    """One chunk of the judge stage: the comparison of the two answers and the checks of each."""
    from rlaif.pipeline.label import label_to_row

    engine = judge_engine(engine, s.label)  # with sampled verdicts they answer the checks too
    both = [p for p in prompts if policy[p.id]["error"] is None and baseline[p.id]["error"] is None]
    pairs = [Pair(p.id, p.messages, policy[p.id]["text"], baseline[p.id]["text"]) for p in both]
    labels = {lab.pair_id: label_to_row(lab) for lab in label_pairs(engine, const, pairs, s.label, desc="compare")}
    items, slots, tags = [], [], []
    for p in prompts:
        for role, rows in (("policy", policy), ("baseline", baseline)):
            if rows[p.id]["error"] is None:
                items.append((p.messages, rows[p.id]["text"], p.meta.get("reference")))
                slots.append((p.id, role))
                tags.append(p.id)
    checks: dict[str, dict[str, Any]] = {p.id: {} for p in prompts}
    for (pid, role), result in zip(slots, run_checks(engine, items, desc="checks", tags=tags)):
        checks[pid][role] = result
    return [{"id": p.id, "label": labels.get(p.id), "checks": checks[p.id]} for p in prompts]


def reward_stage(reward_fn, prompts: Sequence[PromptRecord], policy, baseline) -> list[dict[str, Any]]:
    """One chunk of the reward stage: the reward model's score of each answer (None if there is none)."""
    items = [(p, role, rows[p.id]) for p in prompts for role, rows in (("policy", policy), ("baseline", baseline))
             if rows[p.id]["error"] is None]
    scores = reward_fn([list(p.messages) for p, _, _ in items], [r["text"] for _, _, r in items]) if items else []
    out = {p.id: {"id": p.id, "policy": None, "baseline": None} for p in prompts}
    for (p, role, _), score in zip(items, [float(x) for x in scores]):
        out[p.id][role] = score
    return list(out.values())


def results_of(row: dict[str, Any]) -> list[Any]:
    """Where a stage's row keeps its requests' results: the row (an answer), its label and its checks."""
    return [row, row.get("label"), *(c for by_check in (row.get("checks") or {}).values() for c in by_check.values())]


def transient_failures(stage: str, d: RunDir) -> dict[int, set[str]]:
    """Ids per committed chunk of ``stage`` whose answer or judgement failed for a transient reason (a
    server that gave up after its retries): a rerun of the eval tries them again."""
    return d.to_redo(results_of)


def _chunk_stats(d: RunDir, i: int) -> dict[str, Any]:
    path = d.chunks / f"{i:05d}.stats.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def run_eval(prompts: list[PromptRecord], out: str, const: Constitution, s: EvalSettings,
             factories: dict[str, Callable[[], Engine]], models: dict[str, str], reward: tuple[str, Callable[[], Any]] | None = None,
             sources: Sequence[str] = (), overwrite: bool = False, show_progress: bool = True,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) an eval into run folder ``out``; returns the manifest.

    ``factories`` start the engine of each role (policy, baseline, judge); ``models`` names each
    role's model (roles with the same model share one engine). ``reward`` is (reward model id,
    a function that loads it), or None.
    """
    from rlaif.pipeline.config import fingerprint
    from rlaif.pipeline.eval_results import build_outputs

    t_start = time.time()
    settings = {
        "kind": "eval", "models": {**models, "reward": reward[0] if reward else None},
        "prompts_sha256": fingerprint({"p": [[p.id, list(p.messages), p.meta] for p in prompts]}),
        "n_prompts": len(prompts), "constitution_sha256": const.sha256,
        "eval": {**asdict(s), "label": without_default_verdict(asdict(s.label))},  # older run folders keep their fingerprint
    }
    fp = fingerprint(settings)
    run = RunDir(out)
    state = run.open(settings, fp, overwrite=overwrite)
    chunks = chunked(prompts, s.chunk_size)
    stages = [st for st in STAGES if st != "reward" or reward]
    dirs = {st: RunDir(out, chunks=f"chunks/{st}") for st in stages}
    if state == "done" and not any(transient_failures(st, dirs[st]) for st in stages if dirs[st].chunks.is_dir()):
        manifest = run.read_manifest()
        if (manifest.get("results") or {}).get("interval", {}).get("methods") == METHODS:
            log(f"{run.path} is already complete: nothing to do.")
            return manifest
        # answered and judged before the intervals changed: the numbers are rebuilt from the chunks, no model needed
        log(f"{run.path}: every answer is already judged; building the results again with the current intervals")
        state = "rebuild"
    for d in dirs.values():
        d.chunks.mkdir(parents=True, exist_ok=True)
        for tmp in d.chunks.glob(".*.tmp"):  # half-written files of a process that died mid-write
            tmp.unlink(missing_ok=True)
    todo = {st: [i for i in range(len(chunks)) if i not in dirs[st].committed()] for st in stages}
    if state not in ("new", "rebuild"):
        done = {st: len(chunks) - len(todo[st]) for st in stages}
        failed = {st: sum(len(v) for v in transient_failures(st, dirs[st]).values()) for st in stages}
        log(f"resuming {run.path}: chunks committed per stage {done} of {len(chunks)}"
            + (f"; answers or judgements to retry (a server gave up on them) {failed}" if any(failed.values()) else ""))
    engines = _Engines(factories, models)
    needs_after = {"policy": ["baseline", "judge"], "baseline": ["judge"], "judge": [], "reward": []}
    # Rows redone in this invocation; a later stage redoes the same prompts (their inputs changed).
    redone: dict[str, set[str]] = {st: set() for st in stages}
    upstream = {"policy": (), "baseline": ("policy",), "judge": ("policy", "baseline"), "reward": ("policy", "baseline")}
    from tqdm.auto import tqdm

    try:
        for st in stages:
            retry = transient_failures(st, dirs[st])
            changed = set().union(*(redone[u] for u in upstream[st]))
            for i in dirs[st].committed():
                ids = retry.get(i, set()) | {p.id for p in chunks[i] if p.id in changed}
                if ids:
                    retry[i] = ids
            work = sorted([*todo[st], *(i for i in retry if i not in todo[st])])
            if not work:
                continue
            previous = {name: {r["id"]: r for r in dirs[name].read_chunks()} for name in ("policy", "baseline") if name != st and name in dirs}
            reward_fn = reward[1]() if st == "reward" else None
            for i in tqdm(work, desc=f"{st} chunks", unit="chunk", disable=not show_progress):
                t0 = time.time()
                subset = [p for p in chunks[i] if p.id in retry[i]] if i in retry else chunks[i]
                if st == "policy":
                    rows = answer_stage(engines.get("policy"), subset, "policy", s)
                elif st == "baseline":
                    rows = answer_stage(engines.get("baseline"), subset, "baseline", s, previous["policy"])
                elif st == "judge":
                    rows = judge_stage(engines.get("judge"), const, subset, previous["policy"], previous["baseline"], s)
                else:
                    rows = reward_stage(reward_fn, subset, previous["policy"], previous["baseline"])
                stats = {"chunk": i, "stage": st, "wall_s": time.time() - t0}
                if i in retry:  # merge the redone rows into the committed chunk, in the chunk's order
                    by_id = {r["id"]: r for r in dirs[st].read_chunk(i)} | {r["id"]: r for r in rows}
                    rows = [by_id[p.id] for p in chunks[i]]
                    before = _chunk_stats(dirs[st], i)
                    stats = {**stats, "wall_s": before.get("wall_s", 0.0) + stats["wall_s"], "retried": len(subset)}
                    redone[st].update(retry[i])
                dirs[st].commit_chunk(i, rows, stats)
            engines.keep_only(needs_after[st])
    finally:
        engines.close()
    stage_rows = {st: {r["id"]: r for r in dirs[st].read_chunks()} for st in stages}
    results, answer_rows, features = build_outputs(prompts, stage_rows, s, models)
    run.save_dataset("answers", answer_rows, features)
    from rlaif.data import textio
    from rlaif.data.runs import atomic_write_text

    atomic_write_text(run.path / "eval.json", textio.dumps(results, indent=2))
    wall = {st: round(sum(x.get("wall_s", 0.0) for x in dirs[st].chunk_stats()), 2) for st in stages}
    manifest = {
        "command": sys.argv, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": fp, "settings": settings, "prompts": {"sources": list(sources), "count": len(prompts)},
        "constitution": const.provenance(), "engines": engines.info,
        "counts": results["counts"], "results": results,
        "missing": [missing(what, stage_rows[st].values(), results_of)
                    for st, what in (("policy", "policy answers"), ("baseline", "baseline answers"), ("judge", "judgements"))],
        "timing": {"stage_wall_s": wall, "this_invocation_wall_s": round(time.time() - t_start, 2)},
        "outputs": {"answers": str(run.path / "answers"), "answers_jsonl": str(run.path / "answers.jsonl"),
                    "results": str(run.path / "eval.json")},
    }
    run.write_manifest(manifest)
    return manifest
