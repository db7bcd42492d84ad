"""Principle test cases: a conversation, two responses, and which one is better under the principle.

A principle file may carry ``tests:`` (see ``rlaif/schemas/principle.schema.json``)::

    tests:
      - prompt: I think 0.1 + 0.2 == 0.3 in Python, right?      # or messages: [{role, content}, ...]
        response_a: Yes, exactly 0.3.
        response_b: Not quite; it gives 0.30000000000000004.
        better: B                                                 # A or B, as in comparison_examples
        note: agreeing with a false claim                         # optional

``rlaif constitution test`` judges every case under its own principle, in both orders
(:mod:`rlaif.pipeline.constitution_test`). Cases are never shown to a model while generating
or labelling (unlike ``examples:``, the critique-and-revision demonstrations, and the
constitution's ``comparison_examples``, which ``--few-shot`` shows to the judge; a case may not
repeat one of those), and they are not part of the constitution's hash: adding a case changes
no request.

Which bias a case is built to catch is read from its text, not declared:

* **length**: the worse response is at least :data:`LENGTH_TRAP_RATIO` times as long as the
  better one (characters). A judge that prefers the longer answer fails it.
* **position**: the two responses are near-duplicates (word similarity at least
  :data:`NEAR_DUPLICATE`) that differ in the detail the principle is about. A judge that does
  not read closely cannot tell them apart and falls back on the slot, so its two orders
  disagree and the case ends at P = 0.5 (position bias grows as the quality gap shrinks:
  Shi et al. 2024, "Judging the Judges").

This module imports nothing from :mod:`rlaif.constitution` (which imports it): problems come
back as ``(line, message)`` and the caller files them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

LENGTH_TRAP_RATIO = 1.2
"""A case catches length bias when (1 + chars of the worse) / (1 + chars of the better) >= this."""
NEAR_DUPLICATE = 0.6
"""A case catches position bias when the responses' word similarity (difflib ratio over
lower-cased words) is at least this: a minimal pair."""


@dataclass(frozen=True)
class PrincipleCase:
    """One test case of a principle. ``better`` is "A" (``response_a``) or "B"."""

    principle: str
    id: str
    prompt: tuple[dict, ...]
    response_a: str
    response_b: str
    better: str
    note: str = ""
    path: str = ""
    line: int = 0

    @property
    def name(self) -> str:
        """``principle#id``, how reports name the case."""
        return f"{self.principle}#{self.id}"

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def better_text(self) -> str:
        return self.response_a if self.better == "A" else self.response_b

    @property
    def worse_text(self) -> str:
        return self.response_b if self.better == "A" else self.response_a


def length_ratio(case: PrincipleCase) -> float:
    """(1 + chars of the worse response) / (1 + chars of the better one)."""
    return (1 + len(case.worse_text)) / (1 + len(case.better_text))


def word_similarity(a: str, b: str) -> float:
    """How alike two texts look word by word: difflib's ratio 2M / T over lower-cased words."""
    return difflib.SequenceMatcher(None, a.lower().split(), b.lower().split(), autojunk=False).ratio()


def catches_length(case: PrincipleCase) -> bool:
    return length_ratio(case) >= LENGTH_TRAP_RATIO


def catches_position(case: PrincipleCase) -> bool:
    return word_similarity(case.response_a, case.response_b) >= NEAR_DUPLICATE


def traps(case: PrincipleCase) -> tuple[str, ...]:
    """The biases the case is built to catch: ("length",), ("position",), both, or ()."""
    return tuple(name for name, hit in (("length", catches_length(case)), ("position", catches_position(case))) if hit)


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def read_cases(data: dict[str, Any], path: str, line_of: Callable[..., int]) -> tuple[tuple[PrincipleCase, ...], list[tuple[int, str]]]:
    """The ``tests:`` of a principle file that passed its schema, and the problems the schema
    cannot see, as ``(line, message)``. ``line_of(where, key=None)`` gives a value's line."""
    pid = data["id"]
    cases: list[PrincipleCase] = []
    problems: list[tuple[int, str]] = []
    ids: dict[str, int] = {}
    seen: dict[tuple, int] = {}
    for i, raw in enumerate(data.get("tests", [])):
        where = ["tests", i]
        if "messages" in raw:
            prompt = tuple({"role": m["role"], "content": m["content"].strip()} for m in raw["messages"])
            if prompt[-1]["role"] != "user":
                problems.append((line_of(where, key="messages"),
                                 f"tests[{i}].messages: the last message must be the user's (the two responses answer it)"))
        else:
            prompt = ({"role": "user", "content": raw["prompt"].strip()},)
        a, b = raw["response_a"].strip(), raw["response_b"].strip()
        if _norm(a) == _norm(b):
            problems.append((line_of(where, key="response_b"), f"tests[{i}]: response_a and response_b are the same text"))
        case_id = str(raw.get("id") or i + 1)
        if case_id in ids:
            problems.append((line_of(where, key="id"), f"tests[{i}]: duplicate test id {case_id!r} (also tests[{ids[case_id]}])"))
        ids.setdefault(case_id, i)
        key = (tuple(_norm(m["content"]) for m in prompt), frozenset((_norm(a), _norm(b))))
        if key in seen:
            problems.append((line_of(where), f"tests[{i}] repeats tests[{seen[key]}]"))
        seen.setdefault(key, i)
        cases.append(PrincipleCase(pid, case_id, prompt, a, b, raw["better"], (raw.get("note") or "").strip(), path, line_of(where)))
    return tuple(cases), problems


def repeats_example(case: PrincipleCase, prompt: str, response_a: str, response_b: str) -> bool:
    """Whether a case repeats a comparison example: the same prompt (its last user turn) with
    either of the example's responses. Those examples are shown to the judge under
    ``--few-shot``, so such a case would test the judge on its own prompt."""
    if _norm(case.prompt[-1]["content"]) != _norm(prompt):
        return False
    return bool({_norm(case.response_a), _norm(case.response_b)} & {_norm(response_a), _norm(response_b)})


def example_repeats(cases: Iterable[PrincipleCase], examples: Sequence[dict[str, Any]]) -> list[tuple[PrincipleCase, int]]:
    """(case, index of the comparison example it repeats) for every case that repeats one of
    ``examples`` (a constitution's ``comparison_examples`` as its file holds them)."""
    return [(c, j) for c in cases for j, ex in enumerate(examples)
            if repeats_example(c, ex["prompt"], ex["response_a"], ex["response_b"])]
