"""``rlaif try``: critique and revise a few prompts with one principle and judge the result.

The loop is :func:`rlaif.pipeline.critique.run_chunk`'s, request for request: the same
conversations and the same seeds (``derive_seed(seed, prompt id, 0, stage, round)``), so a
try shows what ``rlaif generate --seed S`` would write for those prompts with a constitution
of that one principle. Every stage is one batched engine call; with ``--against`` both
versions of the principle share one initial response per prompt (same request, same seed) and
their critiques and revisions go into the same batched calls.

The judge then compares each prompt's initial response with its final revision under the
principle's comparison question, in both orders (:func:`rlaif.pipeline.judge.label_pairs`
with an ensemble of one), and with ``--against`` also the two final revisions head to head
under the working copy's question.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from rlaif.data.records import Completion, PromptRecord, Round, Step
from rlaif.engine.base import ChatRequest, Engine, SamplingConfig
from rlaif.pipeline.config import BUILTIN_SAMPLING, STAGES
from rlaif.pipeline.critique import critique_context, demonstration_turns, with_system
from rlaif.pipeline.judge import LabelSettings, Pair, PairLabel, label_pairs
from rlaif.pipeline.workbench_sources import Version
from rlaif.seeds import derive_seed


@dataclass
class Attempt:
    """One version of the principle on one prompt."""

    rounds: list[Round] = field(default_factory=list)
    latest: str = ""
    failure: str | None = None
    judge: PairLabel | None = None
    """Initial response (a) vs final revision (b) under this version's comparison question."""

    @property
    def final(self) -> str:
        return self.latest

    @property
    def p_revision(self) -> float | None:
        """P(the final revision is better than the initial response); None when not judged."""
        if self.judge is None or self.judge.error is not None:
            return None
        return 1.0 - self.judge.p_a

    def order_probs(self) -> tuple[float, float] | None:
        """P(revision better) read in each order: (initial shown first, revision shown first)."""
        if self.judge is None or not self.judge.slot_probs:
            return None
        direct, swapped = next(iter(self.judge.slot_probs.values()))
        return 1.0 - direct, swapped


@dataclass
class PromptResult:
    prompt: PromptRecord
    initial: Step | None = None
    failure: str | None = None
    attempts: dict[str, Attempt] = field(default_factory=dict)
    """By version label, in the order the versions were given."""
    head_to_head: PairLabel | None = None
    """With two versions: the earlier version's final revision (a) vs the working copy's (b)."""

    @property
    def p_new_better(self) -> float | None:
        if self.head_to_head is None or self.head_to_head.error is not None:
            return None
        return 1.0 - self.head_to_head.p_a


@dataclass
class WorkbenchResult:
    versions: list[Version]
    results: list[PromptResult]
    seed: int
    rounds: int
    sampling: dict[str, SamplingConfig]

    def mean_p_revision(self, label: str) -> float | None:
        ps = [r.attempts[label].p_revision for r in self.results if label in r.attempts]
        ps = [p for p in ps if p is not None]
        return sum(ps) / len(ps) if ps else None

    def revision_wins(self, label: str) -> tuple[int, int]:
        """(revisions the judge preferred, prompts judged); a tie (exactly 0.5) is no win."""
        ps = [r.attempts[label].p_revision for r in self.results if label in r.attempts]
        ps = [p for p in ps if p is not None]
        return sum(p > 0.5 for p in ps), len(ps)


def sampling_for(versions: Sequence[Version], max_tokens: int | None = None, temperature: float | None = None) -> dict[str, SamplingConfig]:
    """Per-stage sampling as ``rlaif generate`` resolves it from the constitution's defaults,
    with ``max_tokens`` / ``temperature`` (when given) applied to every stage."""
    import dataclasses

    sampling = dict(BUILTIN_SAMPLING)
    for stage, raw in ((versions[0].const.defaults or {}).get("sampling") or {}).items():
        if stage in STAGES and isinstance(raw, dict):
            sampling[stage] = dataclasses.replace(sampling[stage], **raw)
    for stage in STAGES:
        change = {k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature)) if v is not None}
        if change:
            sampling[stage] = dataclasses.replace(sampling[stage], **change)
    return sampling


def _step(request: str, c: Completion) -> Step:
    return Step(request, c.text.strip(), c.finish_reason, c.prompt_tokens, c.completion_tokens)


