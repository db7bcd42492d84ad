"""Steps of a solution: where one step ends and the next begins.

A process reward model scores a response step by step, so every tool that handles steps
(``rlaif label-steps``, ``rlaif train prm``, ``rlaif bon --prm``, the step search, PPO and GRPO
with a PRM) must cut a response at the same places. :class:`StepSplitter` is that one rule:

* ``lines`` (the default): every line is a step; blank lines only separate;
* ``paragraphs``: steps are separated by blank lines, so a step may span several lines;
* ``regex``: steps are separated by the matches of a regular expression (the match belongs to
  no step);
* ``marker``: steps are separated by a literal marker string (e.g. ``<step>``; Math-Shepherd's
  data marks each step's end with a tag).

In every mode a fenced code block (a line starting with three backticks or tildes, up to the
closing fence, or to the end of the text when it never closes) is never cut: a separator inside
it does not count, so the block stays within one step. Each step is stripped of the whitespace
around it, and empty pieces are no steps. :meth:`StepSplitter.spans` gives each step's place in
the text (``text[start:end]`` is the step), which is how a step's score is put on the token that
ends it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

MODES = ("lines", "paragraphs", "regex", "marker")
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*$", re.M)
_SEPARATORS = {"lines": r"(?:[ \t]*\n)+", "paragraphs": r"\n[ \t]*\n(?:[ \t]*\n)*"}


@dataclass(frozen=True)
class StepSplitter:
    """How a response is cut into steps (see the module docstring)."""

    mode: str = "lines"
    """"lines", "paragraphs", "regex" or "marker"."""
    pattern: str = ""
    """The regular expression (mode "regex") or the literal marker (mode "marker")."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"step split mode must be one of {MODES}, not {self.mode!r}")
        if self.mode in ("regex", "marker") and not self.pattern:
            raise ValueError(f"step split mode {self.mode!r} needs a pattern")
        if self.mode in ("lines", "paragraphs") and self.pattern:
            raise ValueError(f"step split mode {self.mode!r} takes no pattern")
        if self.mode == "regex":
            try:
                rx = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"step regex {self.pattern!r}: {exc}") from None
            if rx.search("") is not None:
                raise ValueError(f"step regex {self.pattern!r} matches the empty string")

    @property
    def separator_re(self) -> re.Pattern:
        if self.mode == "marker":
            return re.compile(re.escape(self.pattern))
        return re.compile(_SEPARATORS.get(self.mode, self.pattern))

    def spans(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` of every step in ``text``, in order; ``text[start:end]`` is the step."""
        fenced = code_blocks(text)
        cuts = [(m.start(), m.end()) for m in self.separator_re.finditer(text)
                if m.end() > m.start() and not any(a <= m.start() < b for a, b in fenced)]
        out, pos = [], 0
        for a, b in [*cuts, (len(text), len(text))]:
            piece = text[pos:a]
            lead = len(piece) - len(piece.lstrip())
            trail = len(piece.rstrip())
            if trail > lead:
                out.append((pos + lead, pos + trail))
            pos = b
        return out

    def split(self, text: str) -> list[str]:
        """The steps of ``text``."""
        return [text[a:b] for a, b in self.spans(text)]

    def describe(self) -> dict[str, str]:
        """The settings as provenance (and as a PRM folder records them)."""
        return {"mode": self.mode, "pattern": self.pattern}


def code_blocks(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every fenced code block: from its opening fence line to the end of its
    closing fence (a fence of the same character, at least as long), or to the end of the text."""
    out = []
    fences = list(_FENCE.finditer(text))
    i = 0
    while i < len(fences):
        opening = fences[i].group(1)
        close = next((j for j in range(i + 1, len(fences))
                      if fences[j].group(1)[0] == opening[0] and len(fences[j].group(1)) >= len(opening)
                      and fences[j].group(0).strip() == fences[j].group(1)), None)
        end = fences[close].end() if close is not None else len(text)
        out.append((fences[i].start(), end))
        i = close + 1 if close is not None else len(fences)
    return out


def join_steps(steps: Sequence[str], separator: str = "\n") -> tuple[str, list[tuple[int, int]]]:
    """A text made of ``steps`` and each step's span in it (for solutions given as a list of steps)."""
    text, spans, pos = "", [], 0
    for k, step in enumerate(steps):
        if k:
            text += separator
            pos += len(separator)
        spans.append((pos, pos + len(step)))
        text += step
        pos += len(step)
    return text, spans


def splitter_from(settings: dict | None) -> StepSplitter:
    """A splitter from :meth:`StepSplitter.describe`'s record (None: the default)."""
    if not settings:
        return StepSplitter()
    return StepSplitter(str(settings.get("mode", "lines")), str(settings.get("pattern", "")))
