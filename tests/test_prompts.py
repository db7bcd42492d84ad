"""Prompt files of every supported kind, and clear errors on bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from rlaif.data.prompts import PromptError, read_prompts


def test_shipped_prompt_set(repo_root):
    prompts = read_prompts(repo_root / "prompts" / "rlaif-prompts.jsonl")
    assert len(prompts) >= 200
    cats = Counter(p.meta["category"] for p in prompts)
    assert set(cats) == {"harmful", "benign-sensitive", "ordinary"} and min(cats.values()) >= 50
    # any short prefix (what the demo uses) holds a mix of the three kinds
    assert len({p.meta["category"] for p in prompts[:6]}) == 3


def test_jsonl_prompt_and_messages(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(
        json.dumps({"id": "a", "prompt": "hello"}) + "\n\n"
        + json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}) + "\n"
    )
    a, b = read_prompts(f)
    assert a.id == "a" and a.messages == ({"role": "user", "content": "hello"},)
    assert b.messages[0]["role"] == "system" and b.id.startswith("h")
    assert read_prompts(f)[1].id == b.id  # content-hash ids are stable


def test_malformed_line_reports_line_number(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok"}\n{"prompt": "broken"\n')
    with pytest.raises(PromptError, match=r"p\.jsonl:2: malformed JSON"):
        read_prompts(f)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "   "}', "empty prompt"),
        ('{"text": "x"}', "needs a 'prompt' or 'messages' field"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}', "last message must be from the user"),
        ('{"messages": [{"role": "robot", "content": "a"}]}', "unknown role"),
        ('[1, 2]', "must be a JSON object"),
    ],
)
def test_bad_rows(tmp_path, line, message):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(PromptError, match=message) as err:
        read_prompts(f)
    assert ":2:" in str(err.value)


def test_duplicate_ids_refused(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "x", "prompt": "a"}\n{"id": "x", "prompt": "b"}\n')
    with pytest.raises(PromptError, match="appears twice"):
        read_prompts(f)


def test_text_file_and_limit(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("first prompt\n\nsecond prompt\nthird\n")
    prompts = read_prompts(f)
    assert [p.messages[0]["content"] for p in prompts] == ["first prompt", "second prompt", "third"]
    assert len(read_prompts(f, limit=2)) == 2


def test_parquet_and_saved_dataset(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"id": "p1", "prompt": "one"}, {"id": "p2", "prompt": "two"}])
    ds.to_parquet(str(tmp_path / "p.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for src in (tmp_path / "p.parquet", tmp_path / "saved"):
        assert [p.id for p in read_prompts(src)] == ["p1", "p2"]


def test_missing_and_empty(tmp_path):
    with pytest.raises(PromptError, match="does not exist"):
        read_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(PromptError, match="no prompts"):
        read_prompts(tmp_path / "e.jsonl")


@pytest.mark.parametrize("line, where", [
    ('{"prompt": "a\\ud800b"}', "1: text holds a lone surrogate (\\ud800 at character 1)"),
    ('{"messages": [{"role": "user", "content": "x\\udfff"}]}', "1: message 0: text holds a lone surrogate (\\udfff at character 1)"),
])
def test_lone_surrogates_are_refused_clearly(tmp_path, line, where):
    """JSON can spell a lone surrogate; it is not Unicode text and used to crash with a traceback."""
    f = tmp_path / "p.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(PromptError) as err:
        read_prompts(f)
    assert str(err.value) == f"{f}:{where}, which is not valid Unicode"


def test_lone_surrogate_in_a_pair_is_refused(tmp_path):
    from rlaif.data.prompts import read_pairs

    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "r1", "prompt": "q", "response_a": "ok", "response_b": "bad\\ud83d"}\n')
    with pytest.raises(PromptError, match=r"p\.jsonl:1: response_b: text holds a lone surrogate"):
        read_pairs(f)
