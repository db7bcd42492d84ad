"""Schema, lint and cross-reference checks on good and broken files."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from rlaif.constitution import ConstitutionError, lint, load_constitution
from rlaif.constitution.hf_import import ImportErrorHF, import_hf_constitution

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _edit(path: Path, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_shipped_files_are_clean():
    assert lint() == []


def test_shipped_constitutions_load():
    for name in ("default", "harmless-strict"):
        const = load_constitution(name)
        assert const.principles and len(const.principles) == len(const.weights)
        assert all(w > 0 for w in const.weights)
        assert len(const.sha256) == 64


def test_at_least_16_principles_covering_the_three_families(repo_root):
    files = list((repo_root / "principles").glob("*.yaml"))
    assert len(files) >= 16
    tags = Counter(t for f in files for t in yaml.safe_load(f.read_text())["tags"])
    assert tags["harmless"] >= 4 and tags["helpful"] >= 4 and tags["honest"] >= 3


def test_unknown_key_is_reported_with_its_line(const_dir):
    path = const_dir / "principles" / "answer-directly.yaml"
    path.write_text(path.read_text() + "critque: typo here\n")
    problems = lint([const_dir / "principles"])
    assert len(problems) == 1
    p = problems[0]
    assert p.file == str(path)
    assert p.line == len(path.read_text().splitlines())
    assert "unknown key 'critque'" in p.message and "critique" in p.message  # suggests the right key


def test_yaml_syntax_error_has_line(const_dir):
    path = const_dir / "principles" / "answer-directly.yaml"
    path.write_text("id: answer-directly\ntitle: colons: here\ntags: [helpful]\n")
    problems = lint([path])
    assert len(problems) == 1 and problems[0].line == 2
    assert "YAML syntax error: mapping values are not allowed here" in problems[0].message


def test_duplicate_ids_and_id_filename_mismatch(const_dir):
    src = const_dir / "principles" / "answer-directly.yaml"
    (const_dir / "principles" / "copy.yaml").write_text(src.read_text())
    messages = [p.message for p in lint([const_dir / "principles"])]
    assert any("duplicate principle id 'answer-directly'" in m for m in messages)
    assert any("does not match the file name 'copy'" in m for m in messages)


def test_unknown_id_empty_selection_and_bad_weight(const_dir):
    c = const_dir / "constitution" / "default.yaml"
    _edit(c, principles=[{"id": "answer-directy"}, {"tag": "no-such-tag"}, {"id": "admit-limits", "weight": 0}])
    messages = [p.message for p in lint([c])]
    assert any("weight must be positive" in m for m in messages)
    _edit(c, principles=[{"id": "answer-directy"}, {"tag": "no-such-tag"}])
    messages = [p.message for p in lint([c])]
    assert any("unknown principle id 'answer-directy' (did you mean 'answer-directly'?)" in m for m in messages)
    assert any("no principle has the tag 'no-such-tag'" in m for m in messages)
    _edit(c, principles=[{"id": "admit-limits"}], exclude=["admit-limits"])
    messages = [p.message for p in lint([c])]
    assert any("selection is empty" in m for m in messages)


def test_selected_twice_and_unknown_demo_principle(const_dir):
    c = const_dir / "constitution" / "default.yaml"
    data = yaml.safe_load(c.read_text())
    data["principles"] = [{"id": "admit-limits"}, {"id": "admit-limits"}]
    data["demonstrations"][0]["principle"] = "nope"
    c.write_text(yaml.safe_dump(data))
    messages = [p.message for p in lint([c])]
    assert any("selected twice" in m for m in messages)
    assert any("unknown principle id 'nope'" in m for m in messages)


def test_load_refuses_invalid(const_dir):
    c = const_dir / "constitution" / "default.yaml"
    _edit(c, rounds=3)  # not a top-level key
    with pytest.raises(ConstitutionError) as err:
        load_constitution(str(c))
    assert "unknown key 'rounds'" in str(err.value)


def test_unknown_constitution_name_lists_available():
    with pytest.raises(ConstitutionError) as err:
        load_constitution("nonexistent")
    assert "available: default" in str(err.value)


def test_weights_combine_selection_and_principle_weight(const_dir):
    c = const_dir / "constitution" / "default.yaml"
    _edit(c, principles=[{"tag": "honest", "weight": 2.0}, {"id": "no-fabrication", "weight": 0.5}])
    p_weight = yaml.safe_load((const_dir / "principles" / "no-fabrication.yaml").read_text()).get("weight", 1.0)
    const = load_constitution(str(c))
    w = dict(zip([p.id for p in const.principles], const.weights))
    assert w["no-fabrication"] == pytest.approx(0.5 * p_weight)  # explicit id wins over the tag
    assert w["admit-limits"] == pytest.approx(2.0)


def test_weighted_sampling_follows_weights(const_dir):
    c = const_dir / "constitution" / "default.yaml"
    _edit(c, principles=[{"id": "admit-limits", "weight": 3.0}, {"id": "answer-directly", "weight": 1.0}])
    (const_dir / "principles" / "answer-directly.yaml").write_text(
        (const_dir / "principles" / "answer-directly.yaml").read_text().replace("weight: 1.2\n", "")
    )
    const = load_constitution(str(c))
    draws = Counter(p.id for p in const.sample_principles(random.Random(0), 4000))
    assert draws["admit-limits"] / 4000 == pytest.approx(0.75, abs=0.03)


def test_lint_cli_exit_codes(const_dir):
    ok = subprocess.run([sys.executable, "-m", "rlaif", "lint"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = const_dir / "principles" / "admit-limits.yaml"
    _edit(bad, weight=-1)
    res = subprocess.run([sys.executable, "-m", "rlaif", "lint", str(const_dir / "principles")], capture_output=True, text=True)
    assert res.returncode == 2
    line = res.stdout.strip().splitlines()[0]
    assert line.startswith(f"{bad}:") and "weight must be positive" in line
    assert line.split(":")[1].isdigit()


@pytest.mark.parametrize("name", ["hf-cai-constitution-anthropic.json", "hf-cai-constitution-grok.json"])
@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared compatibility data (../shared/data) is not beside this checkout")
def test_import_hf_constitution(tmp_path, name):
    import json

    src = SHARED / name
    data = json.loads(src.read_text())
    written = import_hf_constitution(src, tmp_path)
    assert lint([tmp_path / "principles", tmp_path / "constitution"]) == []
    const_file = next(p for p in written if p.parent.name == "constitution")
    const = load_constitution(str(const_file))
    assert len(const.principles) == len(data["constitutions"])
    assert const.principles[0].critique == data["constitutions"][0]["critic"].strip()
    assert len(const.demonstrations) == len(data["system_chat"])
    # the conversation with an extra exchange keeps it as context before the prompt
    longest = max(data["system_chat"], key=len)
    demo = const.demonstrations[data["system_chat"].index(longest)]
    assert len(demo.context) == len(longest) - 6
    assert demo.revision == longest[-1]["content"].strip()
    with pytest.raises(ImportErrorHF, match="already exists"):
        import_hf_constitution(src, tmp_path)


def test_import_rejects_bad_input(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"constitutions": [{"critic": "x"}]}')
    with pytest.raises(ImportErrorHF, match=r"constitutions\[0\] needs string fields"):
        import_hf_constitution(bad, tmp_path / "out")
    bad.write_text("{not json")
    with pytest.raises(ImportErrorHF, match="not valid JSON"):
        import_hf_constitution(bad, tmp_path / "out")
