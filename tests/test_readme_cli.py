"""The README's and every docs/ page's commands must match the command-line parser.

* **Option tables.** A table that follows a line starting with "`rlaif CMD` options" (or
  "`rlaif CMD SUB` options") documents that command; "Engine options" starts the table of the engine
  flags that every command with ``--backend`` shares. Every flag such a table shows must exist, a
  "default X" written in it must be the parser's default, and every flag the parser knows must be
  in the command's table (every command of the parser has one, somewhere in the documents).
* **Commands shown.** Every ``rlaif ...`` command line in a code block, and every inline code span
  that starts with ``rlaif CMD``, in README.md and docs/*.md: the command (and subcommand or
  trainer) must exist, every flag must be one of that command's flags, and every ``key=value``
  setting must name a setting of that command (the trainers' config classes; ``rlaif generate``'s
  settings; ``label``, ``bon`` and ``eval``'s flag names).

The checks are functions of a page's text, so the tests at the end can plant a wrong flag or a
wrong default in a page and see them fail.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import re
import typing
from functools import lru_cache
from pathlib import Path

import pytest

from rlaif.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
IGNORED = {"-h", "--help"}
TABLE_MARKER = re.compile(r"^`rlaif ([a-z][a-z-]*(?: [a-z][a-z-]*)?)` options\b")
ENGINE_MARKER = "Engine options"
# the trainers' settings classes (rlaif/train/<kind>.py), as `rlaif train KIND` loads them
TRAIN_CONFIGS = {"sft": "SFTConfig", "rm": "RMConfig", "dpo": "DPOConfig", "ppo": "PPOConfig",
                 "online-dpo": "OnlineDPOConfig", "grpo": "GRPOConfig"}


# ------------------------------------------------------------------ the parser


@lru_cache(maxsize=None)
def commands() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command the parser runs, by its words: ('label',), ('constitution', 'import'), ..."""
    out: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if path and not subs:
            out[path] = p
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, path + (name,))

    walk(build_parser(), ())
    return out


def groups() -> set[str]:
    """Commands that only hold subcommands (``rlaif model``, ``rlaif constitution``)."""
    return {path[0] for path in commands() if len(path) > 1}


def parser_flags(command: tuple[str, ...]) -> dict[str, argparse.Action]:
    p = commands()[command]
    return {opt: act for act in p._actions for opt in act.option_strings if opt not in IGNORED}


def has_engine(command: tuple[str, ...]) -> bool:
    return "--backend" in parser_flags(command)


# ------------------------------------------------------------------ option tables


def _expand(token: str) -> list[str]:
    """`--{a,b}-{c,d}` -> the four flags it stands for."""
    parts = re.split(r"(\{[^}]*\})", token)
    choices = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
    return ["".join(c) for c in itertools.product(*choices)]


def _flags(cell: str) -> list[str]:
    """The flags in a table's first cell: every word in backticks that starts with a dash."""
    out = []
    for tok in re.findall(r"`([^`]*)`", cell):
        for word in tok.split():
            word = word.split("|")[0] if word.startswith("--") and "=" not in word else word
            if word.startswith("-"):
                out.extend(_expand(word.rstrip(",")))
    return out


def _table_rows(lines: list[str], start: int) -> list[tuple[str, str]]:
    """(first cell, second cell) of every row of the first table after line *start*."""
    rows, seen_table = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            seen_table = True
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if set(cells[0]) <= set("-: ") or cells[0] in ("option", "flag"):
                continue
            rows.append((cells[0], cells[1] if len(cells) > 1 else ""))
        elif seen_table or line.startswith("#"):
            break
    return rows


@dataclasses.dataclass
class Table:
    where: str  # "page:line"
    command: tuple[str, ...] | None  # None: the engine table
    rows: list[tuple[str, str]]

    def flags(self) -> dict[str, str]:
        return {flag: meaning for cell, meaning in self.rows for flag in _flags(cell)}


def tables(name: str, text: str) -> tuple[list[Table], list[str]]:
    """The option tables of one page, and the problems with their markers."""
    lines = text.splitlines()
    found, problems = [], []
    for i, line in enumerate(lines):
        m = TABLE_MARKER.match(line)
        engine = line.startswith(ENGINE_MARKER)
        if not (m or engine):
            continue
        where = f"{name}:{i + 1}"
        command = tuple(m.group(1).split()) if m else None
        if command is not None and command not in commands():
            problems.append(f"{where}: a table of options of `rlaif {' '.join(command)}`, which the parser does not have")
            continue
        rows = _table_rows(lines, i)
        if not rows:
            problems.append(f"{where}: no table after {line!r}")
            continue
        found.append(Table(where, command, rows))
    return found, problems


