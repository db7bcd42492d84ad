"""``rlaif label-steps``: step labels for solutions, in TRL's stepwise-supervision format.

Input: solutions (prompt + response, or prompt + a list of steps), or prompts and a number of
solutions to sample per prompt. Each solution is cut into steps (:mod:`rlaif.data.steps`) and
labelled by one source (:mod:`rlaif.pipeline.step_sources`: the constitution judge, Monte-Carlo
completion, or a DPO model's implicit rewards).

The run folder works like every rlaif run folder (:mod:`rlaif.data.runs`): chunks are committed
atomically, a rerun with the same settings resumes, and a solution whose requests failed for a
transient reason (a server that gave up) is labelled again by the next run, the others kept as
they are. Outputs, rebuilt from the committed chunks: ``DIR/steps`` (``save_to_disk``) and
``DIR/steps.jsonl``: TRL's ``prompt`` (text), ``completions`` (the steps), ``labels`` (one bool per
step), and beside them ``step_scores`` (soft scores in [0, 1]), ``label_source``, ``prompt_messages``
(the conversation), ids, models and each source's provenance; ``manifest.json`` last.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from rlaif.data.records import PromptRecord
from rlaif.data.runs import RunDir, chunked, missing
from rlaif.data.steps import StepSplitter
from rlaif.engine.base import Engine, SamplingConfig, describe
from rlaif.reward.judge import StepJudgeSettings, diagnostics, judge_steps, judge_warnings

from .step_sources import SOURCES, MCSettings, Solution, implicit_label, mc_label, solve, solutions_sha256, text_prompt

LABEL_SOURCE = {"judge": "judge", "mc": "monte-carlo", "implicit": "implicit"}


@dataclass(frozen=True)
class StepLabelSettings:
    source: str
    """"judge", "mc" (Monte-Carlo completion) or "implicit"."""
    splitter: StepSplitter = field(default_factory=StepSplitter)
    seed: int = 0
    samples: int = 0
    """Solutions sampled per prompt (0: the input holds the solutions)."""
    solve_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(1.0, 1.0, 256))
    mc: MCSettings = field(default_factory=MCSettings)
    judge: StepJudgeSettings = field(default_factory=StepJudgeSettings)
    beta: float = 0.1
    """The DPO beta of the implicit source."""
    chunk_size: int = 32

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {self.source!r}")
        if self.samples < 0 or self.chunk_size < 1 or self.beta <= 0:
            raise ValueError("need samples >= 0, chunk_size >= 1 and beta > 0")

    def fingerprinted(self) -> dict[str, Any]:
        """The settings that shape the labels (only the chosen source's own)."""
        out = {"source": self.source, "splitter": self.splitter.describe(), "seed": self.seed, "samples": self.samples,
               "chunk_size": self.chunk_size}
        if self.samples:
            out["solve_sampling"] = asdict(self.solve_sampling)
        out[self.source] = {"mc": lambda: asdict(self.mc), "judge": lambda: asdict(self.judge), "implicit": lambda: {"beta": self.beta}}[self.source]()
        return out


@dataclass
class StepLabeller:
    """Everything one chunk needs: engines by role ("policy", "judge", "reference"), the reward
    function (Monte-Carlo), the constitution (judge)."""

    s: StepLabelSettings
    engines: dict[str, Engine]
    reward_fn: Callable | None = None
    const: Any = None

    def label(self, solutions: Sequence[Solution]) -> list[dict[str, Any]]:
        if not solutions:
            return []
        src = self.s.source
        if src == "mc":
            found = mc_label(self.engines["policy"], self.reward_fn, solutions, self.s.mc, self.s.seed)
        elif src == "judge":
            verdicts = judge_steps(self.engines["judge"], self.const, [(x.id, x.prompt, x.steps) for x in solutions], self.s.judge)
            found = [{"error": v.error, "retryable": v.retryable} if v.error else
                     {"step_scores": v.probs, "labels": v.labels(), "judge_principles": list(v.per_principle),
                      "judge_p_yes": {k: [list(x) for x in xs] for k, xs in v.p_yes.items()}, "step_flags": v.flags}
                     for v in verdicts]
        else:
            found = implicit_label(self.engines["policy"], self.engines["reference"], solutions, self.s.beta)
        return [{**x.to_row(), "source": src, **f} for x, f in zip(solutions, found)]

    def chunk(self, items: Sequence[Any], redo: dict[str, dict] | None = None, old: Sequence[dict] = ()) -> list[dict[str, Any]]:
        """Rows of one chunk; with ``redo`` (failed rows by id) only those are done again, the rest of ``old`` kept."""
        if not self.s.samples:
            todo = [x for x in items if redo is None or x.id in redo]
            fresh = {r["id"]: r for r in self.label(todo)}
            return [fresh[x.id] for x in items] if redo is None else [fresh.get(r["id"], r) for r in old]
        wanted = [(p, k) for p in items for k in range(self.s.samples) if redo is None or f"{p.id}:{k}" in redo]
        again = [Solution.from_row(r) for r in (redo or {}).values() if r.get("text") is not None]
        retried = {x.id for x in again}
        wanted = [(p, k) for p, k in wanted if f"{p.id}:{k}" not in retried]
        sols, bad = solve(self.engines["policy"], wanted, self.s.solve_sampling, self.s.seed, self.s.splitter)
        rows = {r["id"]: r for r in self.label([*again, *[x for x in sols if x.spans]])}
        for x in sols:
            if not x.spans:
                rows[x.id] = {**x.to_row(), "source": self.s.source, "error": "the sampled solution has no steps (empty)",
                              "retryable": False}
        for sid, p, o in bad:
            rows[sid] = {"id": sid, "prompt_id": p.id, "prompt": [dict(m) for m in p.messages], "text": None, "spans": [],
                         "category": str(p.meta.get("category", "")), "source": self.s.source, "error": o.error,
                         "retryable": o.retryable}
        if redo is None:
            return [rows[f"{p.id}:{k}"] for p in items for k in range(self.s.samples)]
        return [rows.get(r["id"], r) for r in old]


def stepwise_row(r: dict[str, Any], models: dict[str, str]) -> dict[str, Any]:
    """A committed row as TRL's stepwise-supervision row, its soft scores and provenance beside it."""
    steps = [r["text"][a:b] for a, b in r["spans"]]
    row = {"prompt": text_prompt(r["prompt"]), "completions": steps, "labels": [bool(x) for x in r["labels"]],
           "step_scores": [float(x) for x in r["step_scores"]], "label_source": LABEL_SOURCE[r["source"]],
           "prompt_messages": r["prompt"], "id": r["id"], "prompt_id": r["prompt_id"], "category": r.get("category", ""),
           "model": models.get("policy", "")}
    if r["source"] == "mc":
        row["mc_correct"] = [int(x) for x in r["mc_correct"]]
    elif r["source"] == "judge":
        row["judge_principles"] = list(r["judge_principles"])
        row["feedback_model"] = models.get("judge", "")
    else:
        row["step_rewards"] = [float(x) for x in r["step_rewards"]]
        row["reference_model"] = models.get("reference", "")
    return row


def stepwise_features(source: str):
    from datasets import Features, Sequence as Seq, Value

    from rlaif.data.rows import messages_feature

    f = {"prompt": Value("string"), "completions": Seq(Value("string")), "labels": Seq(Value("bool")),
         "step_scores": Seq(Value("float64")), "label_source": Value("string"), "prompt_messages": messages_feature(),
         "id": Value("string"), "prompt_id": Value("string"), "category": Value("string"), "model": Value("string")}
    f.update({"mc": {"mc_correct": Seq(Value("int64"))},
              "judge": {"judge_principles": Seq(Value("string")), "feedback_model": Value("string")},
              "implicit": {"step_rewards": Seq(Value("float64")), "reference_model": Value("string")}}[source])
    return Features(f)


def run_label_steps(items: Sequence[PromptRecord] | Sequence[Solution], out: str, s: StepLabelSettings,
                    factories: dict[str, Callable[[], Engine]], models: dict[str, str], reward_fn: Callable | None = None,
                    reward_id: str = "", const: Any = None, source: str = "", overwrite: bool = False,
                    show_progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Label (or resume labelling) the steps of ``items`` (solutions, or prompts with ``s.samples``) into ``out``."""
    from rlaif.pipeline.config import fingerprint

    t_start = time.time()
    keys = [[x.id, list(x.messages)] for x in items] if s.samples else [[x.id, list(x.prompt), x.text, list(x.spans)] for x in items]
    settings = {"kind": "label-steps", **s.fingerprinted(), "models": dict(models), "reward_fn": reward_id,
                "constitution_sha256": const.sha256 if const is not None and s.source == "judge" else "",
                "items_sha256": solutions_sha256(keys), "n_items": len(items)}
    fp = fingerprint(settings)
    run = RunDir(out)
    state = run.open(settings, fp, overwrite=overwrite)
    chunks = chunked(list(items), s.chunk_size)
    redo = run.to_redo(key="id") if state != "new" else {}  # solutions that failed for now
    retry = {i: {r["id"]: r for r in run.read_chunk(i) if r["id"] in ids} for i, ids in redo.items()}
    if state == "done" and not retry:
        log(f"{run.path} is already complete: nothing to do.")
        return run.read_manifest()
    todo = [i for i in range(len(chunks)) if i not in run.committed()]
    if state != "new":
        log(f"resuming {run.path}: {len(chunks) - len(todo)} of {len(chunks)} chunks already committed"
            + (f"; redoing the failed solutions of {len(retry)} of them" if retry else ""))
    engine_info: dict[str, Any] = {}
    work = sorted([*todo, *retry])
    if work:
        from tqdm.auto import tqdm

        engines = {role: f() for role, f in factories.items()}
        try:
            labeller = StepLabeller(s, engines, reward_fn, const)
            for i in tqdm(work, desc="chunks", disable=not show_progress):
                t0 = time.time()
                rows = labeller.chunk(chunks[i], retry.get(i), tuple(run.read_chunk(i)) if i in retry else ())
                run.commit_chunk(i, rows, {"chunk": i, "wall_s": time.time() - t0})
            engine_info = {role: describe(e) for role, e in engines.items()}
        finally:
            for e in {id(e): e for e in engines.values()}.values():
                e.close()
    return finalise(run, s, models, fp, settings, source, engine_info, t_start)


def finalise(run: RunDir, s: StepLabelSettings, models: dict[str, str], fp: str, settings: dict[str, Any], source: str,
             engine_info: dict[str, Any], t_start: float) -> dict[str, Any]:
    """Datasets and manifest from the committed chunks (safe to repeat)."""
    from rlaif.reward.judge import StepVerdicts

    raw = run.read_chunks()
    done = [r for r in raw if not r.get("error")]
    rows = [stepwise_row(r, models) for r in done]
    run.save_dataset("steps", rows, stepwise_features(s.source))
    steps = sum(len(r["labels"]) for r in rows)
    diag = None
    if s.source == "judge":
        diag = diagnostics([StepVerdicts(r["step_scores"], {}, {k: [tuple(x) for x in v] for k, v in r["judge_p_yes"].items()},
                                         r["step_flags"]) for r in done])
    wall = sum(x.get("wall_s", 0.0) for x in run.chunk_stats())
    failed = [r for r in raw if r.get("error")]
    manifest = {
        "command": sys.argv, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "fingerprint": fp,
        "settings": settings, "source": source, "engine": engine_info,
        "counts": {"items": settings["n_items"], "solutions": len(raw), "labelled": len(rows), "failed": len(failed),
                   "retryable": sum(bool(r.get("retryable")) for r in failed), "steps": steps,
                   "steps_correct": sum(sum(r["labels"]) for r in rows),
                   "continuation_tokens": sum(r.get("continuation_tokens", 0) for r in done)},
        "missing": [missing("solutions", raw)],
        "diagnostics": diag, "warnings": judge_warnings(diag) if diag else [],
        "failures": [{"id": r["id"], "error": r["error"], "retryable": bool(r.get("retryable"))} for r in failed[:20]],
        "timing": {"label_wall_s": round(wall, 2), "this_invocation_wall_s": round(time.time() - t_start, 2)},
        "outputs": {"steps": str(run.path / "steps"), "steps.jsonl": str(run.path / "steps.jsonl")},
    }
    run.write_manifest(manifest)
    return manifest
