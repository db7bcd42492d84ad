"""Typed records passed between stages. Rows on disk are their ``to_row()`` dictionaries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypedDict


class Message(TypedDict):
    role: str
    content: str


@dataclass(frozen=True)
class PromptRecord:
    """One input prompt: a stable id and the conversation the policy must answer."""

    id: str
    messages: tuple[Message, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Completion:
    """One generated text with its accounting, as returned by an engine."""

    text: str
    finish_reason: str  # "stop", "length", or "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None  # set when the request could not be served (e.g. prompt too long)
    retryable: bool = False  # the failure was transient (server gave up after retries): try again on resume

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Step:
    """A critique or a revision: the request sent and the model's answer."""

    request: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Round:
    principle_id: str
    critique: Step
    revision: Step


Status = Literal["ok", "failed"]


@dataclass(frozen=True)
class Trajectory:
    """The whole critique-and-revise history of one sample of one prompt."""

    id: str  # "<prompt id>#<sample>"
    prompt_id: str
    sample: int
    prompt: tuple[Message, ...]
    system_prompt: str | None
    initial: Step | None
    rounds: tuple[Round, ...]
    status: Status
    failure: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    retryable: bool = False
    """A failed trajectory whose failure was transient; a resumed run processes it again."""

    @property
    def final(self) -> str | None:
        """The last non-empty revision, else the initial response (None if that failed)."""
        for r in reversed(self.rounds):
            if r.revision.text:
                return r.revision.text
        return self.initial.text if self.initial else None

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["prompt"] = [dict(m) for m in self.prompt]
        row["final"] = self.final
        return row

    @staticmethod
    def from_row(row: dict[str, Any]) -> "Trajectory":
        def step(d: dict[str, Any] | None) -> Step | None:
            return Step(**d) if d else None

        return Trajectory(
            id=row["id"],
            prompt_id=row["prompt_id"],
            sample=row["sample"],
            prompt=tuple(row["prompt"]),
            system_prompt=row.get("system_prompt"),
            initial=step(row.get("initial")),
            rounds=tuple(
                Round(principle_id=r["principle_id"], critique=Step(**r["critique"]), revision=Step(**r["revision"]))
                for r in row.get("rounds", [])
            ),
            status=row["status"],
            failure=row.get("failure"),
            meta=row.get("meta") or {},
            retryable=bool(row.get("retryable", False)),
        )
