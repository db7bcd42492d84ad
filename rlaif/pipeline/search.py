"""Step-level beam search under a process reward model (``rlaif bon --search beam``).

For each prompt the search keeps up to ``beam`` partial solutions (beams). Every round
spends ``beam * expand`` requests, spread evenly over the unfinished beams (``expand`` each when
all ``beam`` are open; all of them on the empty solution in the first round). Each request
continues its beam's text (``ChatRequest.assistant_prefix``; seeded by the round, the beam's place
and the request's number) and stops at
the end of a step (``ChatRequest.stop``: a newline for the ``lines`` splitter, a blank line for
``paragraphs``, the marker for ``marker``). Every candidate is scored by the PRM over all its
steps, reduced to one number by the aggregate (min, prod or last), and the best ``beam`` among the
new candidates and the finished beams are kept (ties: the earlier). Two beams may hold the same
text: a prefix that several samples reached and the PRM ranks high gets that many beams' share of
the next round (their requests have different seeds). A beam is
finished when its last request ended by itself (the end token), when it has used the token budget
(``max_tokens`` per solution), or after ``max_steps`` rounds. This is the PRM-guided beam search
of Snell et al. 2024 (sec. 5.2); Math-Shepherd and Lightman et al. rerank whole samples instead
(best-of-N).

A prompt any of whose requests failed gets candidates without rewards that record the error
(``error``, ``retryable``): the run's manifest counts them missing and a rerun searches that prompt
again (:func:`rlaif.pipeline.bon.run_bon`).

The answer is the best finished beam. Every generated token is counted (``generated_tokens``:
the tokens of every expansion, kept or not), so the search can be compared with best-of-N at an
equal number of generated tokens. The chunk rows have best-of-N's shape (the final beams are the
candidates), so :func:`rlaif.pipeline.bon.run_bon` writes the run folder and the datasets.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence

from rlaif.data.records import PromptRecord
from rlaif.data.steps import StepSplitter
from rlaif.engine.base import ChatRequest, Engine, SamplingConfig
from rlaif.reward.prm import aggregate
from rlaif.seeds import derive_seed


class StepScorer(Protocol):
    """What the search needs of a PRM (:class:`rlaif.reward.prm.ProcessRewardModel` has it)."""

    splitter: StepSplitter

    def step_probs(self, prompts: Sequence[Any], steps: Sequence[Sequence[str]]) -> list[list[float]]: ...


@dataclass(frozen=True)
class SearchSettings:
    beam: int = 4
    """Partial solutions kept after every round (at least 2: the final beams make best-of-N's pair)."""
    expand: int = 4
    """Next steps sampled from each unfinished beam per round."""
    max_steps: int = 32
    """Rounds at most (a beam still unfinished then is finished as it is)."""
    aggregate: str = "min"
    """How a candidate's step scores become one number: min, prod or last."""

    def __post_init__(self) -> None:
        if self.beam < 2 or self.expand < 1 or self.max_steps < 1:
            raise ValueError("beam search needs beam >= 2, expand >= 1 and max_steps >= 1")
        aggregate([], self.aggregate)  # checks the name


def step_stop(splitter: StepSplitter) -> str:
    """The stop string that ends one step of ``splitter``."""
    if splitter.mode == "lines":
        return "\n"
    if splitter.mode == "paragraphs":
        return "\n\n"
    if splitter.mode == "marker":
        return splitter.pattern
    raise ValueError("beam search needs a PRM whose steps are cut by lines, paragraphs or a marker, not a regex")


@dataclass
class Beam:
    text: str
    tokens: int = 0
    """Tokens generated along this beam's path."""
    finished: bool = False
    finish_reason: str = "stop"
    score: float | None = None


def search_prompt_batch(engine: Engine, prm: StepScorer, prompts: Sequence[PromptRecord], s: SearchSettings,
                        sampling: SamplingConfig, seed: int) -> list[dict[str, Any]]:
    """Beam search for every prompt of a chunk, one engine call and one PRM call per round for all of them;
    chunk rows in best-of-N's shape (the final beams as candidates) plus ``generated_tokens``."""
    stop = step_stop(prm.splitter)
    beams: list[list[Beam]] = [[Beam("")] for _ in prompts]
    generated = [0] * len(prompts)
    failures: dict[int, Any] = {}  # a prompt's first failed request (its search is not what a run without failures finds)
    for rnd in range(s.max_steps):
        open_ = [(j, b) for j, bs in enumerate(beams) for b in bs if not b.finished]
        if not open_:
            break
        reqs, owners = [], []
        per_prompt = {j: [b for jj, b in open_ if jj == j] for j, _ in open_}
        for j, b in open_:
            room = sampling.max_tokens - b.tokens
            mine = per_prompt[j]
            slot = next(i for i, x in enumerate(mine) if x is b)
            n, extra = divmod(s.beam * s.expand, len(mine))  # this round's requests, spread over the open beams
            for k in range(n + (slot < extra)):
                reqs.append(ChatRequest(prompts[j].messages, derive_seed(seed, prompts[j].id, rnd, slot, k, "beam"),
                                        assistant_prefix=b.text, stop=(stop,)))
                owners.append((j, b, room))
        outs = _generate_with_rooms(engine, reqs, [r for _, _, r in owners], sampling)
        cands: list[list[Beam]] = [[b for b in bs if b.finished] for bs in beams]
        for (j, b, room), o in zip(owners, outs):
            if not o.ok:
                failures.setdefault(j, o)
                continue
            generated[j] += o.completion_tokens
            used = b.tokens + o.completion_tokens
            ended = o.finish_reason == "stop" and not o.text.endswith(stop)
            out_of_room = o.finish_reason == "length" or used >= sampling.max_tokens or rnd == s.max_steps - 1
            cands[j].append(Beam(b.text + o.text, used, ended or out_of_room, "length" if out_of_room and not ended else "stop"))
        fresh = [(j, c) for j, cs in enumerate(cands) for c in cs if c.score is None]
        if fresh:
            steps = [prm.splitter.split(c.text) for _, c in fresh]
            probs = prm.step_probs([list(prompts[j].messages) for j, _ in fresh], steps)
            for (_, c), p in zip(fresh, probs):
                c.score = aggregate(p, s.aggregate)
        # keep the best `beam` candidates (ties: the earlier); a prompt whose requests all failed keeps its beams
        beams = [sorted(cs, key=lambda c: -c.score)[: s.beam] if cs else bs for cs, bs in zip(cands, beams)]
    rows = []
    for j, p in enumerate(prompts):
        final = sorted(beams[j], key=lambda c: -(c.score if c.score is not None else float("-inf")))
        cands = [{"sample": i, "text": c.text, "finish_reason": c.finish_reason if c.finished else "length",
                  "completion_tokens": c.tokens, "reward": c.score} for i, c in enumerate(final)]
        if j in failures:  # no reward: the datasets leave the prompt out, the manifest counts it missing, a rerun redoes it
            o = failures[j]
            cands = [{**c, "reward": None, "error": o.error or "a request failed", "retryable": bool(o.retryable)} for c in cands]
        rows.append({"prompt_id": p.id, "prompt": [dict(m) for m in p.messages], "category": str(p.meta.get("category", "")),
                     "candidates": cands, "generated_tokens": generated[j]})
    return rows


def _generate_with_rooms(engine: Engine, reqs: list[ChatRequest], rooms: list[int], sampling: SamplingConfig):
    """Generate every request with its own token limit (what is left of its beam's budget), one engine call
    per distinct limit, results in request order."""
    out: list[Any] = [None] * len(reqs)
    for room in sorted(set(rooms)):
        idx = [i for i, r in enumerate(rooms) if r == room]
        cfg = SamplingConfig(sampling.temperature, sampling.top_p, max(1, room))
        for i, o in zip(idx, engine.generate([reqs[i] for i in idx], cfg, desc="beam search")):
            out[i] = o
    return out


def describe(s: SearchSettings) -> dict[str, Any]:
    return {"search": "beam", **asdict(s)}
