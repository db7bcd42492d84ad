"""Text shown to a judge as quoted data, defined once for every judge (pairwise labels, yes/no
checks, the pointwise step judge): the conversation rendered as "User: ... / Assistant: ...", and
responses with option markers and option labels defused and their length bounded.

A response (or the conversation) must not be able to name an option: "(A)" / "(B)" become "A" / "B"
and "Response A" / "Response B" become "a response" (see :func:`sanitise`).
"""

from __future__ import annotations

import re
from typing import Sequence

from rlaif.data.records import Message

# "Response A" / "Response B" in any capitalisation of the word, with the option letter as the
# question writes it (capital A, B) or a lower-case b. A lower-case "a" is left alone: in
# "a response a little shorter" it is the article, and prose must not be rewritten.
_LABEL = re.compile(r"\b(?i:response)\s+(?:A|B|b)\b(?:\s*:)?")
_MARKER = re.compile(r"\(\s*([AB])\s*\)")


def defuse(text: str, labels: bool = True) -> str:
    """Option markers "(A)"/"(B)" become "A"/"B"; with ``labels``, "Response A"/"Response B"
    (the names the question gives the options) become "a response"."""
    if labels:
        text = _LABEL.sub("a response", text)
    return _MARKER.sub(r"\1", text)


def sanitise(text: str, max_chars: int | None) -> tuple[str, list[str]]:
    """Text shown to the judge as quoted data: labels and option markers defused, length bounded.

    A response (or the conversation) must not be able to name an option. Flags: "truncated"
    when cut to ``max_chars`` (None: no bound), "defused" when anything was rewritten; both
    when both happened.
    """
    flags = []
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars]
        flags.append("truncated")
    cleaned = defuse(text)
    if cleaned != text:
        flags.append("defused")
    return cleaned + (" [...]" if "truncated" in flags else ""), flags


def render_conversation(prompt: Sequence[Message]) -> str:
    """The conversation as "User: ..." and "Assistant: ..." lines (system turns left out)."""
    lines = []
    for m in prompt:
        if m["role"] == "system":
            continue
        who = "User" if m["role"] == "user" else "Assistant"
        lines.append(f"{who}: {m['content'].strip()}")
    return "\n".join(lines)
