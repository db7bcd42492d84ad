"""AI preference labels from option log-probabilities (RL-CAI, Bai et al. 2022 sec. 4;
RLAIF, Lee et al. 2023 sec. 2).

For a pair of responses (x, y) to the same conversation, the feedback model answers a
multiple-choice question built from a principle's ``comparison`` question. The label is
read from the normalised probabilities of the option tokens "A" and "B" at the first
position of the answer -- one prefill restricted to those tokens, no free text to parse.

* **Both orders.** Each comparison is scored with x as (A) and with x as (B);
  P(x) = mean(P(A | x, y), P(B | y, x)). Position bias cancels; a pair records whether
  the two orders agreed.
* **Ensemble.** K distinct principles are sampled per pair (weighted, seeded by the pair
  id); each principle's P(x) is kept and the label is their mean.
* **Chain of thought** (option). The model first writes its reasoning, then the option
  probabilities are read after "Answer:". CoT probabilities are near 0 or 1,
  so they are clamped to a band (Constitutional AI used 40-60%).
* **Ties.** A pair whose P(x) lies within ``tie_band`` of 0.5 (exactly 0.5 by default) is a
  tie: it has no chosen side, and the preference dataset leaves it out unless asked to keep it.

Every comparison's raw P(option A) is kept with the label (``slot_probs``), so that the
judge's position and length biases can be measured over a run (:mod:`rlaif.pipeline.diagnostics`)
and its length preference removed once every pair is scored (:mod:`rlaif.pipeline.length_control`).

Text is data, not instructions: option markers and labels such as "(A)" or "Response B"
inside a response or the conversation are rewritten so that neither can name an option,
option markers in the judge's own reasoning are defused before it is read back, and the
two orders cancel whatever positional pull is left.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from rlaif.constitution import ComparisonExample, Constitution, Principle
from rlaif.seeds import derive_seed
from rlaif.engine.base import ChatRequest, Engine, SamplingConfig, ScoreRequest
from rlaif.data.quoting import defuse, render_conversation, sanitise  # noqa: F401  (rlaif.pipeline.judge's names too)
from rlaif.data.records import Message
from rlaif.pipeline.verdicts import VERDICT_MODES, check_scores, judge_engine, settings_of

# The comparison is asked in the user turn, the question after both responses, and the
# option letter is read as the very first token of the assistant's answer. Of the layouts
# measured on the default model (benchmarks/results/labeller-prompt-layouts.md) this one
# agreed best with the reference pairs; a judge system prompt and an "The answer is ("
# prefix both made the small model answer "B" almost regardless of content.
OPTIONS = ("A", "B")
ANSWER_PREFIX = ""
ANSWER_INSTRUCTION = "Answer with A or B."
COT_INSTRUCTION = "First explain in two or three sentences which response is better and why. Then give your answer as A or B."
COT_ANSWER_PREFIX = "\nAnswer:"
COT_OPTIONS = (" A", " B")


@dataclass(frozen=True)
class LabelSettings:
    """How pairs are judged."""

    ensemble: int = 4
    """Principles sampled per pair (distinct, weighted); the label is the mean over them. 4 is the
    setting measured in docs/labelling.md (benchmarks/results/labeller-agreement*.md)."""
    both_orders: bool = True
    """Score (x, y) and (y, x) and average, cancelling position bias."""
    cot: bool = False
    """Let the feedback model reason before the option probabilities are read."""
    cot_clamp: tuple[float, float] = (0.4, 0.6)
    """With CoT, each probability is clamped to this band (Constitutional AI: 40-60%)."""
    cot_sampling: SamplingConfig = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=160)
    tie_band: float = 0.0
    """Pairs with |P(x) - 0.5| <= tie_band are ties (no chosen side). 0: only exact 0.5."""
    keep_ties: bool = False
    """Keep ties in the preference dataset (flagged "tie", chosen_prob 0.5, in the pair's own
    order), or leave them out (default): a tie must not teach either side."""
    max_response_chars: int = 6000
    """Longer responses are cut (and the pair flagged) so that one long answer cannot fill the context."""
    few_shot: bool = False
    """Put the constitution's comparison examples before each question (off by default: on the
    default model they pull its answers toward copying the examples; see docs/labelling.md's table)."""
    seed: int = 0
    length_control: bool = False
    """Remove the part of the judge's log-odds explained by the length difference, fitted over
    all pairs of the run once they are scored (see :mod:`rlaif.pipeline.length_control`)."""
    verdict: str = "logprobs"
    """'logprobs': P(option) from the option tokens' log-probabilities; 'sampled': from K sampled
    verdicts per comparison, for judges that return no log-probabilities (:mod:`rlaif.pipeline.verdicts`)."""
    verdict_samples: int = 4
    """Sampled verdicts: valid votes per comparison (K)."""
    verdict_format: str = "json"
    """Sampled verdicts: 'json' ({"answer": "A"}, checked against a JSON schema) or 'letter' (the option alone)."""
    verdict_grammar: bool = True
    """Sampled verdicts: also send the format as a grammar where the backend enforces one."""
    verdict_retries: int = 2
    """Sampled verdicts: times a malformed verdict is asked again."""
    verdict_max_tokens: int = 32
    """Sampled verdicts: most tokens of one verdict."""

    def __post_init__(self) -> None:
        if self.ensemble < 1:
            raise ValueError("ensemble must be >= 1")
        if self.verdict not in VERDICT_MODES:
            raise ValueError(f"verdict must be one of {list(VERDICT_MODES)}, got {self.verdict!r}")
        settings_of(self)  # checks the verdict_* fields
        lo, hi = self.cot_clamp
        if not 0 <= lo <= 0.5 <= hi <= 1:
            raise ValueError("cot_clamp must be a band (lo, hi) with 0 <= lo <= 0.5 <= hi <= 1")
        if not 0 <= self.tie_band < 0.5:
            raise ValueError("tie_band must be in [0, 0.5)")


