"""The one reader and writer for rlaif's text files: JSON Lines, JSON and YAML.

Why a module of its own:

- **Lines end at "\\n" only.** ``str.splitlines()`` also breaks at U+2028, U+2029, U+0085,
  ``\\x0b``, ``\\x0c`` and ``\\x1c``-``\\x1e``. ``json.dumps`` escapes the ASCII ones, but
  with ``ensure_ascii=False`` it leaves U+2028, U+2029 and U+0085 raw inside strings, so a
  row holding one was cut in two when read back. :func:`lines` splits on "\\n" alone, which
  also reads files written that way before this module existed.
- **The writer keeps text readable** (non-ASCII stays as it is) but escapes those three
  characters, so other tools that split on them (``splitlines``, JavaScript) read rlaif's
  files correctly too; lone surrogates are escaped as well, so any Python string can be
  written.
- **Files from users may come from any editor**: a UTF-8 byte-order mark is dropped and
  CRLF (or CR) line ends are read as "\\n", in every format.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

# Characters json.dumps(ensure_ascii=False) leaves raw that some readers take as line breaks,
# and lone surrogates, which UTF-8 cannot encode. Outside string literals JSON text is ASCII,
# so every match is inside a string, where its \\uXXXX escape means the same character.
_ESCAPE = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    return f"\\u{ord(match.group()):04x}"


def dumps(obj: Any, indent: int | None = None, default: Callable[[Any], Any] | None = None) -> str:
    """JSON text of ``obj``: non-ASCII kept readable, line-breaking characters escaped."""
    return _ESCAPE.sub(_escape, json.dumps(obj, ensure_ascii=False, indent=indent, default=default))


def dumps_jsonl(rows: Iterable[Any], default: Callable[[Any], Any] | None = None) -> str:
    """JSON Lines text: one :func:`dumps` object per line, each ended by "\\n"."""
    return "".join(dumps(r, default=default) + "\n" for r in rows)


def read_text(path: str | Path, error: type[Exception] = ValueError) -> str:
    """Text of a UTF-8 file, without a leading byte-order mark, with every line end as "\\n".

    A file that is not UTF-8 raises ``error`` naming the file and the first bad byte.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    # CRLF and lone CR are line ends (as in Python's text mode). Inside JSON strings they are
    # always escaped, so this never changes a value rlaif wrote.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of every non-blank line of ``text``, split on "\\n" only."""
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield lineno, line


def read_jsonl(path: str | Path, error: type[Exception] = ValueError, what: str = "malformed JSON") -> list[Any]:
    """Every value of a JSON Lines file; a line that does not parse raises ``error``
    as ``FILE:LINE: <what> (<reason>)``."""
    out = []
    for lineno, line in lines(read_text(path, error)):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{lineno}: {what} ({exc.msg} at column {exc.colno})") from None
    return out


def read_json(path: str | Path, error: type[Exception] = ValueError) -> Any:
    """The value of a JSON file (byte-order mark and CRLF accepted)."""
    try:
        return json.loads(read_text(path, error))
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def read_yaml(path: str | Path, error: type[Exception] = ValueError) -> Any:
    """The value of a YAML file, read with ``yaml.safe_load`` (no code runs)."""
    import yaml

    text = read_text(path, error)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path}: YAML syntax error: {exc}") from None
