"""Scripted reviewers and judges with known answers, for the review queue, calibration, gold export
and principle reliability tests.

- :class:`Reviewer` rates through the review server's real HTTP API, as the page does: it opens
  ``/?reviewer=NAME``, follows the server's order (``/next``), reads the pair blind (left/right
  texts only, from the HTML), decides with its own rule and posts the rating with the page's token.
- :class:`ZOracle`: a judge that reports a distortion of a known truth. Each marked response
  carries ``z=<value>``: the true P(marked response is better) is sigmoid(z); the judge's
  P(option A) is sigmoid(k * (z if A holds the marked response else -z)).
- :class:`PrincipleOracle`: prefers the marked response under every principle but one, which
  prefers the other response (a principle "built to be wrong").
- :func:`write_trio`: a constitution of three principles (one of them the wrong one).
"""

from __future__ import annotations

import html
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx

from oracles import MARKER, OracleEngine, shown_responses

WRONG_Q = "Which response is shorter on the page?"
TRIO = {
    "good-help": "Which response helps the user more?",
    "good-truth": "Which response is more accurate?",
    "bad-shape": WRONG_Q,
}


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def write_trio(root: Path) -> tuple[str, str]:
    """A constitution ``trio`` of the three principles of :data:`TRIO`; (constitution path, principles folder)."""
    pdir = root / "principles"
    pdir.mkdir(parents=True, exist_ok=True)
    for pid, q in TRIO.items():
        (pdir / f"{pid}.yaml").write_text(
            f"id: {pid}\ntitle: {pid}\ntags: [trio]\ncritique: Point out what is wrong.\n"
            f"revision: Rewrite the response.\ncomparison: {q}\n", encoding="utf-8")
    cdir = root / "constitution"
    cdir.mkdir(parents=True, exist_ok=True)
    const = cdir / "trio.yaml"
    const.write_text("name: trio\ndescription: three principles, one built to be wrong\nprinciples:\n  - tag: trio\n", encoding="utf-8")
    return str(const), str(pdir)


_Z = re.compile(r"z=([-+]?\d+\.\d+)")


@dataclass
class ZOracle(OracleEngine):
    """See the module docstring: the judge's log-odds are ``k`` times the truth's."""

    k: float = 3.0

    def _score(self, req, options):
        first, second = shown_responses(req.messages[-1]["content"])
        marked = first if MARKER in first else second
        z = float(_Z.search(marked).group(1))
        logit = self.k * (z if MARKER in first else -z)
        return [-math.log1p(math.exp(-logit)), -math.log1p(math.exp(logit))]


@dataclass
class PrincipleOracle(OracleEngine):
    """Content oracle of strength ``content`` under every principle; the principle asking
    :data:`WRONG_Q` prefers the other response with strength ``wrong``."""

    wrong: float = 4.0

    def _score(self, req, options):
        text = req.messages[-1]["content"]
        first, second = shown_responses(text)
        sign = (MARKER in first) - (MARKER in second)
        logit = -self.wrong * sign if WRONG_Q in text else self.content * sign
        return [-math.log1p(math.exp(-logit)), -math.log1p(math.exp(logit))]


def prefer_marked(noise: float) -> Callable[[str, str, random.Random], bool]:
    """A reviewer's rule: the left response is better when it holds the marker, except for a
    ``noise`` share of the pairs, where it says the opposite."""
    def rule(left: str, right: str, rng: random.Random) -> bool:
        right_answer = MARKER in left
        return right_answer if rng.random() >= noise else not right_answer
    return rule


def prefer_by_z(left: str, right: str, rng: random.Random) -> bool:
    """The left response is better with probability sigmoid(z) when it is the marked one (the truth of :class:`ZOracle`)."""
    marked_left = MARKER in left
    z = float(_Z.search(left if marked_left else right).group(1))
    marked_wins = rng.random() < sig(z)
    return marked_wins == marked_left


@dataclass
class Reviewer:
    """A person at the review page, scripted (see the module docstring)."""

    url: str
    name: str
    rule: Callable[[str, str, random.Random], bool]
    seed: int = 0
    strong: bool = True
    flags: Callable[[str, str], tuple[list[str], list[str]]] | None = None
    """(flags of the left response, flags of the right one) from their texts."""
    seen: list[str] = field(default_factory=list)
    """Pair ids in the order the server offered them."""
    chose: dict[str, str] = field(default_factory=dict)
    """Pair id -> the text of the response this reviewer said is better."""

    def __post_init__(self):
        self.client = httpx.Client(base_url=self.url, follow_redirects=True, timeout=30)
        self.rng = random.Random(self.seed)

    def close(self) -> None:
        self.client.close()

    def rate(self, n: int) -> list[str]:
        """Rate ``n`` pairs in the server's order; the pair ids rated."""
        page = self.client.get(f"/?reviewer={self.name}")
        for k in range(n):
            assert page.status_code == 200, page.text[:300]
            index = int(str(page.url).rstrip("/").rsplit("/", 1)[1])
            pid = html.unescape(re.search(r'<code id="pair-id">(.*?)</code>', page.text).group(1))
            left = html.unescape(re.search(r'id="left-text">(.*?)</div>', page.text, re.S).group(1))
            right = html.unescape(re.search(r'id="right-text">(.*?)</div>', page.text, re.S).group(1))
            token = re.search(r'name="token" value="([^"]+)"', page.text).group(1)
            left_better = self.rule(left, right, self.rng)
            shown = (1 if self.strong else 3) if left_better else (8 if self.strong else 6)
            fl, fr = self.flags(left, right) if self.flags else ([], [])
            sid = re.sub(r"[^A-Za-z0-9_-]", "_", f"{self.name}-{k:06d}-{pid}")[:64]
            r = self.client.post("/api/rate", json={"token": token, "submission_id": sid,
                                                    "pair_id": pid, "reviewer": self.name, "rating": shown,
                                                    "flags_left": fl, "flags_right": fr})
            assert r.status_code == 200, r.text
            self.seen.append(pid)
            self.chose[pid] = left if left_better else right
            page = self.client.get(f"/next?after={index}")
        return list(self.seen)