def _defaults_in(meaning: str) -> list[str]:
    return re.findall(r"default:? `?([-\w.]+)`?", meaning)


def _same(documented: str, default) -> bool:
    if isinstance(default, (list, tuple)):
        return documented == " ".join(map(str, default)) or (len(default) == 1 and documented == str(default[0]))
    if isinstance(default, float):
        try:
            return float(documented) == default
        except ValueError:
            return False
    return documented == str(default)


def table_problems(table: Table, engine_rows: list[tuple[str, str]]) -> list[str]:
    """Flags the parser does not have, and defaults it does not use (for every command that the
    table documents: the engine table for every command with --backend)."""
    targets = [table.command] if table.command else [c for c in commands() if has_engine(c)]
    problems = []
    for command in targets:
        known = parser_flags(command)
        label = f"rlaif {' '.join(command)}"
        for cell, meaning in table.rows:
            flags = _flags(cell)
            for flag in flags:
                if flag not in known:
                    problems.append(f"{table.where}: {label} has no flag {flag}")
            defaults = _defaults_in(meaning)
            # one default per flag, in order; a row naming one default for several flags is not read
            pairs = zip(flags, defaults) if len(defaults) == len(flags) else []
            for flag, documented in pairs:
                act = known.get(flag)
                if act is None or act.default in (None, argparse.SUPPRESS) or isinstance(act.default, bool):
                    continue
                if not _same(documented, act.default):
                    problems.append(f"{table.where}: {label} {flag}: the page says default {documented}, "
                                    f"the parser has {act.default!r}")
    return problems


def missing_flags(command: tuple[str, ...], table: Table, engine: Table | None) -> list[str]:
    """Flags of the parser that the command's table (with the engine table) leaves out."""
    shown = set(table.flags())
    if has_engine(command) and engine is not None:
        shown |= set(engine.flags())
    flags = parser_flags(command)
    need = {f for f, act in flags.items() if act.help != argparse.SUPPRESS}
    # a flag kept only for old scripts (help suppressed) may stay out of the table, unless the
    # table expands it from a pattern such as --{response,critique,revision}-temperature
    need |= {f for f, act in flags.items() if act.help == argparse.SUPPRESS and f.count("-") >= 3
             and f.split("-")[2] in ("response", "critique", "revision")}
    return sorted(need - shown)


# ------------------------------------------------------------------ commands shown


def _code_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of every fenced code block."""
    blocks, current, start = [], None, 0
    for i, line in enumerate(text.splitlines()):
        if line.lstrip().startswith("```"):
            if current is None:
                current, start = [], i + 2
            else:
                blocks.append((start, current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def _logical_lines(start: int, lines: list[str]) -> list[tuple[int, str]]:
    """Lines with their backslash continuations, and usage lines continued by an indented `[--...`."""
    out: list[tuple[int, str]] = []
    joining = False
    for k, line in enumerate(lines):
        stripped = line.strip()
        if out and (joining or (line[:1].isspace() and stripped.startswith(("[-", "--")))):
            out[-1] = (out[-1][0], out[-1][1] + " " + stripped.rstrip("\\"))
        else:
            out.append((start + k, stripped.rstrip("\\")))
        joining = stripped.endswith("\\")
    return out


def _inline_spans(text: str) -> list[tuple[int, str]]:
    """Inline code spans outside code blocks that start with `rlaif `."""
    spans, in_block = [], False
    for i, line in enumerate(text.splitlines()):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            continue
        for span in re.findall(r"`([^`]+)`", line):
            span = span.replace("\\|", "|")  # a pipe escaped in a table cell
            if span.startswith("rlaif "):
                spans.append((i + 1, span))
    return spans


def _settings_type(command: tuple[str, ...], kind: str | None):
    """The settings a command's key=value words set: a dataclass, a set of keys, or None (none)."""
    if command == ("train",):
        if kind not in TRAIN_CONFIGS:
            return None
        module = importlib.import_module(f"rlaif.train.{kind.replace('-', '_')}")
        return getattr(module, TRAIN_CONFIGS[kind])
    if command == ("generate",):
        from rlaif.pipeline.config import GenerateConfig

        return GenerateConfig
    if command in (("label",), ("bon",), ("eval",)):
        from rlaif.cli.settings_flags import setting_actions

        return set(setting_actions(commands()[command]))
    return None


