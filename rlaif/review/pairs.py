"""A run's preference pairs as the review page shows them: read from ``RUN/preferences.jsonl``,
one :class:`Pair` per row (text or chat messages), damaged rows skipped with a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


class ReviewError(Exception):
    """A run folder that cannot be reviewed (no preferences, unreadable file)."""


@dataclass(frozen=True)
class Pair:
    """One preference row as the review page needs it (missing label fields are None/empty)."""

    index: int
    id: str
    prompt: tuple[dict[str, str], ...]
    chosen: str
    rejected: str
    chosen_prob: float | None
    tie: bool
    category: str
    principles: tuple[str, ...]
    principle_probs: tuple[float | None, ...]  # P(chosen better) under each principle; () when unknown
    order_agreement: float | None
    label_source: str


def decode_lines(data: bytes) -> list[str | bytes]:
    """The lines of ``data`` as text, split at "\\n" only (``str.splitlines`` would also split at
    U+2028 and other characters that model text may hold); decoded in one go, or line by line
    when the file holds bytes that are not UTF-8 (those lines stay bytes, for the caller to
    report)."""
    try:
        return data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        out: list[str | bytes] = []
        for raw in data.split(b"\n"):
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(raw)
        return out


def _text(value: Any) -> str | None:
    """A response as text: a string, or the contents of a list of chat messages."""
    if isinstance(value, str):
        return value
    if type(value) is list and len(value) == 1 and type(value[0]) is dict and type(value[0].get("content")) is str:
        return value[0]["content"]  # the usual row: one assistant message
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value):
        return "\n\n".join(m["content"] for m in value)
    return None


def _messages(value: Any) -> tuple[dict[str, str], ...] | None:
    if isinstance(value, str):
        return ({"role": "user", "content": value},)
    if isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value):
        return tuple({"role": str(m.get("role", "user")), "content": m["content"]} for m in value)
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def pair_from_row(row: dict[str, Any], index: int, line: int) -> Pair:
    """A :class:`Pair` from a preference row; ``ValueError`` says what is missing."""
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    prompt = _messages(row.get("prompt", row.get("messages")))
    chosen, rejected = _text(row.get("chosen")), _text(row.get("rejected"))
    if prompt is None or chosen is None or rejected is None:
        raise ValueError("needs 'prompt', 'chosen' and 'rejected' (text or chat messages)")
    pid = row.get("id")
    pid = str(pid) if pid is not None and str(pid) != "" else f"line-{line}"
    principles = row.get("label_principles") or row.get("principle_ids") or []
    principles = tuple(str(p) for p in principles) if isinstance(principles, list) else ()
    probs = row.get("label_principle_probs") if row.get("label_principles") else None
    probs = tuple(_float(p) for p in probs) if isinstance(probs, list) and len(probs) == len(principles) else ()
    flags = row.get("flags") if isinstance(row.get("flags"), list) else []
    chosen_prob = _float(row.get("chosen_prob"))
    return Pair(
        index=index,
        id=pid,
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        chosen_prob=chosen_prob,
        tie=row.get("tie") is True or "tie" in flags,
        category=str(row.get("category") or "(none)"),
        principles=principles,
        principle_probs=probs,
        order_agreement=_float(row.get("order_agreement")),
        label_source=str(row.get("label_source") or ("ai" if chosen_prob is not None else "unknown")),
    )


def load_pairs(run: str | Path, log: Callable[[str], None] = lambda m: None) -> list[Pair]:
    """The pairs of ``RUN/preferences.jsonl``; unreadable rows are skipped with a warning."""
    run = Path(run)
    if not run.exists():
        raise ReviewError(f"{run} does not exist")
    if not run.is_dir():
        raise ReviewError(f"{run} is not a run folder (give the folder that holds preferences.jsonl)")
    path = run / "preferences.jsonl"
    if not path.is_file():
        hint = " (the run has not finished: run the same rlaif generate/label command again)" if (run / "chunks").is_dir() else ""
        raise ReviewError(f"{run} has no preferences.jsonl{hint}; rlaif review needs a run made by rlaif generate or rlaif label")
    pairs: list[Pair] = []
    seen: set[str] = set()
    skipped = 0
    for n, raw in enumerate(decode_lines(path.read_bytes()), start=1):
        if not raw.strip():
            continue
        try:
            if isinstance(raw, bytes):
                raise ValueError("not UTF-8 text")
            pair = pair_from_row(json.loads(raw), len(pairs), n)
        except ValueError as exc:  # JSONDecodeError is a ValueError
            skipped += 1
            if skipped <= 20:
                log(f"warning: {path} line {n} skipped: {exc}")
            continue
        if pair.id in seen:
            skipped += 1
            if skipped <= 20:
                log(f"warning: {path} line {n} skipped: pair id {pair.id!r} appears twice")
            continue
        seen.add(pair.id)
        pairs.append(pair)
    if skipped > 20:
        log(f"warning: {skipped} rows of {path} skipped in all")
    if not pairs:
        raise ReviewError(f"{path} holds no preference pairs")
    return pairs
