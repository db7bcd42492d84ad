"""The ratings of a run's preference pairs: the blind order they are shown in, a submission's
checks, and the ratings store. (Reading the pairs: :mod:`rlaif.review.pairs`, whose names are
importable from here too.)

Ratings go to ``RUN/reviews.jsonl``, one JSON object a line, appended and fsynced before
the browser is told they are stored. The file is the only state: the server reads it at
start and after every append (from where it stopped, so ratings appended by a second
server on the same run are seen too), and never rewrites it. A damaged line (a write cut
short, an edited value) is skipped with a warning. Every submission carries an id chosen
by the page; a submission whose id is already in the file is not written again, so a
retry, a reload or a second tab duplicates nothing. The latest rating of a reviewer for a
pair is the one that counts.

Orientation: the page shows the two responses as *left* and *right* and asks for a Likert
rating 1-8 (1 = left much better ... 8 = right much better). The stored ``likert`` is
turned back to the preference row's orientation (1 = rejected much better ... 8 = chosen
much better, as the AI label's ``likert``), so the two compare directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from rlaif.review.pairs import (  # noqa: F401  (the pages, stats and ratings import the pairs from here)
    Pair, ReviewError, decode_lines, load_pairs, pair_from_row,
)

FLAGS: dict[str, str] = {
    "harmful": "harmful",
    "wrong": "hallucination / wrong",
    "evasive": "evasive or needless refusal",
    "fails_instruction": "fails the instruction",
    "off_topic": "off-topic",
    "other": "other",
}
"""Metadata flags a reviewer can set on each response: key -> label shown."""

MAX_COMMENT = 4000
MAX_REVIEWER = 64
_SUBMISSION_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SubmissionError(Exception):
    """A rating refused: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, code: str = "invalid"):
        super().__init__(message)
        self.status = status
        self.code = code  # "token" when the page must fetch a fresh token (the server restarted)


# ------------------------------------------------------------------ blind order


def left_is_chosen(pair_id: str, reviewer: str) -> bool:
    """Whether this reviewer sees the chosen response on the left: a coin flip per pair and
    reviewer, fixed by a hash so a reload (or a restart) shows the same order."""
    return hashlib.sha256(f"{reviewer}\x00{pair_id}".encode()).digest()[0] & 1 == 0


def to_chosen_likert(rating_shown: int, left_chosen: bool) -> int:
    """Rating as shown (1 = left much better ... 8 = right much better) to the preference
    row's orientation (1 = rejected much better ... 8 = chosen much better): mirrored when
    the chosen response was on the left."""
    return 9 - rating_shown if left_chosen else rating_shown


# ------------------------------------------------------------------ ratings


