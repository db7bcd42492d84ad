"""A scripted engine for unit tests: deterministic, instant, and it records every call."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

from rlaif.engine.base import ChatRequest, OptionScores, SamplingConfig, ScoreRequest, cut_at_stop, normalise_logprobs
from rlaif.data.records import Completion


def _tokens(text: str) -> int:
    return len(text.split())


def default_script(request: ChatRequest, sampling: SamplingConfig) -> str:
    """A reply that depends only on the last user turn and the seed; under an output constraint (a
    sampled verdict) one of its choices, or JSON naming one of the schema's ``answer`` values, as a
    grammar-enforcing backend would give."""
    last = request.messages[-1]["content"]
    digest = hashlib.sha256(f"{last}|{request.seed}".encode()).hexdigest()[:8]
    c = request.constraint
    if c is not None:
        import json

        choices = c.choice or tuple(json.loads(c.json_schema)["properties"]["answer"]["enum"])
        pick = choices[int(digest, 16) % len(choices)]
        return pick if c.choice else json.dumps({"answer": pick})
    return f"reply {digest} to: {last[:40]}"


def default_scorer(request: ScoreRequest, options: Sequence[str]) -> list[float]:
    """Deterministic pseudo-random option log-probabilities."""
    digest = hashlib.sha256((request.messages[-1]["content"] + request.assistant_prefix).encode()).digest()
    return [-(b / 64.0) for b in digest[: len(options)]]


@dataclass
class FakeEngine:
    """Answers with ``script(request, sampling)``; counts tokens as whitespace-separated words."""

    model: str = "fake-model"
    script: Callable[[ChatRequest, SamplingConfig], str] = default_script
    scorer: Callable[[ScoreRequest, Sequence[str]], list[float]] = default_scorer
    max_model_len: int = 4096
    calls: list[tuple[str, int]] = field(default_factory=list)
    """(desc, batch size) of every generate call, to check that stages are batched."""

    def generate(self, requests: Sequence[ChatRequest], sampling: SamplingConfig, desc: str = "") -> list[Completion]:
        self.calls.append((desc, len(requests)))
        out = []
        for req in requests:
            n_prompt = sum(_tokens(m["content"]) + 4 for m in req.messages) + _tokens(req.assistant_prefix)
            if n_prompt >= self.max_model_len:
                out.append(Completion("", "error", n_prompt, 0, error=f"prompt is {n_prompt} tokens; the model's context is {self.max_model_len}"))
                continue
            # the script writes the whole answer; generation would have stopped at the first stop string
            words = cut_at_stop(self.script(req, sampling), req.stop)[0].split(" ")
            finish = "length" if len(words) > sampling.max_tokens else "stop"
            text = " ".join(words[: sampling.max_tokens])
            out.append(Completion(text, finish, n_prompt, _tokens(text)))
        return out

    def score_options(self, requests: Sequence[ScoreRequest], options: Sequence[str], desc: str = "") -> list[OptionScores]:
        self.calls.append((desc or "score", len(requests)))
        out = []
        for req in requests:
            n_prompt = sum(_tokens(m["content"]) + 4 for m in req.messages) + _tokens(req.assistant_prefix)
            if n_prompt >= self.max_model_len:
                out.append(OptionScores((), n_prompt, error=f"prompt is {n_prompt} tokens; the model's context is {self.max_model_len}"))
                continue
            out.append(OptionScores(normalise_logprobs(self.scorer(req, options)), n_prompt))
        return out

    def response_logprobs(self, conversations, responses, ended) -> list[list[float] | None]:
        """One log-probability per word (and one for the end of an answer that ended), from a hash
        of the model name and the word: deterministic, and different for differently named models."""
        out = []
        for text, end in zip(responses, ended):
            words = text.split() + (["</s>"] if end else [])
            out.append([-(1.0 + hashlib.sha256(f"{self.model}|{w}".encode()).digest()[0] / 64.0) for w in words])
        return out

    def info(self) -> dict[str, object]:
        return {"max_model_len": self.max_model_len}

    def close(self) -> None:
        pass
