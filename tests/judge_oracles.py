"""Oracle judges for ``rlaif constitution test`` and ``rlaif constitution audit``: engines whose option
scores follow a known rule, so a test knows which case must pass and which shift must show.

* :class:`CaseOracle` knows the answer key of a set of test cases (which response is the better
  one) and reads it off the judge's question, never the slot:

      logit P(A) = content * (better(A) - better(B)) + position + length * log((1 + len A) / (1 + len B))

  With ``blind_to_near_duplicates`` the content term is 0 for two answers that look alike
  (difflib ratio over lower-cased words >= ``near``): a shallow judge that cannot tell a minimal
  pair apart and falls back on the slot.
* :class:`ProbeOracle` injects known biases on top of a content judge (marker words count):

      logit P(A) = (content + item) * (markers(A) - markers(B)) + position + verbose * (sentences(A) - sentences(B))
                   + markdown * (md(A) - md(B)) + own * (own(A) - own(B)) + noise

  ``item`` varies the content strength per conversation (how much better one answer is: the
  same for every request about one pair, what pairing removes) and ``noise`` is a per-request
  Gaussian (what an interval must cover).
"""

from __future__ import annotations

import difflib
import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Sequence

from oracles import MARKER, shown_responses
from rlaif.engine.base import ScoreRequest
from rlaif.engine.fake import FakeEngine


def _logprobs(z: float) -> list[float]:
    """log P(A), log P(B) with P(A) = sigmoid(z)."""
    return [-math.log1p(math.exp(-z)), -math.log1p(math.exp(z))]


def asked(req: ScoreRequest) -> str:
    """The comparison question of a judge request (its last paragraph, without the answer instruction)."""
    return req.messages[-1]["content"].rsplit("\n\n", 1)[-1].replace(" Answer with A or B.", "")


@dataclass
class CaseOracle(FakeEngine):
    model: str = "case-oracle"
    cases: Sequence = ()
    content: float = 2.0
    position: float = 0.0
    length: float = 0.0
    blind_to_near_duplicates: bool = False
    near: float = 0.6
    seen: list[tuple[str, str, str]] = field(default_factory=list)
    """(question, slot A text, slot B text) of every request."""

    def __post_init__(self) -> None:
        self.key = {}
        for c in self.cases:
            self.key[" ".join(c.better_text.split())] = 1.0
            self.key[" ".join(c.worse_text.split())] = 0.0
        self.scorer = self._score

    def _better(self, text: str) -> float:
        return self.key[" ".join(text.split())]  # KeyError: a text the cases do not have

    def _score(self, req: ScoreRequest, options) -> list[float]:
        first, second = shown_responses(req.messages[-1]["content"])
        self.seen.append((asked(req), first, second))
        alike = difflib.SequenceMatcher(None, first.lower().split(), second.lower().split(), autojunk=False).ratio() >= self.near
        content = 0.0 if self.blind_to_near_duplicates and alike else self.content * (self._better(first) - self._better(second))
        return _logprobs(content + self.position + self.length * math.log((1 + len(first)) / (1 + len(second))))


@dataclass
class ProbeOracle(FakeEngine):
    model: str = "probe-oracle"
    content: float = 2.0
    position: float = 0.0
    verbose: float = 0.0
    markdown: float = 0.0
    own: float = 0.0
    own_word: str = "Indeed,"
    item_sd: float = 0.0
    noise_sd: float = 0.0
    noise_seed: int = 0
    questions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scorer = self._score

    def _score(self, req: ScoreRequest, options) -> list[float]:
        text = req.messages[-1]["content"]
        first, second = shown_responses(text)
        self.questions.append(asked(req))

        def feats(t: str) -> tuple[int, int, float, float]:
            md = 1.0 if "**" in t or "\n- " in t else 0.0
            return t.count(MARKER), sum(t.count(ch) for ch in ".!?"), md, 1.0 if t.startswith(self.own_word) else 0.0

        (m1, s1, d1, o1), (m2, s2, d2, o2) = feats(first), feats(second)
        content = self.content
        if self.item_sd:  # the conversation's own strength: the same for every request about this pair
            conv = text.split("\n\nResponse A:", 1)[0]
            content += self.item_sd * random.Random(hashlib.sha256(conv.encode()).digest()).gauss(0, 1)
        z = (content * (m1 - m2) + self.position + self.verbose * (s1 - s2) + self.markdown * (d1 - d2)
             + self.own * (o1 - o2))
        if self.noise_sd:
            z += self.noise_sd * random.Random(hashlib.sha256(f"{self.noise_seed}|{text}".encode()).digest()).gauss(0, 1)
        return _logprobs(z)


def paraphraser(word: str) -> FakeEngine:
    """A policy engine whose paraphrase of an answer is ``word`` followed by the answer itself."""

    def script(req, sampling) -> str:
        return f"{word} {req.messages[-1]['content'].split('Answer:' + chr(10), 1)[1]}"

    return FakeEngine(model=f"paraphraser-{word}", script=script)
