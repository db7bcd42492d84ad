"""The shipped reference pair sets: well-formed, balanced in label position and in length.

Agreement with these pairs is how rlaif reports the quality of a judge, so the sets must not
reward a judge for a shortcut: the better answer sits in slot a as often as in slot b, and in
every category it is the shorter answer about as often as the longer one (else a judge that
follows length, or picks a slot, would look good or bad for reasons that have nothing to do
with content). Lengths are counted in characters, as the judge diagnostics do, and in words.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
SETS = {"reference-pairs.jsonl": "r", "reference-pairs-heldout.jsonl": "h"}
CATEGORIES = {"harmful-vs-safe", "evasive-vs-helpful", "wrong-vs-right", "rude-vs-kind", "injection"}
FIELDS = {"id", "category", "prompt", "response_a", "response_b", "label"}
# Characters that some readers (str.splitlines among them) take for the end of a line.
LINE_BREAKERS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def load(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{path.name}: the last line has no newline"
    return [json.loads(line) for line in text.split("\n")[:-1]]


def better_and_worse(row: dict) -> tuple[str, str]:
    if row["label"] == "a":
        return row["response_a"], row["response_b"]
    return row["response_b"], row["response_a"]


def stratum(row: dict, measure=len) -> str:
    """S if the better answer is the shorter one, L if it is the longer one, E if equal."""
    good, bad = better_and_worse(row)
    lg, lb = measure(good), measure(bad)
    return "S" if lg < lb else "L" if lg > lb else "E"


def length_strata(rows: list[dict], measure) -> dict[str, Counter]:
    """Per category, how many pairs fall in each length stratum."""
    out: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        out[row["category"]][stratum(row, measure)] += 1
    return out


MEASURES = {"characters": len, "words": lambda s: len(s.split())}


def test_length_strata_by_hand():
    rows = [
        {"category": "c", "label": "a", "response_a": "short", "response_b": "much longer text"},
        {"category": "c", "label": "b", "response_a": "short", "response_b": "much longer text"},
        {"category": "c", "label": "b", "response_a": "same", "response_b": "size"},
    ]
    assert length_strata(rows, len)["c"] == Counter({"S": 1, "L": 1, "E": 1})
    assert length_strata(rows, MEASURES["words"])["c"] == Counter({"S": 1, "L": 1, "E": 1})


@pytest.mark.parametrize("name", SETS)
def test_rows_are_well_formed(name):
    path = PROMPTS / name
    text = path.read_text(encoding="utf-8")
    for ch in LINE_BREAKERS:
        assert ch not in text, f"{name} holds {ch!r}, which some readers take for a line break"
    rows = load(path)
    prefix = SETS[name]
    for i, row in enumerate(rows, 1):
        where = f"{name}:{i}"
        assert set(row) == FIELDS, f"{where}: fields {sorted(row)}"
        assert row["id"] == f"{prefix}{i:03d}", f"{where}: id {row['id']!r}, expected {prefix}{i:03d}"
        assert row["category"] in CATEGORIES, f"{where}: category {row['category']!r}"
        assert row["label"] in ("a", "b"), f"{where}: label {row['label']!r}"
        for key in ("prompt", "response_a", "response_b"):
            assert isinstance(row[key], str) and row[key].strip(), f"{where}: empty {key}"
        assert row["response_a"].strip() != row["response_b"].strip(), f"{where}: identical responses"

    from rlaif.data.prompts import read_pairs

    pairs = read_pairs(path)
    assert [p.id for p in pairs] == [r["id"] for r in rows]
    assert [p.label for p in pairs] == [r["label"] for r in rows]
    assert [p.meta.get("category") for p in pairs] == [r["category"] for r in rows]


def test_ids_and_prompts_unique_across_sets():
    rows = {name: load(PROMPTS / name) for name in SETS}
    ids = [r["id"] for rs in rows.values() for r in rs]
    assert len(ids) == len(set(ids))
    for name, rs in rows.items():
        prompts = Counter(r["prompt"] for r in rs)
        assert not [p for p, n in prompts.items() if n > 1], f"{name}: a prompt appears twice"
    tuning = {r["prompt"] for r in rows["reference-pairs.jsonl"]}
    assert not [r["id"] for r in rows["reference-pairs-heldout.jsonl"] if r["prompt"] in tuning]


@pytest.mark.parametrize("name", SETS)
def test_labels_balanced_per_category(name):
    by_cat: dict[str, Counter] = defaultdict(Counter)
    for row in load(PROMPTS / name):
        by_cat[row["category"]][row["label"]] += 1
    for cat, c in by_cat.items():
        assert abs(c["a"] - c["b"]) <= 1, f"{name} {cat}: {c['a']} a vs {c['b']} b"


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("name", SETS)
def test_better_answer_shorter_in_about_half_of_each_category(name, measure):
    for cat, c in length_strata(load(PROMPTS / name), MEASURES[measure]).items():
        decided = c["S"] + c["L"]
        share = c["S"] / decided
        assert 0.4 <= share <= 0.6, (f"{name} {cat}: the better answer is shorter in {c['S']} of {decided} pairs "
                                     f"of different length ({share:.0%} in {measure}); write pairs to rebalance")
        assert min(c["S"], c["L"]) >= 3, f"{name} {cat}: too few pairs in a length stratum ({dict(c)})"


@pytest.mark.parametrize("name", SETS)
def test_slot_not_confounded_with_length(name):
    """A judge that always picks slot a must not score differently on the two length strata."""
    rows = load(PROMPTS / name)
    for s in ("S", "L"):
        labels = [r["label"] for r in rows if stratum(r) == s]
        share = labels.count("a") / len(labels)
        assert 0.4 <= share <= 0.6, f"{name}: the better answer is in slot a in {share:.0%} of the pairs in stratum {s}"


def test_heldout_has_enough_pairs_per_category():
    counts = Counter(r["category"] for r in load(PROMPTS / "reference-pairs-heldout.jsonl"))
    assert all(n >= 16 for n in counts.values()), counts