def run_workbench(engine: Engine, versions: Sequence[Version], prompts: Sequence[PromptRecord], *, seed: int = 0,
                  rounds: int = 1, sampling: dict[str, SamplingConfig] | None = None, judge: bool = True) -> WorkbenchResult:
    """Critique and revise every prompt with every version of the principle, then judge."""
    if not versions:
        raise ValueError("run_workbench needs at least one version of the principle")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    sampling = sampling or sampling_for(versions)
    base = versions[0].const  # the versions differ in one principle file only: same system prompt
    results = [PromptResult(p) for p in prompts]

    reqs = [ChatRequest(tuple(with_system(base, r.prompt.messages)), derive_seed(seed, r.prompt.id, 0, "response")) for r in results]
    outs = engine.generate(reqs, sampling["response"], desc="response")
    for r, out in zip(results, outs):
        if not out.ok:
            r.failure = f"response: {out.error}"
            continue
        r.initial = _step("", out)
        for v in versions:
            r.attempts[v.label] = Attempt(latest=r.initial.text)

    demos = {v.label: demonstration_turns(v.const) for v in versions}
    for rnd in range(rounds):
        jobs = [(r, v, r.attempts[v.label]) for r in results for v in versions
                if r.initial is not None and r.attempts[v.label].failure is None]
        if not jobs:
            break
        bases = [critique_context(v.const, r.prompt.messages, demos[v.label]) + [{"role": "assistant", "content": a.latest}]
                 for r, v, a in jobs]
        crit_reqs = [ChatRequest(tuple(b + [{"role": "user", "content": v.principle.critique}]),
                                 derive_seed(seed, r.prompt.id, 0, "critique", rnd)) for b, (r, v, _) in zip(bases, jobs)]
        critiques = engine.generate(crit_reqs, sampling["critique"], desc=f"critique {rnd + 1}/{rounds}")
        rev_slots, rev_reqs = [], []
        for i, (b, (r, v, a), out) in enumerate(zip(bases, jobs, critiques)):
            if not out.ok:
                a.failure = f"critique round {rnd + 1}: {out.error}"
                continue
            conv = b + [{"role": "user", "content": v.principle.critique}, {"role": "assistant", "content": out.text.strip()},
                        {"role": "user", "content": v.principle.revision}]
            rev_slots.append(i)
            rev_reqs.append(ChatRequest(tuple(conv), derive_seed(seed, r.prompt.id, 0, "revision", rnd)))
        revisions = engine.generate(rev_reqs, sampling["revision"], desc=f"revision {rnd + 1}/{rounds}")
        for i, out in zip(rev_slots, revisions):
            r, v, a = jobs[i]
            if not out.ok:
                a.failure = f"revision round {rnd + 1}: {out.error}"
                continue
            a.rounds.append(Round(v.principle.id, _step(v.principle.critique, critiques[i]), _step(v.principle.revision, out)))
            if out.text.strip():  # an empty revision keeps the last real answer, as in run_chunk
                a.latest = out.text.strip()

    if judge:
        _judge(engine, versions, results, seed)
    return WorkbenchResult(list(versions), results, seed, rounds, sampling)


def _judge(engine: Engine, versions: Sequence[Version], results: list[PromptResult], seed: int) -> None:
    settings = LabelSettings(ensemble=1, both_orders=True, seed=seed)
    for v in versions:
        todo = [r for r in results if r.initial is not None and r.attempts[v.label].failure is None and r.attempts[v.label].rounds]
        pairs = [Pair(f"{r.prompt.id}#0:initial~final", r.prompt.messages, r.initial.text, r.attempts[v.label].final) for r in todo]
        if pairs:
            for r, lab in zip(todo, label_pairs(engine, v.const, pairs, settings, desc=f"judge {v.label}")):
                r.attempts[v.label].judge = lab
    if len(versions) == 2:
        old, new = versions
        todo = [r for r in results if r.initial is not None and all(r.attempts[v.label].failure is None for v in versions)]
        pairs = [Pair(f"{r.prompt.id}#0:{old.label}~working", r.prompt.messages, r.attempts[old.label].final,
                      r.attempts[new.label].final) for r in todo]
        if pairs:
            for r, lab in zip(todo, label_pairs(engine, new.const, pairs, settings, desc="judge before vs after")):
                r.head_to_head = lab