def _key_known(settings, key: str) -> bool:
    """Whether a dotted key names a setting: fields of nested dataclasses, any key of a dict field."""
    if isinstance(settings, set):
        return key in settings
    tp = settings
    for part in key.split("."):
        origin = typing.get_origin(tp)
        if origin is typing.Union or str(origin) == "types.UnionType":
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
            origin = typing.get_origin(tp)
        if origin is dict:
            tp = typing.get_args(tp)[1]
            continue
        if not dataclasses.is_dataclass(tp):
            return False
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return False
        tp = hints[part]
    return True


def _check_command(where: str, words: list[str], at_start: bool) -> list[str]:
    """Problems with one command: words after 'rlaif', up to the end of the command."""
    if not words:
        return []
    name = words[0]
    top = {path[0] for path in commands()}
    if name not in top:
        # a word after 'rlaif' in the middle of a line may be prose; at the start it is a command
        return [f"{where}: `rlaif {name}` is not a command"] if at_start and re.fullmatch(r"[a-z][a-z-]*", name) else []
    rest = words[1:]
    command: tuple[str, ...] = (name,)
    kind = None
    if name in groups():
        sub = rest[0] if rest else ""
        options = [w for w in sub.split("|")]
        subs = {path[1] for path in commands() if path[0] == name}
        if not sub or sub.startswith("-") or sub.isupper() or sub in ("...", "SUB"):
            return []
        bad = [o for o in options if o not in subs]
        if bad:
            return [f"{where}: `rlaif {name} {sub}`: no subcommand {bad[0]} (has {sorted(subs)})"]
        command, rest = (name, options[0]), rest[1:]
    problems = []
    if name == "train" and rest and not rest[0].startswith("-") and "=" not in rest[0] and not rest[0].isupper():
        kinds = rest[0].split("|")
        bad = [k for k in kinds if k not in TRAIN_CONFIGS]
        if bad:
            return [f"{where}: `rlaif train {rest[0]}`: no trainer {bad[0]}"]
        kind = kinds[0] if len(kinds) == 1 else None
    known = parser_flags(command) | {"-h": None, "--help": None}
    settings = _settings_type(command, kind)
    label = f"rlaif {' '.join(command)}"
    for word in rest:
        token = word.strip("[](),;:")
        if re.fullmatch(r"-\d.*|-+", token) or not token.startswith("-"):
            m = re.fullmatch(r"([a-z_][\w]*(?:\.[\w]+)*)=.*", token)
            if m and settings is not None and not _key_known(settings, m.group(1)):
                problems.append(f"{where}: {label} has no setting {m.group(1)} (in {word!r})")
            continue
        for flag in _expand(token.split("=")[0]):
            if flag not in known:
                problems.append(f"{where}: {label} has no flag {flag}")
    return problems


def _split_commands(line: str) -> list[tuple[list[str], bool]]:
    """The rlaif commands of one shell line: (words after 'rlaif', whether it starts the line)."""
    words = line.split()
    out = []
    for i, w in enumerate(words):
        if w != "rlaif":
            continue
        before = words[:i]
        at_start = all(b in ("$", "python", "-m", ".venv/bin/python", "PYTHONPATH=$PWD") for b in before) or (
            bool(before) and before[-1] == "-m")
        cmd = []
        for nxt in words[i + 1:]:
            if nxt in ("|", "&&", ";", "||", ">", "2>&1") or nxt.startswith("#") or nxt == "rlaif":
                break
            cmd.append(nxt)
        out.append((cmd, at_start))
    return out


def usage_problems(name: str, text: str) -> tuple[int, list[str]]:
    """How many rlaif commands the page shows, and the problems with them."""
    seen, problems = 0, []
    for start, lines in _code_blocks(text):
        for lineno, line in _logical_lines(start, lines):
            for words, at_start in _split_commands(line.removeprefix("$ ")):
                seen += 1
                problems += _check_command(f"{name}:{lineno}", words, at_start)
    for lineno, span in _inline_spans(text):
        for words, at_start in _split_commands(span):
            seen += 1
            problems += _check_command(f"{name}:{lineno}", words, at_start)
    return seen, problems


# ------------------------------------------------------------------ the documents


def read_docs(pages=DOCS) -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in pages}


def all_problems(docs: dict[str, str]) -> list[str]:
    """Every problem of the option tables and the commands shown in *docs*."""
    found, problems = [], []
    for name, text in docs.items():
        t, p = tables(name, text)
        found += t
        problems += p
        problems += usage_problems(name, text)[1]
    engines = [t for t in found if t.command is None]
    if len(engines) != 1:
        problems.append(f"one engine options table expected, found {[t.where for t in engines]}")
    engine = engines[0] if engines else None
    for table in found:
        problems += table_problems(table, engine.rows if engine else [])
    by_command: dict[tuple[str, ...], list[Table]] = {}
    for table in found:
        if table.command is not None:
            by_command.setdefault(table.command, []).append(table)
    for command in commands():
        label = f"rlaif {' '.join(command)}"
        if command not in by_command:
            problems.append(f"{label}: no option table in README.md or docs/ (a line starting with '`{label}` options')")
        for table in by_command.get(command, []):
            missing = missing_flags(command, table, engine)
            if missing:
                problems.append(f"{table.where}: {label}: flags missing from the table: {missing}")
    return problems


