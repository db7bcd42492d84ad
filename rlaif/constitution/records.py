"""The records a loaded constitution is made of: principles, demonstrations, comparison examples,
and the constitution itself (with its weighted sampling of principles).

They are built by :mod:`rlaif.constitution` from validated files; nothing here reads a file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from rlaif.constitution.cases import PrincipleCase


@dataclass(frozen=True)
class Demonstration:
    """One few-shot critique-and-revision conversation."""

    prompt: str
    response: str
    critique_request: str
    critique: str
    revision_request: str
    revision: str
    principle: str | None = None
    context: tuple[dict, ...] = ()  # earlier turns before ``prompt``


@dataclass(frozen=True)
class ComparisonExample:
    """One few-shot example for the AI-feedback comparison prompt."""

    prompt: str
    response_a: str
    response_b: str
    better: str  # "A" or "B"
    principle: str | None = None
    reasoning: str | None = None


@dataclass(frozen=True)
class Principle:
    id: str
    title: str
    tags: tuple[str, ...]
    critique: str
    revision: str
    comparison: str
    weight: float = 1.0
    description: str = ""
    examples: tuple[Demonstration, ...] = ()
    path: str = ""
    tests: tuple[PrincipleCase, ...] = field(default=(), compare=False)
    """Test cases of the judge under this principle (``rlaif constitution test``; :mod:`rlaif.constitution.cases`)."""


@dataclass(frozen=True)
class Constitution:
    """A validated constitution with its resolved, weighted principles."""

    name: str
    description: str
    system_prompt: str | None
    principles: tuple[Principle, ...]
    weights: tuple[float, ...]  # effective sampling weight of each principle, same order
    demonstrations: tuple[Demonstration, ...]
    comparison_examples: tuple[ComparisonExample, ...]
    defaults: dict[str, Any]
    path: str
    sha256: str
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    principle_raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    file_texts: dict[str, str] = field(repr=False, compare=False, default_factory=dict)

    def principle(self, pid: str) -> Principle:
        for p in self.principles:
            if p.id == pid:
                return p
        raise KeyError(pid)

    def sample_principles(self, rng: random.Random, k: int = 1) -> list[Principle]:
        """Draw ``k`` principles with replacement, proportionally to their weights."""
        return rng.choices(self.principles, weights=self.weights, k=k)

    def sample_distinct(self, rng: random.Random, k: int) -> list[Principle]:
        """Draw up to ``k`` distinct principles, weighted, without replacement."""
        pool = list(zip(self.principles, self.weights))
        out: list[Principle] = []
        while pool and len(out) < k:
            (p, _), idx = _weighted_pick(rng, pool)
            out.append(p)
            pool.pop(idx)
        return out

    def provenance(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "sha256": self.sha256,
            "principles": {p.id: w for p, w in zip(self.principles, self.weights)},
        }


def _weighted_pick(rng: random.Random, pool: list[tuple[Principle, float]]):
    total = sum(w for _, w in pool)
    x = rng.random() * total
    for i, item in enumerate(pool):
        x -= item[1]
        if x < 0:
            return item, i
    return pool[-1], len(pool) - 1