@dataclass(frozen=True)
class Pair:
    """Two responses to the same conversation; ``label`` is an optional reference ('a' or 'b')."""

    id: str
    prompt: tuple[Message, ...]
    response_a: str
    response_b: str
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class PairLabel:
    """The AI label of one pair. ``p_a`` = P(response_a is better)."""

    pair_id: str
    p_a: float
    per_principle: dict[str, float]
    order_agreement: float  # share of principles whose two orders agreed
    first_order_p_a: float  # P(a) from the (a, b) order only, for measuring position bias
    likert: int
    margin: float
    flags: tuple[str, ...] = ()
    reasoning: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    retryable: bool = False  # the error was transient; a resumed run labels the pair again
    slot_probs: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """Per principle, the raw P(option A) of each order scored: (x shown as A,) or
    (x shown as A, y shown as A). The material of the run's diagnostics and length control."""
    judge_p_a: float | None = None
    """Set when the label was length-controlled: the judge's own P(a) before the correction."""
    length_offset: float = 0.0
    """Log-odds removed by length control (``logit(judge_p_a) - logit(p_a)``)."""
    malformed: int = 0
    """Sampled verdicts (``--verdict sampled``) that failed their format check and were asked again."""

    @property
    def is_tie(self) -> bool:
        return "tie" in self.flags or self.p_a == 0.5

    @property
    def chosen(self) -> str | None:
        """'a' or 'b'; None for a tie or a failed label (neither side was preferred)."""
        if self.error is not None or self.is_tie:
            return None
        return "a" if self.p_a > 0.5 else "b"

    @property
    def chosen_prob(self) -> float:
        """P(chosen is better); 0.5 for a tie."""
        return 0.5 if self.chosen is None else max(self.p_a, 1.0 - self.p_a)


# ------------------------------------------------------------------ pure functions


def unswap(p_first_xy: float, p_first_yx: float) -> tuple[float, bool]:
    """P(x better) from both orders, and whether the orders agree.

    ``p_first_xy`` is P(option A) when x is shown as (A); ``p_first_yx`` is P(option A) when
    y is shown as (A), so P(x) in that order is 1 - p_first_yx. The label is their mean.
    """
    p_second = 1.0 - p_first_yx
    agree = (p_first_xy >= 0.5) == (p_second >= 0.5)
    return 0.5 * (p_first_xy + p_second), agree


def clamp(p: float, band: tuple[float, float]) -> float:
    return min(max(p, band[0]), band[1])


