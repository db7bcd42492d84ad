"""The README's option tables must match the command-line parser, both ways.

Each command's table starts after a line naming "`rlaif CMD` options"; the engine flags that
several commands share have their own table ("Engine options"). Every flag the parser knows
must be in the README, every flag the README shows must exist, and a "default X" written in
the README must be the parser's default.
"""

from __future__ import annotations

import argparse
import itertools
import re
from pathlib import Path

import pytest

from rlaif.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
COMMANDS = ["generate", "label", "bon", "eval"]
IGNORED = {"-h", "--help"}


def _expand(token: str) -> list[str]:
    """`--{a,b}-{c,d}` -> the four flags it stands for."""
    parts = re.split(r"(\{[^}]*\})", token)
    choices = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
    return ["".join(c) for c in itertools.product(*choices)]


def _table_after(marker: str) -> list[tuple[str, str]]:
    """(first cell, second cell) of every row of the first table after the line holding *marker*."""
    lines = README.splitlines()
    start = next((i for i, line in enumerate(lines) if marker in line and not line.startswith("|")), None)
    assert start is not None, f"README has no line with {marker!r}"
    rows, seen_table = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            seen_table = True
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if set(cells[0]) <= set("-: ") or cells[0] in ("option", "flag"):
                continue
            rows.append((cells[0], cells[1] if len(cells) > 1 else ""))
        elif seen_table:
            break
    assert rows, f"no table after {marker!r}"
    return rows


def _flags(cell: str) -> list[str]:
    out = []
    for tok in re.findall(r"`([^`]*)`", cell):
        for word in tok.split():
            word = word.split("|")[0] if word.startswith("--") and "=" not in word else word
            if word.startswith("-"):
                out.extend(_expand(word.rstrip(",")))
    return out


def _parser_flags(command: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.choices[command]
    return {opt: act for act in p._actions for opt in act.option_strings if opt not in IGNORED}


def _readme_flags(command: str) -> dict[str, str]:
    rows = _table_after(f"`rlaif {command}` options")
    if any("engine options" in meaning.lower() for _, meaning in rows) or command in COMMANDS:
        rows = rows + _table_after("Engine options")
    return {flag: meaning for cell, meaning in rows for flag in _flags(cell)}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_parser_flag_is_in_the_readme(command):
    readme = _readme_flags(command)
    shown = {f for f, act in _parser_flags(command).items() if act.help != argparse.SUPPRESS or f in readme}
    # a flag kept only for old scripts (help suppressed) may stay out of the table, unless the
    # table expands it from a pattern such as --{response,critique,revision}-temperature
    shown |= {f for f, act in _parser_flags(command).items() if act.help == argparse.SUPPRESS and f.split("-")[2] in ("response", "critique", "revision")}
    missing = sorted(shown - set(readme))
    assert not missing, f"rlaif {command}: flags missing from the README table: {missing}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_flag_exists(command):
    parser = _parser_flags(command)
    readme = _readme_flags(command)
    unknown = sorted(f for f in readme if f not in parser)
    assert not unknown, f"rlaif {command}: README shows flags the parser does not know: {unknown}"


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_defaults_match_the_parser(command):
    parser = _parser_flags(command)
    for flag, meaning in _readme_flags(command).items():
        m = re.search(r"default:? `?([-\w.]+)`?", meaning)
        act = parser.get(flag)
        if not m or act is None or act.default in (None, argparse.SUPPRESS) or isinstance(act.default, bool):
            continue
        if len(_flags_in_same_row(command, flag)) > 1:
            continue  # a row covering several flags names one default for them all
        want = m.group(1)
        got = act.default
        assert str(got) == want or (isinstance(got, float) and float(want) == got), (
            f"rlaif {command} {flag}: README says default {want}, the parser has {got!r}")


def _flags_in_same_row(command: str, flag: str) -> list[str]:
    rows = _table_after(f"`rlaif {command}` options") + _table_after("Engine options")
    for cell, _ in rows:
        flags = _flags(cell)
        if flag in flags:
            return flags
    return [flag]


def test_help_texts_name_the_same_defaults_as_the_readme():
    """`--ensemble` once said 3 in the code and 4 in the README; the help text is checked too."""
    parser = _parser_flags("label")
    act = parser["--ensemble"]
    assert f"default {act.default}" in (act.help or ""), act.help
