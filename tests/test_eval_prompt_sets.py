"""The shipped evaluation prompt sets (`prompts/eval-*.jsonl`) that `rlaif eval` reads.

harmful: requests a harmless model declines or redirects; overrefusal: benign prompts that look
risky, where a refusal is wrong; helpful: ordinary tasks, some with a short reference answer.
Each set must be readable by rlaif's own prompt reader, carry a category and subcategory on every
row (eval splits its numbers by them), have enough rows per subcategory for a per-subcategory
figure to mean something, and hold no prompt twice, nearly twice, or from the tuning prompts
(an eval on prompts the policy was tuned on measures memory, not behaviour).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest

PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
# file -> (id prefix, category, subcategories)
SETS = {
    "eval-harmful.jsonl": ("hx", "harmful", {
        "violence-weapons", "cyber-misuse", "fraud-scams", "self-harm", "harassment-hate",
        "dangerous-chem-bio", "privacy-doxxing", "illegal-drugs", "manipulation",
    }),
    "eval-overrefusal.jsonl": ("or", "benign-sensitive", {
        "homonyms", "figurative", "safe-targets", "fiction", "history", "medicine",
        "security-education", "definitions", "public-figures", "fictional-privacy", "nonsense-groups",
    }),
    "eval-helpful.jsonl": ("hp", "ordinary", {
        "coding", "maths", "writing", "advice", "explanation", "planning", "trivia",
    }),
}
TUNING = "rlaif-prompts.jsonl"
FIELDS = {"id", "prompt", "messages", "category", "subcategory", "reference"}
MIN_ROWS = 100
MIN_PER_SUBCATEGORY = 5
NEAR_DUPLICATE = 0.7  # word-set Jaccard at or above this counts as the same prompt
# Characters that some readers (str.splitlines among them) take for the end of a line.
LINE_BREAKERS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def _read_prompts():
    try:
        from rlaif.data.prompts import read_prompts
    except ImportError:
        from rlaif.data.prompts import read_prompts
    return read_prompts


def load(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{path.name}: the last line has no newline"
    return [json.loads(line) for line in text.split("\n")[:-1]]


def prompt_text(row: dict) -> str:
    """The whole conversation as one string (for duplicate checks)."""
    if "messages" in row:
        return "\n".join(m["content"] for m in row["messages"])
    return row["prompt"]


def normalise(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def jaccard(a: str, b: str) -> float:
    wa, wb = set(normalise(a).split()), set(normalise(b).split())
    return len(wa & wb) / len(wa | wb)


def problems(rows: list[dict], prefix: str, category: str, subcategories: set[str], name: str) -> list[str]:
    """Everything wrong with one set's rows, as messages (empty when the set is fine)."""
    out = []
    for i, row in enumerate(rows, 1):
        where = f"{name}:{i}"
        if not isinstance(row, dict):
            out.append(f"{where}: not a JSON object")
            continue
        if not set(row) <= FIELDS:
            out.append(f"{where}: unknown fields {sorted(set(row) - FIELDS)}")
        if row.get("id") != f"{prefix}-{i:03d}":
            out.append(f"{where}: id {row.get('id')!r}, expected {prefix}-{i:03d}")
        if row.get("category") != category:
            out.append(f"{where}: category {row.get('category')!r}, expected {category!r}")
        if row.get("subcategory") not in subcategories:
            out.append(f"{where}: subcategory {row.get('subcategory')!r} is not one of {sorted(subcategories)}")
        if ("prompt" in row) == ("messages" in row):
            out.append(f"{where}: needs exactly one of 'prompt' and 'messages'")
        elif "prompt" in row:
            p = row["prompt"]
            if not isinstance(p, str) or not p.strip() or p != p.strip():
                out.append(f"{where}: prompt must be a non-empty string without surrounding spaces")
        else:
            msgs = row["messages"]
            roles = [m.get("role") for m in msgs] if isinstance(msgs, list) else []
            expected = ["user", "assistant"] * (len(roles) // 2) + ["user"]
            if not roles or len(roles) % 2 == 0 or roles != expected:
                out.append(f"{where}: messages must alternate user/assistant and end with the user, got {roles}")
            elif not all(isinstance(m.get("content"), str) and m["content"].strip() for m in msgs):
                out.append(f"{where}: every message needs non-empty text")
        if "reference" in row:
            if category != "ordinary":
                out.append(f"{where}: only the helpfulness set has reference answers")
            elif not isinstance(row["reference"], str) or not row["reference"].strip():
                out.append(f"{where}: reference must be a non-empty string")
    return out


def near_duplicates(texts: list[tuple[str, str]], others: list[tuple[str, str]] = ()) -> list[str]:
    """Pairs of (id, text) that are the same prompt up to case, punctuation or a few words."""
    out = []
    pairs = list(combinations(texts, 2)) + [(a, b) for a in texts for b in others]
    for (ia, ta), (ib, tb) in pairs:
        if normalise(ta) == normalise(tb) or jaccard(ta, tb) >= NEAR_DUPLICATE:
            out.append(f"{ia} and {ib}: {ta!r} ~ {tb!r}")
    return out


def all_eval_texts() -> list[tuple[str, str]]:
    return [(row["id"], prompt_text(row)) for name in SETS for row in load(PROMPTS / name)]


# --- the checkers themselves, on rows made by hand -------------------------------------------


def test_normalise_and_jaccard_by_hand():
    assert normalise("Kill a Python process!") == normalise("kill a  python, PROCESS")
    # {how, do, i, kill, a, process} vs {how, do, i, stop, a, process}: 5 shared of 7 words
    assert jaccard("How do I kill a process?", "how do I stop a process") == pytest.approx(5 / 7)
    assert near_duplicates([("x1", "How do I kill a process?"), ("x2", "HOW do i kill a process")])
    assert not near_duplicates([("x1", "What is 17 times 23?"), ("x2", "Write a haiku about rain.")])
    assert near_duplicates([("x1", "Tell me a joke")], [("p1", "tell me a joke!")])


def test_problems_catches_bad_rows():
    good = {"id": "zz-001", "prompt": "Hi there", "category": "ordinary", "subcategory": "a"}
    assert problems([good], "zz", "ordinary", {"a"}, "t") == []
    bad = [
        {**good, "id": "zz-7"},
        {k: v for k, v in good.items() if k != "subcategory"} | {"id": "zz-002"},
        {**good, "id": "zz-003", "messages": [{"role": "user", "content": "x"}]},
        {"id": "zz-004", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
         "category": "ordinary", "subcategory": "a"},
        {**good, "id": "zz-005", "reference": ""},
        {**good, "id": "zz-006", "category": "harmful"},
    ]
    found = problems(bad, "zz", "ordinary", {"a"}, "t")
    assert len(found) == 6, found
    assert [m.split(":")[1] for m in found] == ["1", "2", "3", "4", "5", "6"]
    assert problems([{**good, "reference": "x"}], "zz", "harmful", {"a"}, "t")


# --- the shipped sets ----------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_rows_are_well_formed(name):
    text = (PROMPTS / name).read_text(encoding="utf-8")
    for ch in LINE_BREAKERS:
        assert ch not in text, f"{name} holds {ch!r}, which some readers take for a line break"
    prefix, category, subcategories = SETS[name]
    rows = load(PROMPTS / name)
    assert problems(rows, prefix, category, subcategories, name) == []
    assert len(rows) >= MIN_ROWS, f"{name}: {len(rows)} rows, at least {MIN_ROWS} wanted"


@pytest.mark.parametrize("name", SETS)
def test_every_subcategory_is_used_often_enough(name):
    _, _, subcategories = SETS[name]
    rows = load(PROMPTS / name)
    counts = Counter(row["subcategory"] for row in rows)
    assert set(counts) == subcategories, f"{name}: subcategories without rows: {sorted(subcategories - set(counts))}"
    small = {k: n for k, n in counts.items() if n < MIN_PER_SUBCATEGORY}
    assert not small, f"{name}: subcategories with fewer than {MIN_PER_SUBCATEGORY} rows: {small}"
    # Rows are interleaved, so a short prefix (a tiny eval with --limit) still covers every subcategory.
    assert {row["subcategory"] for row in rows[: len(subcategories)]} == subcategories


@pytest.mark.parametrize("name", SETS)
def test_rlaif_reads_the_set(name):
    read_prompts = _read_prompts()
    rows = load(PROMPTS / name)
    records = read_prompts(PROMPTS / name)
    assert [r.id for r in records] == [row["id"] for row in rows]
    for rec, row in zip(records, rows):
        assert rec.messages[-1]["role"] == "user"
        assert "\n".join(m["content"] for m in rec.messages) == prompt_text(row)
        assert rec.meta.get("category") == row["category"]


def test_reference_answers_are_where_they_should_be():
    rows = load(PROMPTS / "eval-helpful.jsonl")
    with_ref = Counter(row["subcategory"] for row in rows if "reference" in row)
    # every maths and trivia question has one clear answer; open-ended tasks mostly do not
    for sub in ("maths", "trivia"):
        total = sum(1 for row in rows if row["subcategory"] == sub)
        assert with_ref[sub] == total, f"{sub}: {with_ref[sub]} of {total} rows have a reference"
    assert with_ref["planning"] == with_ref["advice"] == with_ref["explanation"] == 0


def test_ids_and_prompts_are_unique_across_sets():
    texts = all_eval_texts()
    ids = Counter(i for i, _ in texts)
    assert [i for i, n in ids.items() if n > 1] == []
    assert near_duplicates(texts) == []


def test_no_eval_prompt_is_a_tuning_prompt():
    tuning = [(row["id"], prompt_text(row)) for row in load(PROMPTS / TUNING)]
    assert near_duplicates(all_eval_texts(), tuning) == []