def likert(p: float) -> int:
    """8-point strength of preference for x: 1 = y much better ... 8 = x much better."""
    return 1 + min(7, int(p * 8))


def margin(p: float) -> float:
    """How much better the chosen response is, 0..3 (Llama 2's four levels: negligible .. significantly)."""
    return abs(likert(p) - 4.5) - 0.5


def sanitise_reasoning(text: str) -> tuple[str, bool]:
    """The judge's chain of thought as it is read back before "Answer:".

    Any verdict it already wrote is dropped (the verdict is read from the option log-probs),
    and option markers are defused, as in the responses, so that a marker the reasoning
    quoted from a response cannot stand right before the answer. "Response A" is kept: the
    reasoning names the responses that way. Returns the text and whether a marker was defused.
    """
    kept = re.split(r"(?i)\b(?:so )?the answer is|\banswer\s*:|\bthe better response is", text)[0].strip()
    cleaned = defuse(kept, labels=False)
    return cleaned, cleaned != kept


def question(principle_q: str, conversation: str, first: str, second: str, cot: bool) -> str:
    tail = COT_INSTRUCTION if cot else ANSWER_INSTRUCTION
    return (
        f"Conversation:\n{conversation}\n\n"
        f"Response A: {first or '(empty response)'}\n\n"
        f"Response B: {second or '(empty response)'}\n\n"
        f"{principle_q} {tail}"
    )


def few_shot_turns(examples: Sequence[ComparisonExample], principles: dict[str, Principle], default_q: str) -> list[Message]:
    turns: list[Message] = []
    for ex in examples:
        q = principles[ex.principle].comparison if ex.principle in principles else default_q
        user = question(q, f"User: {ex.prompt}", ex.response_a, ex.response_b, cot=False)
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": ex.better}]
    return turns


def sample_label_principles(const: Constitution, pair_id: str, k: int, seed: int) -> list[Principle]:
    rng = random.Random(derive_seed(seed, pair_id, "label"))
    return const.sample_distinct(rng, k)


# ------------------------------------------------------------------ the labeller


@dataclass
class _Job:
    pair_index: int
    principle: Principle
    flipped: bool  # True when y (response_b) is shown as option (A)
    messages: list[Message]
    prefix: str = ANSWER_PREFIX
    p_first: float | None = None
    reasoning: str = ""
    defused: bool = False  # option markers were removed from the reasoning
    error: str | None = None
    retryable: bool = False
    seed: int = 0  # the CoT request's seed
    key: str | None = None  # set by a cache: the hash of this comparison's request
    malformed: int = 0  # sampled verdicts that failed their format check


