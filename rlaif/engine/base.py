"""The engine protocol: the only surface the pipeline uses to talk to a model.

An engine takes a batch of chat conversations and returns one completion per conversation,
in order. Batches are meant to be large: a stage of a chunk is a single call. Requests
that cannot be served (a prompt longer than the context) come back as completions with
``error`` set instead of failing the whole batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from rlaif.data.records import Completion, Message


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings of one stage."""

    temperature: float = 0.7
    """Softmax temperature; 0 means greedy."""
    top_p: float = 0.95
    """Nucleus sampling mass, in (0, 1]."""
    max_tokens: int = 256
    """Most new tokens per completion."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class OutputConstraint:
    """A structured-output constraint a backend enforces where it can (a vLLM engine or server, an
    OpenAI-style ``response_format``); a backend without one ignores it, so the text is checked anyway.

    Exactly one is set: ``choice`` (the answer is one of these strings) or ``json_schema`` (the
    answer is JSON valid under this schema, given as JSON text so the request stays hashable).
    """

    choice: tuple[str, ...] = ()
    json_schema: str = ""

    def __post_init__(self) -> None:
        if bool(self.choice) == bool(self.json_schema):
            raise ValueError("an output constraint is either choice or json_schema")


@dataclass(frozen=True)
class ChatRequest:
    """One conversation to continue with an assistant turn."""

    messages: tuple[Message, ...]
    seed: int | None = None
    """Per-request seed: the same request and seed give the same text whatever the batch."""
    tag: str = field(default="", compare=False)
    """The item (prompt or pair id) the request works for: lets a metering wrapper count per item."""
    constraint: OutputConstraint | None = None
    """Structured output the backend should enforce where it can (see :class:`OutputConstraint`)."""
    assistant_prefix: str = ""
    """Continue an assistant turn that already starts with this text: the prompt is
    ``chat_template(messages, add_generation_prompt=True) + assistant_prefix``, as a
    :class:`ScoreRequest`'s; the completion holds only the new text. Used to sample from a
    partial solution (Monte-Carlo step labels, step-level search)."""
    stop: tuple[str, ...] = ()
    """Stop once any of these strings has been generated; the completion ends with it and its
    ``finish_reason`` is "stop". Empty: stop at the end token or the token limit only."""


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to and including the earliest stop string, and whether one was found.

    What an engine that honours ``ChatRequest.stop`` returns; backends that cannot stop early
    (or servers that ignore the field) cut their text with it afterwards.
    """
    best = None
    for s in stop:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best is None or i + len(s) < best):
            best = i + len(s)
    return (text, False) if best is None else (text[:best], True)


@dataclass(frozen=True)
class ScoreRequest:
    """Score the next token after a conversation and an optional start of the assistant turn.

    The prompt is ``chat_template(messages, add_generation_prompt=True) + assistant_prefix``;
    the engine reports the log-probability of each option's first token at that position.
    """

    messages: tuple[Message, ...]
    assistant_prefix: str = ""
    tag: str = field(default="", compare=False)
    """The item (pair or prompt id) the request works for, as :attr:`ChatRequest.tag`."""


NO_LOGPROBS = "the server returned no log-probabilities"
"""Start of the error of a scoring request whose answer had none (an API that does not give them)."""


@dataclass(frozen=True)
class OptionScores:
    """Log-probabilities of the option tokens at the answer position, normalised over the options.

    ``logprobs[i]`` belongs to ``options[i]``; ``exp`` of them sums to 1. ``error`` is set
    (and ``logprobs`` empty) when the request could not be scored.
    """

    logprobs: tuple[float, ...]
    prompt_tokens: int
    error: str | None = None
    retryable: bool = False  # transient failure: worth trying again later
    cached_tokens: int = 0
    """Prompt tokens the engine's prefix cache served (vLLM reports them; 0 where unknown)."""
    votes: tuple[int, ...] = ()
    """Sampled verdicts (:mod:`rlaif.pipeline.verdicts`): the valid votes for each option; () for log-probs."""
    malformed: int = 0
    """Sampled verdicts that failed their format check (each asked again)."""
    output_tokens: int = 0
    """Tokens generated to reach the verdict (sampled verdicts; 0 for a log-prob prefill)."""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class TokenSample:
    """One response sampled from token ids, with the engine's log-probability of each token (RL rollouts)."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    """``log pi(a_t | s_t)`` of each response token as the sampler saw it."""
    text: str
    finish_reason: str
    """"stop" (an end token or stop string ended it) or "length" (cut at max_tokens)."""

    @property
    def ended(self) -> bool:
        return self.finish_reason == "stop"


@runtime_checkable
class Engine(Protocol):
    """What every backend (in-process vLLM, OpenAI-compatible server, scripted fake) provides."""

    model: str
    """The model name or path, recorded in provenance."""

    def generate(self, requests: Sequence[ChatRequest], sampling: SamplingConfig, desc: str = "") -> list[Completion]:
        """Complete every request in one batch; results are in request order."""
        ...

    def score_options(self, requests: Sequence[ScoreRequest], options: Sequence[str], desc: str = "") -> list[OptionScores]:
        """For every request, one forward pass (prefill) restricted to the options' first tokens.

        Used by the AI-feedback labeller; options are short strings such as "A" and "B"
        whose first tokens must differ.
        """
        ...

    def close(self) -> None:
        """Free the engine's resources."""
        ...


