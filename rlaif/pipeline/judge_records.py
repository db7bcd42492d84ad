"""What a labelled run keeps so that it can be relabelled: its pairs, and for every comparison
the key of the request sent and the judge's raw answer.

Next to each committed chunk of ``rlaif label`` and ``rlaif generate --label``::

    chunks/00042.pairs.jsonl        the chunk's pairs (``rlaif label`` only; generate keeps them in
                                    00042.labels.jsonl)
    chunks/00042.judgements.jsonl   one line per comparison the judge answered:
        {"pair": ID, "principle": ID, "order": "ab" | "ba", "key": SHA256, "p": P(option A)
         [, "reasoning": TEXT] [, "defused": true]}

``order`` "ab" shows response_a as option (A), "ba" the swapped order. ``p`` is the raw
probability of option A, before the chain-of-thought clamp. A comparison that failed has no
line (it is sent again).

**The key** of a comparison is the SHA-256 of everything that decides the judge's answer: the
exact rendered request (the messages, with every few-shot turn, and the answer prefix), the
option tokens, with chain of thought the sampling settings and the request's seed, with sampled
verdicts (``--verdict sampled``) how the votes are asked for, and the judge: its model, the model's revision, the backend and the dtype (:func:`judge_identity`).
:class:`JudgeCache` answers a comparison from a stored line when the line is for the same
pair, principle and order and its key equals the new request's key; the line is then copied
as it is, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from rlaif.constitution import Principle
from rlaif.pipeline.judge import COT_ANSWER_PREFIX, COT_OPTIONS, OPTIONS, LabelSettings, Pair
from rlaif.pipeline.verdicts import settings_of

PAIRS = "pairs"
JUDGEMENTS = "judgements"
"""Names of the chunk side files (``NNNNN.<name>.jsonl``)."""


def pair_row(p: Pair) -> dict[str, Any]:
    """A pair as ``chunks/NNNNN.pairs.jsonl`` stores it (reference label and metadata included)."""
    return {"id": p.id, "prompt": [dict(m) for m in p.prompt], "response_a": p.response_a, "response_b": p.response_b,
            "label": p.label, "meta": p.meta}


def pair_from_row(r: dict[str, Any]) -> Pair:
    return Pair(r["id"], tuple(r["prompt"]), r["response_a"], r["response_b"], r.get("label"), r.get("meta") or {})


def model_revision(model: str) -> str | None:
    """What tells two versions of a local model folder apart: the commit of a Hugging Face cache
    snapshot (``.../snapshots/<commit>``), else a hash of the names, sizes and modification times
    of the folder's files (a model trained again into the same folder gets a new one; a copied
    folder does too, which only costs re-sending). None for a name on a server or hub id."""
    path = Path(model)
    if not path.is_dir():
        return None
    parts = path.resolve().parts
    if "snapshots" in parts[:-1]:
        return "commit:" + parts[parts.index("snapshots") + 1]
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "files:" + h.hexdigest()[:16]


def judge_identity(model: str, backend: str, dtype: str = "auto") -> dict[str, Any]:
    """The judge part of every request key. For a server (``backend`` openai) the model is its
    served name: the server does not say which weights it holds."""
    return {"model": str(model), "revision": model_revision(str(model)), "backend": backend, "dtype": dtype}


def request_key(identity: dict[str, Any], settings: LabelSettings, messages: Sequence[Any], prefix: str, seed: int) -> str:
    """SHA-256 of one comparison's request (see the module docstring)."""
    payload = {
        "judge": identity,
        "messages": list(messages),
        "prefix": prefix,
        "options": list(COT_OPTIONS if settings.cot else OPTIONS),
        "cot": {"sampling": asdict(settings.cot_sampling), "seed": seed, "answer_prefix": COT_ANSWER_PREFIX} if settings.cot else None,
    }
    if settings.verdict != "logprobs":  # sampled verdicts: the votes asked for are part of the request
        payload["verdict"] = {"mode": settings.verdict, **asdict(settings_of(settings))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def order_of(flipped: bool) -> str:
    return "ba" if flipped else "ab"


EntryKey = tuple[str, str, str]
"""(pair id, principle id, order) of a stored comparison."""


def index_records(rows: Iterable[dict[str, Any]]) -> dict[EntryKey, dict[str, Any]]:
    return {(r["pair"], r["principle"], r["order"]): r for r in rows}


@dataclass
class Reuse:
    """What a relabel hands to :func:`rlaif.pipeline.label.label_run`: the principles that judge
    each pair (its original draw, edited), the original run's stored comparisons, and the
    settings recorded in the new run (part of its fingerprint)."""

    draws: dict[str, list[Principle]]
    entries: dict[EntryKey, dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)


class JudgeCache:
    """Used by :func:`rlaif.pipeline.judge.label_pairs`: answers the comparisons it holds a stored
    line for (same pair, principle and order, same key), and records every answered comparison
    in ``records`` (reused lines as they were)."""

    def __init__(self, identity: dict[str, Any], settings: LabelSettings, entries: dict[EntryKey, dict[str, Any]] | None = None):
        self.identity, self.settings, self.entries = identity, settings, entries or {}
        self.records: list[dict[str, Any]] = []
        self.reused = 0
        self.sent = 0
        self._hits: dict[int, dict[str, Any]] = {}

    def reuse(self, jobs: Sequence[Any], pairs: Sequence[Pair]) -> None:
        for j in jobs:
            pid = pairs[j.pair_index].id
            j.key = request_key(self.identity, self.settings, j.messages, j.prefix, j.seed)
            old = self.entries.get((pid, j.principle.id, order_of(j.flipped)))
            if old is not None and old.get("key") == j.key and old.get("p") is not None:
                j.p_first = old["p"]
                j.reasoning = old.get("reasoning", "")
                j.defused = bool(old.get("defused", False))
                self._hits[id(j)] = old

    def record(self, jobs: Sequence[Any], pairs: Sequence[Pair]) -> None:
        for j in jobs:
            if j.p_first is None:  # failed: no line, so it is sent again
                continue
            old = self._hits.pop(id(j), None)
            if old is not None:
                self.records.append(old)
                self.reused += 1
                continue
            row = {"pair": pairs[j.pair_index].id, "principle": j.principle.id, "order": order_of(j.flipped), "key": j.key, "p": j.p_first}
            if self.settings.cot:
                row["reasoning"] = j.reasoning
            if j.defused:
                row["defused"] = True
            self.records.append(row)
            self.sent += 1


def merged_records(old: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]], keep: set[str], order: Sequence[str]) -> list[dict[str, Any]]:
    """A chunk's comparison lines when only some of its pairs were judged again: the old lines of
    the pairs in ``keep``, the new lines of the others, in the chunk's pair ``order``."""
    rows = [r for r in old if r["pair"] in keep] + [r for r in new if r["pair"] not in keep]
    rank = {pid: i for i, pid in enumerate(order)}
    return sorted(rows, key=lambda r: rank.get(r["pair"], len(rank)))


def read_side(run: Any, index: int, name: str) -> tuple[dict[str, Any], ...]:
    """A committed chunk's side file rows; () where the chunk has none (runs of older versions)."""
    if not (run.chunks / f"{index:05d}.{name}.jsonl").exists():
        return ()
    return tuple(run.read_chunk(index, name))