@dataclass(frozen=True)
class Review:
    """One stored rating (a line of reviews.jsonl)."""

    submission_id: str
    reviewer: str
    time: str
    pair_id: str
    rating_shown: int  # 1 = left much better ... 8 = right much better
    left: str  # which response was on the left: "chosen" or "rejected"
    likert: int  # 1 = rejected much better ... 8 = chosen much better
    flags_chosen: tuple[str, ...] = ()
    flags_rejected: tuple[str, ...] = ()
    comment: str = ""

    @property
    def prefers_chosen(self) -> bool:
        return self.likert >= 5

    def to_row(self) -> dict[str, Any]:
        return {
            "submission_id": self.submission_id, "reviewer": self.reviewer, "time": self.time,
            "pair_id": self.pair_id, "rating_shown": self.rating_shown, "left": self.left,
            "likert": self.likert, "prefers": "chosen" if self.prefers_chosen else "rejected",
            "flags": {"chosen": list(self.flags_chosen), "rejected": list(self.flags_rejected)},
            "comment": self.comment,
        }

    @staticmethod
    def from_row(row: Any) -> "Review":
        """A review read back from the file; ``ValueError`` if any field is missing or wrong."""
        if not isinstance(row, dict):
            raise ValueError("not a JSON object")
        sid, reviewer, when, pid = (row.get(k) for k in ("submission_id", "reviewer", "time", "pair_id"))
        if not (isinstance(sid, str) and _SUBMISSION_ID.fullmatch(sid)):
            raise ValueError("bad submission_id")
        check_reviewer(reviewer)
        if not isinstance(when, str) or not isinstance(pid, str):
            raise ValueError("bad time or pair_id")
        shown, likert, left = row.get("rating_shown"), row.get("likert"), row.get("left")
        if not (_rating(shown) and _rating(likert) and left in ("chosen", "rejected")):
            raise ValueError("bad rating_shown, likert or left")
        if to_chosen_likert(shown, left == "chosen") != likert:
            raise ValueError("likert does not match rating_shown and left")
        flags = row.get("flags")
        if not isinstance(flags, dict):
            raise ValueError("bad flags")
        fc, fr = flags.get("chosen", []), flags.get("rejected", [])
        if not all(isinstance(f, list) and all(x in FLAGS for x in f) for f in (fc, fr)):
            raise ValueError("unknown flag")
        comment = row.get("comment", "")
        if not isinstance(comment, str):
            raise ValueError("bad comment")
        return Review(sid, reviewer, when, pid, shown, left, likert, tuple(fc), tuple(fr), comment)


