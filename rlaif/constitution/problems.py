"""Reading principle and constitution files safely, and the problems found in them.

Files are parsed with a safe YAML loader (plain data only: no code runs), keeping each value's line
so that every problem is reported as ``FILE:LINE: message``; schema violations (JSON Schemas in
``rlaif/schemas/``) are worded for people who write these files by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import yaml

from rlaif.data import textio

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ConstitutionError(ValueError):
    """Raised when constitution or principle files are invalid; carries every problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems)
        super().__init__("invalid constitution files:\n" + "\n".join(str(p) for p in self.problems))


@lru_cache(maxsize=None)
def _validator(kind: str):
    import jsonschema

    schema = json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


# libyaml's safe loader where PyYAML has it (the same documents, about 10x faster: principle files
# with test cases are long), else the pure-Python one. Both construct plain data only: no code runs.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlDoc:
    """A parsed YAML file that remembers where each value starts, for line-numbered messages."""

    def __init__(self, path: Path):
        self.path = path
        self.data: Any = None
        self.node = None
        self.error: Problem | None = None
        try:
            # utf-8; a byte-order mark and CRLF line ends (Windows editors) are accepted
            self.text = textio.read_text(path)
        except ValueError as exc:
            self.text = ""
            self.error = Problem(str(path), 1, str(exc).removeprefix(f"{path}: "))
            return
        try:
            try:
                self.node = yaml.compose(self.text, Loader=_LOADER)
                self.data = yaml.load(self.text, Loader=_LOADER)  # noqa: S506 - a safe loader
            except yaml.YAMLError:  # read again by the pure-Python loader, whose messages say more
                self.node = yaml.compose(self.text, Loader=yaml.SafeLoader)
                self.data = yaml.safe_load(self.text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            line = mark.line + 1 if mark is not None else 1
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            self.error = Problem(str(path), line, f"YAML syntax error: {problem}")

    def line(self, where: Iterable[Any] = (), key: str | None = None) -> int:
        """Line (1-based) of the value at path ``where``; of the key ``key`` inside it if given."""
        node = self.node
        if node is None:
            return 1
        for step in where:
            child = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if k.value == step:
                        child = v
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
                child = node.value[step]
            if child is None:
                break
            node = child
        if key is not None and isinstance(node, yaml.MappingNode):
            for k, _ in node.value:
                if k.value == key:
                    return k.start_mark.line + 1
        return node.start_mark.line + 1


def schema_problems(doc: YamlDoc, kind: str) -> list[Problem]:
    problems = []
    for err in _validator(kind).iter_errors(doc.data):
        where = list(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = set(err.schema.get("properties", {}))
            for extra in sorted(set(err.instance) - allowed):
                hint = close_match(extra, allowed)
                msg = f"unknown key {extra!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                problems.append(Problem(str(doc.path), doc.line(where, key=extra), _at(where, msg)))
            continue
        if err.validator == "exclusiveMinimum" and where and where[-1] == "weight":
            msg = f"weight must be positive, got {err.instance!r}"
        elif err.validator == "required":
            msg = err.message.replace("is a required property", "is required")
        elif err.validator == "oneOf" and isinstance(err.instance, dict) and where[:1] == ["tests"]:
            msg = "a test case needs exactly one of 'prompt' or 'messages'"
        elif err.validator == "oneOf" and isinstance(err.instance, dict):
            msg = "a principle selection needs exactly one of 'id' or 'tag'"
        elif err.validator == "anyOf" and isinstance(err.instance, dict) and "revision" in err.instance:
            msg = "a demonstration needs 'principle', or both 'critique_request' and 'revision_request'"
        else:
            msg = err.message
        problems.append(Problem(str(doc.path), doc.line(where), _at(where, msg)))
    return problems


def _at(where: list[Any], msg: str) -> str:
    if not where:
        return msg
    path = "".join(f"[{w}]" if isinstance(w, int) else f".{w}" for w in where).lstrip(".")
    return f"{path}: {msg}"


def close_match(word: str, options: set[str]) -> str | None:
    import difflib

    hits = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.6)
    return hits[0] if hits else None


def file_kind(doc: YamlDoc) -> str:
    """'constitution' for a file with a list of principle selections, else 'principle'."""
    if isinstance(doc.data, dict) and isinstance(doc.data.get("principles"), list):
        return "constitution"
    return "principle"
