"""The constitution judge asked pointwise: is this step acceptable under principle P, given the steps before it?

Step labels from written principles (``rlaif label-steps --source judge``). For step ``k`` of a
solution the judge reads the conversation, steps 1..k-1, step k and one principle (its title and
description), then a yes/no question. As in the labeller, nothing is parsed from free text:
P(Yes) is read from the normalised log-probabilities of the option tokens "Yes" and "No" at the
first position of the answer (``engine.score_options``), and text is quoted as data
(:func:`rlaif.data.quoting.sanitise`).

What the pair labeller does against its biases carries over where it applies:

* **Two phrasings instead of two orders.** Each question is asked twice, once where "Yes" means
  the step is acceptable and once where "Yes" means it breaks the principle;
  ``P(acceptable) = (P(Yes | positive) + P(No | negative)) / 2``. A judge that leans to "Yes"
  whatever it is asked pulls the two in opposite directions, so the lean cancels to first order
  (a judge answering "Yes" to everything gets 0.5, a tie, not a verdict). The share of questions
  whose two phrasings agree is reported, as the labeller reports the agreement of its two orders.
* **Ensemble.** ``ensemble`` distinct principles are drawn per solution (weighted, seeded by the
  solution id, the same principles for all its steps); a step's probability is their mean.
* **Ties.** A step whose probability lies within ``tie_band`` of 0.5 is flagged "tie"; its bool
  label is False (a step the judge cannot call acceptable is not labelled acceptable).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from rlaif.constitution import Constitution, Principle
from rlaif.data.quoting import render_conversation, sanitise
from rlaif.data.records import Message
from rlaif.engine.base import Engine, ScoreRequest
from rlaif.seeds import derive_seed

YES_NO = ("Yes", "No")
POSITIVE = "Is step {k} acceptable under this principle, given the steps before it?"
NEGATIVE = "Does step {k} break this principle or make a mistake, given the steps before it?"
INSTRUCTION = "Answer with Yes or No."
MAX_STEP_CHARS = 2000


@dataclass(frozen=True)
class StepJudgeSettings:
    ensemble: int = 2
    """Principles drawn per solution (distinct, weighted); a step's probability is their mean."""
    tie_band: float = 0.0
    """Steps with |P - 0.5| <= tie_band are ties (flagged; label False)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ensemble < 1:
            raise ValueError("ensemble must be >= 1")
        if not 0 <= self.tie_band < 0.5:
            raise ValueError("tie_band must be in [0, 0.5)")


@dataclass
class StepVerdicts:
    """The judge's reading of every step of one solution (``error`` set when a request failed)."""

    probs: list[float] = field(default_factory=list)
    per_principle: dict[str, list[float]] = field(default_factory=dict)
    p_yes: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """Per principle and step: (P(Yes | positive), P(Yes | negative))."""
    flags: list[list[str]] = field(default_factory=list)
    error: str | None = None
    retryable: bool = False

    def labels(self) -> list[bool]:
        return [p > 0.5 and "tie" not in f for p, f in zip(self.probs, self.flags)]


def step_question(prompt: Sequence[Message], steps: Sequence[str], k: int, principle: Principle, question: str) -> str:
    """The user turn the judge reads about step ``k`` (0-based) of ``steps`` under ``principle``."""
    conv, _ = sanitise(render_conversation(prompt), None)
    before = "\n".join(f"Step {i + 1}: {sanitise(s, MAX_STEP_CHARS)[0]}" for i, s in enumerate(steps[:k])) or "(no steps yet)"
    step, _ = sanitise(steps[k], MAX_STEP_CHARS)
    rule = principle.title.rstrip(".") + "." + (f" {principle.description.strip()}" if principle.description.strip() else "")
    return (f"Conversation:\n{conv}\n\n"
            f"Solution so far:\n{before}\n\n"
            f"Step {k + 1}: {step or '(empty step)'}\n\n"
            f"Principle: {rule}\n\n"
            f"{question.format(k=k + 1)} {INSTRUCTION}")


def judge_principles(const: Constitution, solution_id: str, k: int, seed: int) -> list[Principle]:
    return const.sample_distinct(random.Random(derive_seed(seed, solution_id, "step-judge")), k)


