"""Principle test cases: the rules every shipped principle's cases keep, the schema, and the
problems ``rlaif lint`` reports with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlaif.constitution import lint, load_constitution, load_principle_dir
from rlaif.constitution.cases import (
    LENGTH_TRAP_RATIO, NEAR_DUPLICATE, catches_length, catches_position, repeats_example, traps, word_similarity,
)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = load_principle_dir(ROOT / "principles")


def test_shipped_principles_load_with_their_cases():
    assert not SHIPPED.problems
    assert len(SHIPPED.principles) == 20


@pytest.mark.parametrize("pid", sorted(SHIPPED.principles))
def test_every_shipped_principle_keeps_the_case_rules(pid):
    cases = SHIPPED.principles[pid].tests
    assert len(cases) >= 6
    shorter = sum(len(c.better_text) < len(c.worse_text) for c in cases)
    assert shorter / len(cases) >= 0.5, f"{pid}: the better response is the shorter one in only {shorter} of {len(cases)}"
    n_a = sum(c.better == "A" for c in cases)
    assert abs(n_a - (len(cases) - n_a)) <= 1, f"{pid}: better is A in {n_a} of {len(cases)} cases"
    # built to catch the biases: a minimal pair (position) and answers where the worse is clearly longer (length)
    assert sum(catches_position(c) for c in cases) >= 1, pid
    assert sum(catches_length(c) for c in cases) >= 2, pid
    assert all(c.note for c in cases)


def test_no_shipped_case_repeats_a_comparison_example():
    for name in ("default", "harmless-strict"):
        const = load_constitution(name)
        for ex in const.comparison_examples:
            for p in SHIPPED.principles.values():
                assert not any(repeats_example(c, ex.prompt, ex.response_a, ex.response_b) for c in p.tests), (name, p.id)
    # and no case repeats another one, in any principle
    seen = {}
    for p in SHIPPED.principles.values():
        for c in p.tests:
            key = (c.prompt[-1]["content"], c.response_a, c.response_b)
            assert key not in seen, (c.name, seen.get(key))
            seen[key] = c.name


def test_trap_definitions_by_hand():
    from rlaif.constitution.cases import PrincipleCase

    def case(a, b, better):
        return PrincipleCase("p", "1", ({"role": "user", "content": "q"},), a, b, better)

    # (1 + 11) / (1 + 9) = 1.2: exactly at the ratio counts; 11 vs 10 chars (12 / 11) does not
    assert catches_length(case("x" * 9, "y" * 11, "A")) and not catches_length(case("x" * 10, "y" * 11, "A"))
    assert not catches_length(case("x" * 9, "y" * 11, "B"))  # the better one is the longer
    # 4 of 5 words match in each: ratio 2 * 4 / 10 = 0.8
    assert word_similarity("take the pill at night", "take the pill at noon") == pytest.approx(0.8)
    assert catches_position(case("take the pill at night", "take the pill at noon", "A"))
    assert traps(case("yes", "no thanks, I do not think so at all", "A")) == ("length",)
    assert NEAR_DUPLICATE == 0.6 and LENGTH_TRAP_RATIO == 1.2


def test_cases_are_not_part_of_the_constitution_hash(const_dir):
    before = load_constitution(str(const_dir / "constitution" / "default.yaml")).sha256
    path = const_dir / "principles" / "answer-directly.yaml"
    data = yaml.safe_load(path.read_text())
    data["tests"].append({"prompt": "2 + 2?", "response_a": "4", "response_b": "5", "better": "A"})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    const = load_constitution(str(const_dir / "constitution" / "default.yaml"))
    assert const.sha256 == before
    assert len(const.principle("answer-directly").tests) == 7
    # while a change to what the judge is asked does change it
    data["comparison"] += " Be strict."
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert load_constitution(str(const_dir / "constitution" / "default.yaml")).sha256 != before


def _with_cases(path: Path, cases_yaml: str) -> None:
    text = path.read_text()
    text = text[: text.index("tests:")] if "tests:" in text else text
    path.write_text(text + "tests:\n" + cases_yaml)


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_lint_reports_case_problems_with_their_lines(const_dir):
    path = const_dir / "principles" / "admit-limits.yaml"
    _with_cases(path, """\
  - prompt: fine case
    response_a: one
    response_b: two
    better: A
  - prompt: bad better
    response_a: one
    response_b: two
    better: C
  - prompt: same answers
    response_a: one answer
    response_b: "one   answer"
    better: A
  - messages:
      - {role: user, content: hi}
      - {role: assistant, content: hello}
    response_a: one
    response_b: two
    better: B
  - prompt: both forms
    messages: [{role: user, content: hi}]
    response_a: one
    response_b: two
    better: B
  - prompt: typo
    respons_b: two
    response_a: one
    better: B
""")
    problems = [p for p in lint([const_dir / "principles"]) if p.file == str(path)]
    by_line = {p.line: p.message for p in problems}
    assert "tests[1].better" in by_line[_line_of(path, "better: C")] and "'C'" in by_line[_line_of(path, "better: C")]
    # the schema problems come first; a file with schema problems is not read further
    assert any("exactly one of 'prompt' or 'messages'" in m for m in by_line.values())
    assert any("unknown key 'respons_b'" in m and "response_b" in m for m in by_line.values())
    assert by_line[_line_of(path, "respons_b")].startswith("tests[5]")
    # with the schema satisfied, the semantic checks run
    _with_cases(path, """\
  - prompt: same answers
    response_a: one answer
    response_b: "one   answer"
    better: A
  - id: x
    messages:
      - {role: user, content: hi}
      - {role: assistant, content: hello}
    response_a: one
    response_b: two
    better: B
  - id: x
    prompt: q
    response_a: one
    response_b: two
    better: B
""")
    problems = {p.line: p.message for p in lint([const_dir / "principles"]) if p.file == str(path)}
    assert "response_a and response_b are the same text" in problems[_line_of(path, 'response_b: "one   answer"')]
    assert "the last message must be the user's" in problems[_line_of(path, "messages:")]
    assert "duplicate test id 'x' (also tests[1])" in problems[_last_line_of(path, "id: x")]


def _last_line_of(path: Path, needle: str) -> int:
    return [i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line][-1]


def test_lint_refuses_a_case_that_repeats_a_comparison_example(const_dir):
    const_file = const_dir / "constitution" / "default.yaml"
    ex = yaml.safe_load(const_file.read_text())["comparison_examples"][1]  # principle no-manipulation
    path = const_dir / "principles" / "no-manipulation.yaml"
    data = yaml.safe_load(path.read_text())
    data["tests"].append({"prompt": ex["prompt"], "response_a": ex["response_b"], "response_b": "Something else entirely.",
                          "better": "B"})
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=1000))
    problems = lint([const_file])
    assert len(problems) == 1, problems
    p = problems[0]
    assert p.file == str(path) and p.line == _last_line_of(path, "- prompt:")
    assert "no-manipulation#7 repeats comparison example 1" in p.message and "--few-shot" in p.message
    assert lint([const_dir / "principles"]) == []  # a folder of principles alone has no examples to repeat
