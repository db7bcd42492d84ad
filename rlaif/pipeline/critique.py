"""The critique-and-revise stage over one chunk of prompts (SL-CAI, Bai et al. 2022, sec. 3).

For every conversation of the chunk:

1. the policy answers the prompt (stage ``response``);
2. for each of R rounds a principle is sampled (weighted, seeded), the model is asked to
   critique its latest answer against it (``critique``) and then to revise it (``revision``).

Each stage is **one** batched engine call over every pending conversation of the chunk.
Critique and revision calls start with the same block -- system prompt plus few-shot
demonstrations -- so an engine with prefix caching computes that block once.

Each round critiques the latest answer in a fresh conversation (few-shot block, prompt,
latest answer, critique request) rather than stacking every earlier round into the
context: the demonstrations show exactly one round, and small models follow a prompt that
looks like their demonstrations far better than one that keeps growing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from rlaif.constitution import Constitution, Principle
from rlaif.engine.base import ChatRequest, Engine, SamplingConfig
from rlaif.data.records import Completion, Message, PromptRecord, Round, Step, Trajectory
from rlaif.seeds import derive_seed


def sample_principle(const: Constitution, run_seed: int, prompt_id: str, sample: int, round_: int) -> Principle:
    """The principle of one round: weighted and reproducible, independent of chunking."""
    rng = random.Random(derive_seed(run_seed, prompt_id, sample, "principle", round_))
    return const.sample_principles(rng, 1)[0]


def demonstration_turns(const: Constitution) -> list[Message]:
    """The few-shot demonstrations flattened into chat turns."""
    msgs: list[Message] = []
    for d in const.demonstrations:
        msgs += [
            *d.context,
            {"role": "user", "content": d.prompt},
            {"role": "assistant", "content": d.response},
            {"role": "user", "content": d.critique_request},
            {"role": "assistant", "content": d.critique},
            {"role": "user", "content": d.revision_request},
            {"role": "assistant", "content": d.revision},
        ]
    return msgs


def critique_context(const: Constitution, prompt: Sequence[Message], demos: list[Message]) -> list[Message]:
    """System prompt, demonstrations, then the prompt's own turns.

    Everything before the prompt is the same for every conversation of a run (the shared
    prefix); a prompt that brings its own system message keeps it in place of the
    constitution's.
    """
    own = [m for m in prompt if m["role"] == "system"]
    system = own[:1] or ([{"role": "system", "content": const.system_prompt}] if const.system_prompt else [])
    return [*system, *demos, *(m for m in prompt if m["role"] != "system")]


def with_system(const: Constitution, prompt: Sequence[Message]) -> list[Message]:
    """The prompt as the policy sees it: the constitution's system prompt unless it brings its own."""
    if const.system_prompt and prompt[0]["role"] != "system":
        return [{"role": "system", "content": const.system_prompt}, *prompt]
    return list(prompt)


def _step(request: str, c: Completion) -> Step:
    return Step(request, c.text.strip(), c.finish_reason, c.prompt_tokens, c.completion_tokens)


@dataclass
class _Pending:
    prompt: PromptRecord
    sample: int
    initial: Step | None = None
    rounds: list[Round] = field(default_factory=list)
    failure: str | None = None
    retryable: bool = False
    latest: str = ""

    def fail(self, reason: str, out: Completion) -> None:
        self.failure = reason
        self.retryable = out.retryable


@dataclass(frozen=True)
class LoopSettings:
    rounds: int
    samples_per_prompt: int
    seed: int
    sampling: dict[str, SamplingConfig]


def run_chunk(
    engine: Engine,
    const: Constitution,
    prompts: Sequence[PromptRecord],
    settings: LoopSettings,
    label: str = "",
) -> list[Trajectory]:
    """Run every stage over one chunk; returns one trajectory per (prompt, sample), in order."""
    convs = [_Pending(p, s) for p in prompts for s in range(settings.samples_per_prompt)]
    tag = f"{label} " if label else ""

    # Stage 1: initial responses, one batched call.
    requests = [
        ChatRequest(tuple(with_system(const, c.prompt.messages)), derive_seed(settings.seed, c.prompt.id, c.sample, "response"),
                    tag=c.prompt.id)
        for c in convs
    ]
    for c, out in zip(convs, engine.generate(requests, settings.sampling["response"], desc=f"{tag}response")):
        if not out.ok:
            c.fail(f"response: {out.error}", out)
            continue
        c.initial = _step("", out)
        c.latest = c.initial.text

    # Stage 2: R rounds of critique then revision, each one batched call.
    demos = demonstration_turns(const)
    for r in range(settings.rounds):
        active = [c for c in convs if c.failure is None]
        if not active:
            break
        principles = [sample_principle(const, settings.seed, c.prompt.id, c.sample, r) for c in active]
        bases = [critique_context(const, c.prompt.messages, demos) + [{"role": "assistant", "content": c.latest}] for c in active]

        crit_reqs = [
            ChatRequest(tuple(b + [{"role": "user", "content": p.critique}]), derive_seed(settings.seed, c.prompt.id, c.sample, "critique", r),
                        tag=c.prompt.id)
            for b, c, p in zip(bases, active, principles)
        ]
        critiques = engine.generate(crit_reqs, settings.sampling["critique"], desc=f"{tag}critique {r + 1}/{settings.rounds}")

        rev_slots, rev_reqs = [], []
        for i, (b, c, p, out) in enumerate(zip(bases, active, principles, critiques)):
            if not out.ok:
                c.fail(f"critique round {r + 1}: {out.error}", out)
                continue
            conv = b + [
                {"role": "user", "content": p.critique},
                {"role": "assistant", "content": out.text.strip()},
                {"role": "user", "content": p.revision},
            ]
            rev_slots.append(i)
            rev_reqs.append(ChatRequest(tuple(conv), derive_seed(settings.seed, c.prompt.id, c.sample, "revision", r), tag=c.prompt.id))
        revisions = engine.generate(rev_reqs, settings.sampling["revision"], desc=f"{tag}revision {r + 1}/{settings.rounds}")
        for i, out in zip(rev_slots, revisions):
            c, p = active[i], principles[i]
            if not out.ok:
                c.fail(f"revision round {r + 1}: {out.error}", out)
                continue
            c.rounds.append(Round(p.id, _step(p.critique, critiques[i]), _step(p.revision, out)))
            # An empty revision would erase the answer; the next round keeps the last real one.
            if out.text.strip():
                c.latest = out.text.strip()

    return [
        Trajectory(
            id=f"{c.prompt.id}#{c.sample}",
            prompt_id=c.prompt.id,
            sample=c.sample,
            prompt=tuple(c.prompt.messages),
            system_prompt=const.system_prompt,
            initial=c.initial,
            rounds=tuple(c.rounds),
            status="failed" if c.failure else "ok",
            failure=c.failure,
            meta=dict(c.prompt.meta),
            retryable=c.retryable,
        )
        for c in convs
    ]
