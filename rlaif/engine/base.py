"""The engine protocol: the only surface the pipeline uses to talk to a model.

An engine takes a batch of chat conversations and returns one completion per conversation,
in order. Batches are meant to be large: a stage of a chunk is a single call. Requests
that cannot be served (a prompt longer than the context) come back as completions with
``error`` set instead of failing the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from rlaif.records import Completion, Message


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
class ChatRequest:
    """One conversation to continue with an assistant turn."""

    messages: tuple[Message, ...]
    seed: int | None = None
    """Per-request seed: the same request and seed give the same text whatever the batch."""
    tag: str = field(default="", compare=False)


@runtime_checkable
class Engine(Protocol):
    """What every backend (in-process vLLM, OpenAI-compatible server, scripted fake) provides."""

    model: str
    """The model name or path, recorded in provenance."""

    def generate(self, requests: Sequence[ChatRequest], sampling: SamplingConfig, desc: str = "") -> list[Completion]:
        """Complete every request in one batch; results are in request order."""
        ...

    def close(self) -> None:
        """Free the engine's resources."""
        ...


def describe(engine: Engine) -> dict[str, object]:
    """Provenance of an engine: its kind and model, plus whatever it reports of itself."""
    info = {"backend": type(engine).__name__, "model": engine.model}
    extra = getattr(engine, "info", None)
    if callable(extra):
        info.update(extra())
    return info
