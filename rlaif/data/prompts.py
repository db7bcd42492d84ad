"""Read prompts from JSONL, plain text, parquet or a saved Hugging Face dataset.

Every prompt becomes a :class:`PromptRecord` with a stable id: the one given in the file
(``id`` or ``prompt_id``), else a hash of its content and position. Problems are reported
with the file and line they come from, and nothing is silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable

from rlaif.data import textio
from rlaif.data.records import Message, PromptRecord

_ROLES = {"system", "user", "assistant"}


class PromptError(ValueError):
    """Bad prompt input; the message names the file and line."""


def _prompt_id(messages: list[Message], index: int) -> str:
    digest = hashlib.sha256(json.dumps([index, messages], ensure_ascii=False).encode()).hexdigest()
    return f"h{digest[:16]}"


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(text: str, where: str) -> str:
    # JSON can spell a lone surrogate (\ud800), which is not a character: no tokenizer, dataset
    # or UTF-8 file can hold it, so it is refused here rather than failing later.
    m = _SURROGATE.search(text)
    if m:
        raise PromptError(f"{where}: text holds a lone surrogate (\\u{ord(m.group()):04x} at character {m.start()}), which is not valid Unicode")
    return text


def _messages_from(obj: Any, where: str) -> list[Message]:
    if isinstance(obj, str):
        _check_text(obj, where)
        if not obj.strip():
            raise PromptError(f"{where}: empty prompt")
        return [{"role": "user", "content": obj}]
    if isinstance(obj, list):
        if not obj:
            raise PromptError(f"{where}: 'messages' is empty")
        out: list[Message] = []
        for i, m in enumerate(obj):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise PromptError(f"{where}: message {i} needs 'role' and 'content'")
            if m["role"] not in _ROLES:
                raise PromptError(f"{where}: message {i} has unknown role {m['role']!r}")
            if not isinstance(m["content"], str):
                raise PromptError(f"{where}: message {i} content must be a string")
            _check_text(m["content"], f"{where}: message {i}")
            out.append({"role": m["role"], "content": m["content"]})
        # The policy answers the conversation, so it must end with the user speaking.
        if out[-1]["role"] != "user":
            raise PromptError(f"{where}: the last message must be from the user, not {out[-1]['role']!r}")
        if not out[-1]["content"].strip():
            raise PromptError(f"{where}: empty prompt")
        return out
    raise PromptError(f"{where}: 'prompt' must be a string or a list of messages")


def _record(obj: dict[str, Any], index: int, where: str, keep: tuple[str, ...] = ()) -> PromptRecord:
    if "messages" in obj:
        messages = _messages_from(obj["messages"], where)
    elif "prompt" in obj:
        messages = _messages_from(obj["prompt"], where)
    else:
        raise PromptError(f"{where}: needs a 'prompt' or 'messages' field (has: {', '.join(sorted(obj)) or 'nothing'})")
    pid = obj.get("id", obj.get("prompt_id"))
    pid = str(pid) if pid is not None else _prompt_id(messages, index)
    meta = {k: v for k, v in obj.items() if k in ("category", "source", *keep) and isinstance(v, (str, int, float))}
    return PromptRecord(id=pid, messages=tuple(messages), meta=meta)


def _read_jsonl(path: Path, keep: tuple[str, ...] = ()) -> Iterable[PromptRecord]:
    for index, (where, obj) in enumerate(_jsonl_objects(path)):
        yield _record(obj, index, where, keep)


def _read_text(path: Path) -> Iterable[PromptRecord]:
    # blank lines separate nothing in this format; they are not prompts (textio.lines skips them)
    for index, (lineno, text) in enumerate(textio.lines(textio.read_text(path, PromptError))):
        messages = _messages_from(text, f"{path}:{lineno}")
        yield PromptRecord(id=_prompt_id(messages, index), messages=tuple(messages), meta={})


def _read_dataset(ds, name: str, keep: tuple[str, ...] = ()) -> Iterable[PromptRecord]:
    for i, row in enumerate(ds):
        yield _record(dict(row), i, f"{name}: row {i}", keep)


def read_prompts(path: str | Path, limit: int | None = None, keep: tuple[str, ...] = ()) -> list[PromptRecord]:
    """Read every prompt of ``path`` (up to ``limit``), checking ids are unique.

    ``meta`` holds ``category`` and ``source``, plus the fields named in ``keep`` (e.g.
    ``subcategory`` and ``reference``, which ``rlaif eval`` reports on) when they are scalars.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise PromptError(f"prompt file {str(path)!r} does not exist")
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001 - turned into a clear message
            raise PromptError(f"{path}: not a saved Hugging Face dataset ({exc})") from None
        if isinstance(ds, datasets.DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        rows: Iterable[PromptRecord] = _read_dataset(ds, str(path), keep)
    elif path.suffix == ".parquet":
        import datasets

        rows = _read_dataset(datasets.Dataset.from_parquet(str(path)), str(path), keep)
    elif path.suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path, keep)
    else:
        rows = _read_text(path)
    out: list[PromptRecord] = []
    seen: dict[str, int] = {}
    for rec in rows:
        if limit is not None and len(out) >= limit:
            break
        if rec.id in seen:
            raise PromptError(f"{path}: prompt id {rec.id!r} appears twice (entries {seen[rec.id] + 1} and {len(out) + 1})")
        seen[rec.id] = len(out)
        out.append(rec)
    if not out:
        raise PromptError(f"{path}: no prompts found")
    return out


def read_pairs(path: str | Path, limit: int | None = None):
    """Read bring-your-own pairs: ``prompt`` (or ``messages``), ``response_a``, ``response_b``,
    optional ``id``, reference ``label`` ('a' or 'b') and ``category``."""
    from rlaif.pipeline.judge import Pair

    path = Path(path).expanduser()
    if not path.exists():
        raise PromptError(f"pairs file {str(path)!r} does not exist")
    rows: Iterable[tuple[str, dict[str, Any]]]
    if path.is_dir() or path.suffix == ".parquet":
        import datasets

        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train" if "train" in ds else next(iter(ds))]
        else:
            ds = datasets.Dataset.from_parquet(str(path))
        rows = ((f"{path}: row {i}", dict(r)) for i, r in enumerate(ds))
    else:
        rows = _jsonl_objects(path)
    out = []
    seen = set()
    for index, (where, obj) in enumerate(rows):
        if limit is not None and len(out) >= limit:
            break
        rec = _record(obj, index, where)
        for key in ("response_a", "response_b"):
            if not isinstance(obj.get(key), str):
                raise PromptError(f"{where}: needs a string field {key!r}")
            _check_text(obj[key], f"{where}: {key}")
        label = obj.get("label")
        if label is not None:
            label = str(label).strip().lower()
            if label not in ("a", "b"):
                raise PromptError(f"{where}: label must be 'a' or 'b', got {obj.get('label')!r}")
        if rec.id in seen:
            raise PromptError(f"{where}: pair id {rec.id!r} appears twice")
        seen.add(rec.id)
        out.append(Pair(rec.id, rec.messages, obj["response_a"], obj["response_b"], label, rec.meta))
    if not out:
        raise PromptError(f"{path}: no pairs found")
    return out


def _jsonl_objects(path: Path):
    # a byte-order mark and CRLF are accepted; lines end at "\n" only (see rlaif.data.textio)
    for lineno, line in textio.lines(textio.read_text(path, PromptError)):
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise PromptError(f"{where}: each line must be a JSON object")
        yield where, obj