def label_pairs(engine: Engine, const: Constitution, pairs: Sequence[Pair], settings: LabelSettings, desc: str = "label", *,
                draws: Mapping[str, Sequence[Principle]] | None = None, cache: Any = None) -> list[PairLabel]:
    """Label every pair; each engine call covers every pending comparison of the batch.

    ``draws``: the principles that judge a pair, by pair id, in place of its fresh draw (a relabel
    keeps its run's draws). ``cache`` (:class:`rlaif.pipeline.judge_records.JudgeCache`): the
    comparisons whose request it has answered before are not sent again, and it records the
    answer of every comparison.
    """
    engine = judge_engine(engine, settings)  # sampled verdicts answer score_options for judges without log-probs
    principles = {p.id: p for p in const.principles}
    default_q = const.principles[0].comparison
    shots = few_shot_turns(const.comparison_examples, principles, default_q) if settings.few_shot else []
    jobs: list[_Job] = []
    early: dict[int, PairLabel] = {}
    pair_flags: dict[int, list[str]] = {}
    for i, pair in enumerate(pairs):
        a, fa = sanitise(pair.response_a, settings.max_response_chars)
        b, fb = sanitise(pair.response_b, settings.max_response_chars)
        conv, fc = sanitise(render_conversation(pair.prompt), None)
        flags = sorted(set(fa + fb + fc))
        if not pair.response_a.strip() or not pair.response_b.strip():
            flags.append("empty")
        pair_flags[i] = flags
        if pair.response_a.strip() == pair.response_b.strip():
            # Identical responses: nothing to prefer, and no model call to spend.
            early[i] = PairLabel(pair.id, 0.5, {}, 1.0, 0.5, likert(0.5), 0.0, tuple(sorted({*flags, "identical", "tie"})))
            continue
        drawn = draws.get(pair.id) if draws is not None else None
        for principle in drawn if drawn is not None else sample_label_principles(const, pair.id, settings.ensemble, settings.seed):
            for flipped in ((False, True) if settings.both_orders else (False,)):
                first, second = (b, a) if flipped else (a, b)
                user = question(principle.comparison, conv, first, second, settings.cot)
                msgs = [*shots, {"role": "user", "content": user}]
                seed = derive_seed(settings.seed, pair.id, principle.id, flipped, "cot") if settings.cot else 0
                jobs.append(_Job(i, principle, flipped, msgs, seed=seed))
    if cache is not None:
        cache.reuse(jobs, pairs)  # fills in p_first (and the reasoning) of the comparisons answered before
    ask = [j for j in jobs if j.p_first is None]

    if settings.cot and ask:
        reqs = [ChatRequest(tuple(j.messages), j.seed, tag=pairs[j.pair_index].id) for j in ask]
        for j, out in zip(ask, engine.generate(reqs, settings.cot_sampling, desc=f"{desc} reasoning")):
            if not out.ok:
                j.error, j.retryable = out.error, out.retryable
                continue
            # Keep the reasoning, drop any verdict it already wrote: the verdict is read from log-probs.
            j.reasoning, j.defused = sanitise_reasoning(out.text)
            j.prefix = j.reasoning + COT_ANSWER_PREFIX

    pending = [j for j in ask if j.error is None]
    options = COT_OPTIONS if settings.cot else OPTIONS
    scores = engine.score_options([ScoreRequest(tuple(j.messages), j.prefix, tag=pairs[j.pair_index].id) for j in pending],
                                  options, desc=desc)
    check_scores(scores, engine.model)
    for j, s in zip(pending, scores):
        j.malformed = s.malformed
        if s.ok:
            j.p_first = math.exp(s.logprobs[0])
        else:
            j.error, j.retryable = s.error, s.retryable
    if cache is not None:
        cache.record(jobs, pairs)

    by_pair: dict[int, list[_Job]] = {}
    for j in jobs:
        by_pair.setdefault(j.pair_index, []).append(j)
    out: list[PairLabel] = []
    for i, pair in enumerate(pairs):
        if i in early:
            out.append(early[i])
            continue
        pj = by_pair[i]
        failed = [j for j in pj if j.error]
        if failed:
            out.append(PairLabel(pair.id, 0.5, {}, 0.0, 0.5, likert(0.5), 0.0, tuple(pair_flags[i]),
                                 error=failed[0].error, retryable=any(j.retryable for j in failed),
                                 malformed=sum(j.malformed for j in pj)))
            continue
        per: dict[str, float] = {}
        slots: dict[str, tuple[float, ...]] = {}
        agree_n = 0
        first_order = []
        reasoning = {}
        for principle in dict.fromkeys(j.principle for j in pj):
            js = [j for j in pj if j.principle is principle]
            direct = next(j for j in js if not j.flipped)
            p_direct = clamp(direct.p_first, settings.cot_clamp) if settings.cot else direct.p_first
            first_order.append(p_direct)
            if settings.both_orders:
                swapped = next(j for j in js if j.flipped)
                p_swapped = clamp(swapped.p_first, settings.cot_clamp) if settings.cot else swapped.p_first
                p, agree = unswap(p_direct, p_swapped)
                slots[principle.id] = (p_direct, p_swapped)
            else:
                p, agree = p_direct, True
                slots[principle.id] = (p_direct,)
            per[principle.id] = p
            agree_n += agree
            if settings.cot:
                reasoning[principle.id] = direct.reasoning
        p_a = sum(per.values()) / len(per)
        flags = list(pair_flags[i])
        if abs(p_a - 0.5) <= settings.tie_band:
            flags.append("tie")
        if any(j.defused for j in pj):
            flags.append("defused")
        out.append(
            PairLabel(
                pair.id, p_a, per, agree_n / len(per), sum(first_order) / len(first_order),
                likert(p_a), margin(p_a), tuple(sorted(set(flags))), reasoning, slot_probs=slots,
                malformed=sum(j.malformed for j in pj),
            )
        )
    return out
