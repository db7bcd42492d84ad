"""Oracle judges: engines whose option scores come from a known rule, so a test knows which
response *should* win and can tell a labeller that follows the judge from one that swaps
the responses, returns 0.5, or lets the slot decide.

The oracle reads the judge's question the way a model would: the two responses from the
"Response A: ..." and "Response B: ..." blocks of the last user turn, and P(option A) from

    logit P(A) = content * (marked(A) - marked(B)) + position + length * log((1 + len A) / (1 + len B))

where ``marked(text)`` is 1 when the text holds the marker word. Everything but the content
term is a bias a good labeller must not turn into a label. Every score request is recorded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from rlaif.engine.base import ChatRequest, OptionScores, SamplingConfig, ScoreRequest
from rlaif.engine.fake import FakeEngine, default_script

MARKER = "marigold"
"""The content the content oracle prefers: a response holding this word is the better one."""

_BLOCKS = re.compile(r"\nResponse A: (.*?)\n\nResponse B: (.*)\n\n", re.S)


def shown_responses(text: str) -> tuple[str, str]:
    """The responses in slots A and B of a judge question (see :func:`rlaif.pipeline.judge.question`)."""
    m = _BLOCKS.search(text)
    if m is None:
        raise AssertionError(f"not a judge question: {text[:200]!r}")
    return m.group(1), m.group(2)


def oracle_logit(first: str, second: str, content: float = 0.0, position: float = 0.0, length: float = 0.0,
                 marker: str = MARKER) -> float:
    """logit P(first slot) of the oracle (see the module docstring)."""
    marked = lambda t: 1.0 if marker in t else 0.0  # noqa: E731
    d = math.log((1 + len(first)) / (1 + len(second)))
    return content * (marked(first) - marked(second)) + position + length * d


@dataclass
class OracleEngine(FakeEngine):
    """A :class:`FakeEngine` whose option scores follow :func:`oracle_logit`.

    ``generate`` is the fake engine's, or ``script`` (see :func:`marker_script`).
    """

    model: str = "oracle-judge"
    content: float = 0.0
    position: float = 0.0
    length: float = 0.0
    marker: str = MARKER
    scored: list[tuple[str, str]] = field(default_factory=list)
    """(slot A text, slot B text) of every scoring request, in order."""

    def __post_init__(self) -> None:
        self.scorer = self._score

    def _score(self, req: ScoreRequest, options: Sequence[str]) -> list[float]:
        first, second = shown_responses(req.messages[-1]["content"])
        self.scored.append((first, second))
        z = oracle_logit(first, second, self.content, self.position, self.length, self.marker)
        # log P(A), log P(B) with P(A) = sigmoid(z)
        return [-math.log1p(math.exp(-z)), -math.log1p(math.exp(z))]


def content_oracle(strength: float = 2.0, **kw) -> OracleEngine:
    """Prefers the response holding the marker, wherever it is shown."""
    return OracleEngine(content=strength, **kw)


def position_oracle(strength: float = 2.0, **kw) -> OracleEngine:
    """Always prefers slot A, whatever it holds."""
    return OracleEngine(position=strength, **kw)


def length_oracle(strength: float = 3.0, **kw) -> OracleEngine:
    """Prefers the longer response (log-odds ``strength`` per unit of log length ratio)."""
    return OracleEngine(length=strength, **kw)


def marker_script(const, marked_initial: Callable[[str], bool]) -> Callable[[ChatRequest, SamplingConfig], str]:
    """A generate script for ``rlaif generate`` whose initial response or revision holds the marker.

    For a prompt with ``marked_initial(prompt text)`` the initial response holds the marker and
    the revision does not; for the others the revision holds it. Critiques never do.
    """
    revisions = {p.revision for p in const.principles}
    critiques = {p.critique for p in const.principles}

    def script(req: ChatRequest, sampling: SamplingConfig) -> str:
        last = req.messages[-1]["content"]
        base = default_script(req, sampling)
        if last in revisions:
            initial_marked = any(MARKER in m["content"] for m in req.messages if m["role"] == "assistant")
            return f"plainly revised {base}" if initial_marked else f"{MARKER} revised {base}"
        if last in critiques:
            return base
        return f"{MARKER} {base}" if marked_initial(last) else base

    return script
