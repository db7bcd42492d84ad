"""docs/constitution-testing.md matches the parser and the code: every flag of ``rlaif constitution
test`` and ``audit`` is in its table and every flag in a table exists, the defaults it names are the
parser's, the exit statuses are the constants', and the README links the page."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from rlaif.cli import build_parser
from rlaif.cli.engine_flags import add_engine_flags

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "constitution-testing.md").read_text(encoding="utf-8")


def _table_after(marker: str) -> list[tuple[str, str]]:
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line and not line.startswith("|"))
    rows, seen = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            seen = True
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if set(cells[0]) <= set("-: ") or cells[0] in ("option", "status", "column"):
                continue
            rows.append((cells[0], cells[1]))
        elif seen:
            break
    return rows


def _flags(cell: str) -> list[str]:
    return [w.rstrip(",") for tok in re.findall(r"`([^`]*)`", cell) for w in tok.split() if w.startswith("--")]


def _parser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    const = next(a for a in sub.choices["constitution"]._actions if isinstance(a, argparse._SubParsersAction))
    return const.choices[command]


def _engine_flags() -> set[str]:
    p = argparse.ArgumentParser()
    add_engine_flags(p)
    return {o for a in p._actions for o in a.option_strings} - {"-h", "--help"}


@pytest.mark.parametrize("command", ["test", "audit"])
def test_the_option_table_matches_the_parser(command):
    rows = _table_after(f"`rlaif constitution {command}` options")
    documented = {f: meaning for cell, meaning in rows for f in _flags(cell)}
    parser = {o: a for a in _parser(command)._actions for o in a.option_strings if o not in ("-h", "--help")}
    assert set(parser) - _engine_flags() == set(documented), f"rlaif constitution {command}: docs and parser differ"
    assert _engine_flags() <= set(parser)  # "and the engine options of the README"
    for flag, meaning in documented.items():
        m = re.search(r"default:? `?([-\w.]+)`?\)?", meaning)
        if m and parser[flag].default not in (None, False) and m.group(1)[0].isdigit():
            assert float(m.group(1)) == float(parser[flag].default), flag


def test_exit_statuses_are_the_constants():
    from rlaif.pipeline.constitution_test import REQUESTS_FAILED_EXIT, TEST_FAILED_EXIT
    from rlaif.pipeline.diagnostics import STRICT_EXIT

    table = dict(_table_after("**Exit status**"))
    assert "--strict" in table[str(STRICT_EXIT)] and "failed" in table[str(REQUESTS_FAILED_EXIT)]
    assert "--min-pass" in table[str(TEST_FAILED_EXIT)] and "TEST_FAILED_EXIT" in table[str(TEST_FAILED_EXIT)]
    assert TEST_FAILED_EXIT not in (0, 1, 2, 3, REQUESTS_FAILED_EXIT)


def test_the_readme_links_the_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/constitution-testing.md)" in readme and "rlaif constitution test" in readme