def judge_steps(engine: Engine, const: Constitution, items: Sequence[tuple[str, Sequence[Message], Sequence[str]]],
                s: StepJudgeSettings, desc: str = "judge steps") -> list[StepVerdicts]:
    """Judge every step of every ``(solution id, prompt, steps)`` item in one scoring call."""
    jobs: list[tuple[int, str, int, int]] = []
    reqs: list[ScoreRequest] = []
    chosen = []
    for i, (sid, prompt, steps) in enumerate(items):
        principles = judge_principles(const, sid, s.ensemble, s.seed)
        chosen.append(principles)
        for p in principles:
            for k in range(len(steps)):
                for phrasing, q in enumerate((POSITIVE, NEGATIVE)):
                    jobs.append((i, p.id, k, phrasing))
                    reqs.append(ScoreRequest(({"role": "user", "content": step_question(prompt, steps, k, p, q)},)))
    scores = engine.score_options(reqs, YES_NO, desc=desc) if reqs else []
    raw: dict[tuple[int, str, int], list[Any]] = {}
    out = [StepVerdicts() for _ in items]
    for (i, pid, k, phrasing), sc in zip(jobs, scores):
        if not sc.ok:
            if out[i].error is None:
                out[i].error, out[i].retryable = sc.error, sc.retryable
            else:
                out[i].retryable = out[i].retryable or sc.retryable
            continue
        raw.setdefault((i, pid, k), [None, None])[phrasing] = math.exp(sc.logprobs[0])
    for i, (_, _, steps) in enumerate(items):
        v = out[i]
        if v.error is not None:
            continue
        for p in chosen[i]:
            pairs = [tuple(raw[(i, p.id, k)]) for k in range(len(steps))]
            v.p_yes[p.id] = pairs
            v.per_principle[p.id] = [0.5 * (pos + (1.0 - neg)) for pos, neg in pairs]
        for k in range(len(steps)):
            prob = sum(v.per_principle[p.id][k] for p in chosen[i]) / len(chosen[i])
            v.probs.append(prob)
            v.flags.append(["tie"] if abs(prob - 0.5) <= s.tie_band else [])
    return out


def diagnostics(verdicts: Sequence[StepVerdicts]) -> dict[str, Any]:
    """What the run learned about the judge: how often its two phrasings agree, how much it leans to
    "Yes", its mean probability per principle, the ties and the share of steps labelled acceptable."""
    pairs = [pq for v in verdicts if v.error is None for per in v.p_yes.values() for pq in per]
    steps = [(p, f) for v in verdicts if v.error is None for p, f in zip(v.probs, v.flags)]
    by_principle: dict[str, list[float]] = {}
    for v in verdicts:
        for pid, ps in v.per_principle.items():
            by_principle.setdefault(pid, []).extend(ps)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "questions": len(pairs),
        "phrasing_agreement": mean([float((pos > 0.5) == (neg < 0.5)) for pos, neg in pairs]),
        "yes_rate": mean([0.5 * (pos + neg) for pos, neg in pairs]),
        "steps": len(steps),
        "ties": sum("tie" in f for _, f in steps),
        "acceptable_share": mean([float(p > 0.5 and "tie" not in f) for p, f in steps]),
        "by_principle": {pid: {"n": len(ps), "mean_p": mean(ps)} for pid, ps in sorted(by_principle.items())},
    }


def judge_warnings(d: dict[str, Any]) -> list[str]:
    """Plain warnings about an uninformative step judge."""
    out = []
    if d.get("phrasing_agreement") is not None and d["phrasing_agreement"] < 0.6:
        out.append(f"the step judge's two phrasings agree on only {d['phrasing_agreement']:.0%} of questions: "
                   "its answers follow the wording more than the step")
    if d.get("steps") and d["ties"] / d["steps"] > 0.5:
        out.append(f"{d['ties']} of {d['steps']} steps are ties: the judge does not separate them")
    return out


class JudgeReward:
    """The pointwise judge as a reward: each response is judged whole, as a single step, and its reward is
    P(acceptable) averaged over the principles drawn for it (seeded by prompt and response). A request
    that fails raises (a reward must not silently be 0.5)."""

    def __init__(self, engine: Engine, const: Constitution, settings: StepJudgeSettings = StepJudgeSettings()):
        self.engine, self.const, self.settings = engine, const, settings

    def __call__(self, prompts: Sequence[Sequence[Message]], responses: Sequence[str]) -> list[float]:
        items = [(str(derive_seed(render_conversation(p), r)), p, [r]) for p, r in zip(prompts, responses)]
        verdicts = judge_steps(self.engine, self.const, items, self.settings, desc="judge reward")
        failed = next((v for v in verdicts if v.error is not None), None)
        if failed is not None:
            raise RuntimeError(f"the judge could not score a response: {failed.error}")
        return [v.probs[0] for v in verdicts]