def _rating(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 8


def check_reviewer(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("reviewer name missing")
    if len(name) > MAX_REVIEWER or _CONTROL.search(name) or name != name.strip():
        raise ValueError(f"reviewer name must be 1-{MAX_REVIEWER} printable characters without leading or trailing spaces")
    return name


def parse_submission(data: Mapping[str, Any], pairs_by_id: Mapping[str, Pair], now: datetime | None = None) -> Review:
    """A rating posted by the page, checked field by field; :class:`SubmissionError` (4xx) if
    anything is wrong, so nothing is written for a bad post.

    Fields: ``submission_id``, ``pair_id``, ``reviewer``, ``rating`` (1-8 as shown),
    ``flags_left`` and ``flags_right`` (lists of :data:`FLAGS` keys), ``comment``.
    """
    unknown = set(data) - {"submission_id", "pair_id", "reviewer", "rating", "flags_left", "flags_right", "comment", "token"}
    if unknown:
        raise SubmissionError(422, f"unknown field(s): {', '.join(sorted(unknown))}")
    sid = data.get("submission_id")
    if not (isinstance(sid, str) and _SUBMISSION_ID.fullmatch(sid)):
        raise SubmissionError(422, "submission_id must be 8-64 letters, digits, '-' or '_'")
    pid = data.get("pair_id")
    if not isinstance(pid, str) or pid not in pairs_by_id:
        shown = pid if isinstance(pid, str) and len(pid) <= 80 else "(missing or too long)" if pid is None or isinstance(pid, str) else "(not text)"
        raise SubmissionError(404, f"unknown pair id {shown!r}: no such pair in this run")
    try:
        reviewer = check_reviewer(data.get("reviewer"))
    except ValueError as exc:
        raise SubmissionError(422, str(exc)) from None
    rating = data.get("rating")
    if isinstance(rating, str) and rating.strip().isdigit() and len(rating.strip()) == 1:
        rating = int(rating.strip())
    if not _rating(rating):
        raise SubmissionError(422, "rating must be a whole number from 1 to 8 (1 = left much better, 8 = right much better)")
    flags = {}
    for side in ("left", "right"):
        value = data.get(f"flags_{side}", [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(f, str) and f in FLAGS for f in value):
            raise SubmissionError(422, f"flags_{side} must be a list of: {', '.join(FLAGS)}")
        flags[side] = tuple(sorted(set(value), key=list(FLAGS).index))
    comment = data.get("comment", "")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise SubmissionError(422, f"comment must be text of at most {MAX_COMMENT} characters")
    left_chosen = left_is_chosen(pid, reviewer)
    when = (now or datetime.now(timezone.utc)).isoformat(timespec="milliseconds")
    return Review(
        submission_id=sid, reviewer=reviewer, time=when, pair_id=pid, rating_shown=rating,
        left="chosen" if left_chosen else "rejected", likert=to_chosen_likert(rating, left_chosen),
        flags_chosen=flags["left"] if left_chosen else flags["right"],
        flags_rejected=flags["right"] if left_chosen else flags["left"],
        comment=comment.replace("\r\n", "\n"),
    )


class ReviewStore:
    """``RUN/reviews.jsonl``: append-only, fsynced, read back incrementally.

    ``latest[(reviewer, pair_id)]`` is the rating that counts; ``version`` grows with every
    accepted line (for caching the statistics); ``warnings`` lists the lines skipped.
    """

    def __init__(self, path: str | Path, pairs_by_id: Mapping[str, Pair], log: Callable[[str], None] = lambda m: None,
                 listener: Callable[[Review], None] | None = None):
        self.path = Path(path)
        self._pairs = pairs_by_id
        self._log = log
        self._listener = listener  # called with every rating that counts from then on (in file order)
        self._lock = threading.Lock()
        self._offset = 0  # bytes consumed: always just after a b"\n"
        self._line = 0  # lines consumed
        self.latest: dict[tuple[str, str], Review] = {}
        self.seen: dict[str, str] = {}  # submission id -> time stored
        self.version = 0
        self.warnings: list[str] = []
        self.skipped = 0
        with self._lock:
            self._read_new(at_start=True)

    def _warn(self, line: int, why: str) -> None:
        self.skipped += 1
        msg = f"{self.path.name} line {line} skipped: {why}"
        if len(self.warnings) < 50:
            self.warnings.append(msg)
            self._log(f"warning: {msg}")

    def _read_new(self, at_start: bool = False) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        tail = data[data.rfind(b"\n") + 1:]  # after the last b"\n": a line still being written, or cut short
        whole = len(data) - len(tail)
        for raw in decode_lines(data[:whole])[:-1]:
            self._line += 1
            if raw.strip():
                self._accept(raw, self._line)
        self._offset += whole
        if tail and at_start:
            # A line without its end at start-up: a write that a crash cut short. It stays in
            # the file (never rewritten); the next append starts on a new line after it.
            # Its line is counted when the "\n" written before the next rating closes it.
            self._offset += len(tail)
            self._warn(self._line + 1, "incomplete line (a write was cut short)")

    def _accept(self, raw: str | bytes, line: int) -> None:
        try:
            if isinstance(raw, bytes):
                raise ValueError("not UTF-8 text")
            review = Review.from_row(json.loads(raw))
        except ValueError as exc:
            self._warn(line, str(exc) if not isinstance(exc, json.JSONDecodeError) else "not valid JSON")
            return
        if review.pair_id not in self._pairs:
            self._warn(line, f"pair id {review.pair_id!r} is not in this run")
            return
        if review.submission_id in self.seen:
            return  # the same submission written twice (two servers raced): count it once
        self.seen[review.submission_id] = review.time
        self.latest[(review.reviewer, review.pair_id)] = review
        self.version += 1
        if self._listener is not None:
            self._listener(review)

    def refresh(self) -> None:
        """Read lines appended since the last read (by this or another server)."""
        with self._lock:
            self._read_new()

    def reviews(self) -> list[Review]:
        """The ratings that count: the latest of each reviewer for each pair."""
        return list(self.latest.values())

    def append(self, review: Review) -> bool:
        """Store ``review`` durably; False (nothing written) if its submission is already stored
        (``seen[review.submission_id]`` then holds the time it was stored)."""
        line = json.dumps(review.to_row(), ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            self._read_new()
            if review.submission_id in self.seen:
                return False
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # never glue a rating to a cut-short line
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path.parent)
            self._read_new()
        return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