def normalise_logprobs(raw: Sequence[float]) -> tuple[float, ...]:
    """log softmax over the given log-probabilities: log p_i - log sum_j p_j."""
    top = max(raw)
    if top == float("-inf"):
        n = len(raw)
        return tuple(-math.log(n) for _ in raw)
    z = top + math.log(sum(math.exp(x - top) for x in raw))
    return tuple(x - z for x in raw)


def option_token_ids(tokenizer, prompt_ids: Sequence[int], options: Sequence[str]) -> list[int] | str:
    """First token of each option as it would follow ``prompt_ids`` (or an error message).

    The options are tokenized after the decoded end of the prompt, so an option that would merge
    with the text before it is refused (every in-process backend asks this same function).
    """
    text = tokenizer.decode(list(prompt_ids[-8:]))
    base = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = []
    for opt in options:
        full = tokenizer(text + opt, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) == len(base):
            return f"option {opt!r} merges with the text before it; end the prompt so the option starts a token"
        ids.append(full[len(base)])
    if len(set(ids)) != len(ids):
        return f"options {list(options)} share a first token"
    return ids


class ChatTokens:
    """Chat-template tokenization of the in-process backends (vLLM and transformers), which both hold
    the model's own ``tokenizer`` and must turn a conversation into the very same token ids."""

    tokenizer: Any

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of a conversation followed by the assistant generation prompt."""
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_scoring_prompt(self, req: "ScoreRequest") -> list[int]:
        """Token ids of a scoring request: the conversation, the generation prompt, the assistant prefix."""
        text = self.tokenizer.apply_chat_template(list(req.messages), tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text + req.assistant_prefix, add_special_tokens=False)["input_ids"])

    def option_token_ids(self, prompt_ids: list[int], options: Sequence[str]) -> list[int] | str:
        """First token of each option as it would follow ``prompt_ids`` (or an error message)."""
        return option_token_ids(self.tokenizer, prompt_ids, options)


def response_token_ids(tokenizer, text: str, ended: bool) -> list[int]:
    """The tokens of an assistant answer as its log-probability is scored after the prompt
    (``encode_chat``, which ends with the generation prompt, so the answer starts a token):
    the text tokenised on its own and, when the answer ended by itself (not cut at the token
    limit), the end-of-sequence token the model stopped with."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if ended and tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def describe(engine: Engine) -> dict[str, object]:
    """Provenance of an engine: its kind and model, plus whatever it reports of itself."""
    info = {"backend": type(engine).__name__, "model": engine.model}
    extra = getattr(engine, "info", None)
    if callable(extra):
        info.update(extra())
    return info


@runtime_checkable
class LogprobEngine(Engine, Protocol):
    """An engine that can score given answers (``rlaif eval``'s KL of a policy to a baseline).

    The in-process backends (vLLM, transformers) and the fake engine have it; a server does not.
    """

    def response_logprobs(self, conversations: Sequence[Sequence[Message]], responses: Sequence[str],
                          ended: Sequence[bool]) -> list[list[float] | None]:
        """``log p(token | everything before)`` at temperature 1 of each answer's tokens
        (:func:`response_token_ids`) after its conversation; None where prompt and answer do
        not fit the context."""
        ...


@runtime_checkable
class RLEngine(Engine, Protocol):
    """The operations an online trainer (PPO) needs on top of :class:`Engine`.

    ``max_model_len`` is the context length. The in-process vLLM backend has them all;
    other backends raise ``NotImplementedError`` naming what they lack.
    """

    max_model_len: int

    def sample_tokens(self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int], max_tokens: int,
                      temperature: float = 1.0) -> list[TokenSample]:
        """One response per prompt (in order), one seeded request each, with the sampler's log-probs."""
        ...

    def update_weights(self, named_tensors) -> float:
        """Load new weights (Hugging Face names) into the running engine; returns seconds."""
        ...

    def sleep(self) -> bool:
        """Free accelerator memory while a trainer updates; returns whether it went to sleep."""
        ...

    def wake_up(self) -> None:
        """Undo :meth:`sleep`."""
        ...
