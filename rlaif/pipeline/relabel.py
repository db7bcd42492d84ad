"""``rlaif relabel RUN --constitution EDITED --out NEW``: judge again only what an edit changed.

The rules (docs/relabel.md says them to users):

* **Draws are kept.** Every pair is judged by the principles it drew in RUN, in the same order.
  A principle the edit removed is dropped from the pairs that drew it (its comparisons are
  gone); a pair left with none draws afresh from the edited constitution. A new principle, or a
  new weight, changes no draw: fresh weighted draws would differ for most pairs, so a relabel is
  not the same as labelling afresh. ``--resample`` draws every pair afresh from the edited
  constitution instead (and says how many pairs' draws changed).
* **Only changed requests are sent.** A comparison whose request key
  (:mod:`rlaif.pipeline.judge_records`) is unchanged is answered from RUN's stored line, which is
  copied byte for byte; every other one is sent to the judge. The key covers the whole rendered
  request, so an edit reaches every request that shows the edited text (with ``--few-shot``:
  every request whose examples quote it). Whitespace counts as the judge sees it: principle and
  example texts are stripped when loaded, so leading or trailing whitespace (or a YAML
  comment) changes nothing, and any other whitespace change is a change.
* **What is the same.** NEW is a labelled run like ``rlaif label``'s output, with RUN's label
  settings, principle weights (``--principle-reliability``) and pairs (not its ``--calibration``,
  fitted for RUN's constitution). Its labels are rebuilt from the comparisons; with length control the fit
  is redone over the whole run, so then only the comparisons are identical.

NEW is written chunk by chunk like every run folder, so a killed relabel continues where it
stopped when run again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rlaif.constitution import Constitution, Principle
from rlaif.engine.base import Engine
from rlaif.pipeline.distributed import RayConfig
from rlaif.pipeline.judge import sample_label_principles
from rlaif.pipeline.judge_records import Reuse, index_records
from rlaif.pipeline.labelled_runs import LabelledRun, RunReadError


@dataclass
class RelabelPlan:
    """Which principles judge each pair in the relabel, and what changed in the constitution."""

    draws: dict[str, list[Principle]]
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    reweighted: list[str] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    """Stored comparisons of removed principles, by principle (they are not carried over)."""
    redrawn: int = 0
    """Pairs whose every principle was removed, drawn afresh."""
    resampled: bool = False
    draws_changed: int = 0
    """With ``--resample``: pairs whose principles differ from their draw in the run."""

    def to_dict(self) -> dict[str, Any]:
        return {"removed": self.removed, "added": self.added, "reweighted": self.reweighted,
                "dropped_comparisons": dict(self.dropped), "redrawn_pairs": self.redrawn,
                "resample": self.resampled, "draws_changed": self.draws_changed if self.resampled else None}


def plan_relabel(src: LabelledRun, const: Constitution, resample: bool = False) -> RelabelPlan:
    """The edited constitution's principles for each pair of ``src`` (see the module docstring)."""
    s = src.label_settings
    old_weights: dict[str, float] = (src.manifest.get("constitution") or {}).get("principles") or {}
    new_weights = {p.id: w for p, w in zip(const.principles, const.weights)}
    by_id = {p.id: p for p in const.principles}
    plan = RelabelPlan(draws={}, resampled=resample)
    plan.removed = sorted(set(old_weights) - set(new_weights))
    plan.added = sorted(set(new_weights) - set(old_weights))
    plan.reweighted = sorted(p for p in set(old_weights) & set(new_weights) if abs(old_weights[p] - new_weights[p]) > 1e-12)
    old = src.draws()
    for r in src.records or ():
        if r["principle"] not in by_id:
            plan.dropped[r["principle"]] += 1
    for pid, lab in zip(src.pair_ids, src.judge_labels):
        if "identical" in lab.flags:
            continue  # never shown to the judge
        fresh = lambda: sample_label_principles(const, pid, s.ensemble, s.seed)  # noqa: E731
        if resample:
            plan.draws[pid] = fresh()
            plan.draws_changed += {p.id for p in plan.draws[pid]} != set(old.get(pid, ()))
            continue
        kept = [by_id[x] for x in old.get(pid, ()) if x in by_id]
        if not kept:
            plan.redrawn += pid in old  # a pair with no known draw (every comparison failed) draws as the run did
            kept = fresh()
        plan.draws[pid] = kept
    return plan


def check_relabellable(src: LabelledRun) -> None:
    if src.pairs is None or src.records is None:
        raise RunReadError(
            f"{src.path} was labelled by an rlaif that did not keep its pairs and judge requests "
            "(chunks/*.pairs.jsonl, chunks/*.judgements.jsonl), so nothing in it can be reused: label the pairs "
            "again with the edited constitution (rlaif label) and compare the two runs with rlaif diff")


def relabel_run(src: LabelledRun, out: str | Path, const: Constitution, engine_factory: Callable[[], Engine], feedback_model: str,
                judge_id: dict[str, Any], resample: bool = False, overwrite: bool = False, log: Callable[[str], None] = print,
                show_progress: bool = True, ray: RayConfig | None = None, in_process_model: bool = True) -> tuple[dict[str, Any], RelabelPlan]:
    """Relabel ``src`` into ``out`` with ``const`` (resumable); returns NEW's manifest and the plan."""
    from rlaif.pipeline.label import label_run

    check_relabellable(src)
    if Path(out).resolve() == src.path.resolve():
        raise RunReadError("--out must be a new folder: the relabel keeps the run it starts from as it is")
    plan = plan_relabel(src, const, resample)
    reuse = Reuse(plan.draws, index_records(src.records or ()),
                  {"from": src.fingerprint, "from_kind": src.kind, "resample": resample})
    if (src.manifest.get("finalise") or {}).get("calibration"):
        log(f"note: {src.path}'s labels were calibrated (--calibration), which was fitted for its constitution; "
            "the relabel's are not, so calibration swaps count among the flips")
    weights = src.settings.get("principle_reliability")  # --principle-reliability: kept, by principle id
    manifest = label_run(src.pairs or [], str(out), const, src.label_settings, engine_factory, feedback_model,
                         chunk_size=src.chunk_size, overwrite=overwrite, source=f"relabel of {src.path}", log=log,
                         show_progress=show_progress, ray=ray, in_process_model=in_process_model,
                         principle_weights=weights, judge_id=judge_id, reuse=reuse)
    return manifest, plan
