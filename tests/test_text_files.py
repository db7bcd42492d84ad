"""Files saved by common Windows editors: a UTF-8 byte-order mark and CRLF line ends are
accepted in every file rlaif reads, and read exactly as the same file without them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaif.data.prompts import PromptError, read_pairs, read_prompts

BOM = b"\xef\xbb\xbf"


def windows(path: Path, text: str) -> Path:
    """Write ``text`` as a Windows editor saves it: a byte-order mark, CRLF line ends."""
    path.write_bytes(BOM + text.replace("\n", "\r\n").encode("utf-8"))
    return path


def plain(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


PROMPTS_JSONL = '{"id": "a", "prompt": "Héllo there"}\n{"messages": [{"role": "user", "content": "Two\\nlines"}]}\n'
PROMPTS_TXT = "Héllo there\nSecond prompt\n\nThird one\n"
PAIRS = '{"id": "r1", "prompt": "Q?", "response_a": "yes", "response_b": "no", "label": "a"}\n{"id": "r2", "prompt": "Q2", "response_a": "x", "response_b": "y"}\n'


@pytest.mark.parametrize("suffix, text", [(".jsonl", PROMPTS_JSONL), (".txt", PROMPTS_TXT)])
def test_prompt_files_with_bom_and_crlf(tmp_path, suffix, text):
    expected = read_prompts(plain(tmp_path / f"plain{suffix}", text))
    got = read_prompts(windows(tmp_path / f"win{suffix}", text))
    assert got == expected
    assert got[0].messages[0]["content"] == "Héllo there"  # no "\ufeff" glued to the first prompt
    assert len(got) == (2 if suffix == ".jsonl" else 3)


def test_pairs_file_with_bom_and_crlf(tmp_path):
    got = read_pairs(windows(tmp_path / "p.jsonl", PAIRS))
    assert got == read_pairs(plain(tmp_path / "q.jsonl", PAIRS))
    assert [(p.id, p.response_a, p.label) for p in got] == [("r1", "yes", "a"), ("r2", "x", None)]


def test_a_file_that_is_not_utf8_is_named_in_the_error(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(PromptError, match=r"latin1\.jsonl: not UTF-8 text \(byte 0xe9 at offset 15\)"):
        read_prompts(path)


def test_generate_config_with_bom_and_crlf(tmp_path):
    from rlaif.pipeline.config import load_yaml

    text = "limit: 2\nrounds: 1\nsampling:\n  critique: {max_tokens: 7}\nengine:\n  backend: fake\n"
    assert load_yaml(windows(tmp_path / "w.yaml", text)) == load_yaml(plain(tmp_path / "p.yaml", text)) == {
        "limit": 2, "rounds": 1, "sampling": {"critique": {"max_tokens": 7}}, "engine": {"backend": "fake"}}


def test_train_config_with_bom_and_crlf(tmp_path):
    from rlaif.train.config import load_config
    from rlaif.train.sft import SFTConfig

    text = "# SFT\nmodel: default\ndata: runs/demo\nlr: 2.0e-5\nlora:\n  enabled: true\n"
    got = load_config(SFTConfig, windows(tmp_path / "w.yaml", text), ["epochs=3"])
    assert got == load_config(SFTConfig, plain(tmp_path / "p.yaml", text), ["epochs=3"])
    assert got.lr == 2e-5 and got.lora.enabled and got.epochs == 3


def test_principles_and_constitution_with_bom_and_crlf(const_dir):
    from rlaif.constitution import lint, load_constitution

    before = load_constitution(str(const_dir / "constitution" / "default.yaml"))
    for f in list((const_dir / "principles").glob("*.yaml")) + list((const_dir / "constitution").glob("*.yaml")):
        windows(f, f.read_text(encoding="utf-8"))
    assert lint([const_dir / "principles", const_dir / "constitution"]) == []
    after = load_constitution(str(const_dir / "constitution" / "default.yaml"))
    assert after.sha256 == before.sha256
    assert after.principles == before.principles and after.demonstrations == before.demonstrations


def test_a_principle_that_is_not_utf8_is_a_lint_problem(const_dir):
    from rlaif.constitution import lint

    f = sorted((const_dir / "principles").glob("*.yaml"))[0]
    f.write_bytes(f.read_bytes().replace(b"the", "th\u00e9".encode("latin-1"), 1))
    problems = lint([const_dir / "principles"])
    assert [(Path(p.file).name, p.line) for p in problems] == [(f.name, 1)]
    assert "not UTF-8 text" in problems[0].message


def test_hf_constitution_json_with_bom_and_crlf(tmp_path):
    from rlaif.constitution import load_constitution
    from rlaif.constitution.hf_import import import_hf_constitution

    data = {"constitutions": [{"critic": "Is it harmful?", "revision": "Make it harmless."}],
            "system_chat": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                             {"role": "user", "content": "Is it harmful?"}, {"role": "assistant", "content": "No."},
                             {"role": "user", "content": "Make it harmless."}, {"role": "assistant", "content": "hello"}]]}
    src = windows(tmp_path / "cai.json", json.dumps(data, indent=2))
    written = import_hf_constitution(src, tmp_path / "out", name="cai")
    const = load_constitution(str(tmp_path / "out" / "constitution" / "cai.yaml"))
    assert [(p.critique, p.revision) for p in const.principles] == [("Is it harmful?", "Make it harmless.")]
    assert len(written) == 2


def test_training_data_jsonl_with_bom_and_crlf(tmp_path):
    from rlaif.train.data import load_rows

    rows = [{"prompt": [{"role": "user", "content": "Q\u2028?"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]}] * 2
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    assert load_rows(windows(tmp_path / "w.jsonl", text), "preference").to_list() == rows


def test_cli_with_windows_files(repo_root, tmp_path):
    """generate (prompts + config) and label (pairs) through the command line, every input saved by a Windows editor."""
    from rlaif.cli import main

    prompts = windows(tmp_path / "p.jsonl", PROMPTS_JSONL)
    cfg = windows(tmp_path / "gen.yaml", f"prompts: {json.dumps(str(prompts))}\nout: {json.dumps(str(tmp_path / 'g'))}\nrounds: 1\nengine:\n  backend: fake\n")
    assert main(["generate", "--config", str(cfg), "--quiet"]) == 0
    sft = [json.loads(line) for line in (tmp_path / "g" / "sft.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert [r["messages"][0]["content"] for r in sft] == ["Héllo there", "Two\nlines"]
    pairs = windows(tmp_path / "pairs.jsonl", PAIRS)
    assert main(["label", "--pairs", str(pairs), "--out", str(tmp_path / "l"), "--backend", "fake", "--quiet"]) == 0
    labels = [json.loads(line) for line in (tmp_path / "l" / "labels.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert [r["id"] for r in labels] == ["r1", "r2"]