DOCUMENTS = read_docs()


def test_the_documents_match_the_parser():
    problems = all_problems(DOCUMENTS)
    assert not problems, "\n".join(problems)


def test_the_check_reads_every_page_and_command():
    """The check cannot pass by reading nothing: every command has its table, and the pages show
    many commands (README and docs together)."""
    tabled = {t.command for name, text in DOCUMENTS.items() for t in tables(name, text)[0]}
    assert set(commands()) <= tabled
    shown = {name: usage_problems(name, text)[0] for name, text in DOCUMENTS.items()}
    assert shown["README.md"] >= 10 and sum(shown.values()) >= 150, shown
    for page in ("docs/labelling.md", "docs/generate.md", "docs/eval.md", "docs/try.md", "docs/review.md"):
        assert shown[page] >= 3, (page, shown[page])


@pytest.mark.parametrize("page", ["docs/labelling.md", "docs/scaling.md", "README.md"])
def test_a_wrong_flag_planted_in_a_page_fails(page):
    docs = dict(DOCUMENTS)
    docs[page] += "\n```bash\nrlaif label --pairs p.jsonl --out runs/x --ensembel 4\n```\n"
    assert any("rlaif label has no flag --ensembel" in p for p in all_problems(docs))
    docs = dict(DOCUMENTS)
    docs[page] += "\nRun `rlaif eval --policy M --out D --no-such-flag` to see.\n"
    assert any("rlaif eval has no flag --no-such-flag" in p for p in all_problems(docs))


def test_wrong_tables_commands_and_settings_fail():
    docs = dict(DOCUMENTS)
    page = "docs/labelling.md"
    text = docs[page]
    assert "| `--ensemble K` | principles sampled per pair (default 4) |" in text
    docs[page] = text.replace("| `--ensemble K` | principles sampled per pair (default 4) |",
                              "| `--ensemble K` | principles sampled per pair (default 3) |")
    assert any("--ensemble: the page says default 3" in p for p in all_problems(docs))
    docs[page] = text.replace("| `--single-order` |", "| `--single-orders` |")
    problems = all_problems(docs)
    assert any("rlaif label has no flag --single-orders" in p for p in problems)
    assert any("flags missing from the table: ['--single-order']" in p for p in problems)
    docs = dict(DOCUMENTS)
    docs["docs/cli.md"] = docs["docs/cli.md"].replace("| `--dtype D` | model dtype (default: auto) |\n", "")
    assert any("rlaif try: flags missing" in p and "--dtype" in p for p in all_problems(docs))
    for planted, expected in (
        ("rlaif genrate --prompts p --out o", "`rlaif genrate` is not a command"),
        ("rlaif train dop --config c.yaml", "no trainer dop"),
        ("rlaif train dpo --config configs/dpo-demo.yaml lr=1e-6 betta=0.1", "rlaif train has no setting betta"),
        ("rlaif train grpo judge.ensembel=2", "rlaif train has no setting judge.ensembel"),
        ("rlaif generate --prompts p --out o sampling.critique.max_token=9", "no setting sampling.critique.max_token"),
        ("rlaif label --pairs p --out o tieband=0.1", "rlaif label has no setting tieband"),
        ("rlaif constitution shwo default", "no subcommand shwo"),
        ("rlaif review runs/x \\\n    --prot 9000", "rlaif review has no flag --prot"),
    ):
        docs = dict(DOCUMENTS)
        docs["docs/try.md"] += f"\n```\n{planted}\n```\n"
        assert any(expected in p for p in all_problems(docs)), planted
    # and the right spellings pass
    docs = dict(DOCUMENTS)
    docs["docs/try.md"] += ("\n```\nrlaif train grpo --config configs/grpo-demo.yaml judge.ensemble=2 judge.engine.dtype=float32\n"
                            "rlaif generate --prompts p --out o sampling.critique.max_tokens=9 label.ensemble=8\n```\n")
    assert not all_problems(docs)


def test_help_texts_name_the_same_defaults_as_the_docs():
    """`--ensemble` once said 3 in the code and 4 in the README; the help text is checked too."""
    act = parser_flags(("label",))["--ensemble"]
    assert f"default {act.default}" in (act.help or ""), act.help
