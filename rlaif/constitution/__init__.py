"""Principle and constitution files: load, validate (JSON Schema), lint, hash, sample.

A *principle* file (``principles/<id>.yaml``) says how to critique and revise a response
against one principle and how to ask a feedback model to compare two responses under it.
A *constitution* file (``constitution/<name>.yaml``) selects principles by id or tag, with
weights, and holds the system prompt, few-shot demonstrations and default settings.

Every problem is reported as ``FILE:LINE: message``; a command that reads these files
refuses to start while any problem remains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.constitution.cases import example_repeats, read_cases
from rlaif.constitution.problems import (  # re-exported: ``from rlaif.constitution import Problem`` etc.
    SCHEMA_DIR, ConstitutionError, Problem, YamlDoc, close_match, file_kind, schema_problems,
)
from rlaif.constitution.records import ComparisonExample, Constitution, Demonstration, Principle  # re-exported

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _builtin_root() -> Path:
    """The folder that holds principles/ and constitution/: the source checkout, else the wheel copy."""
    repo = PACKAGE_DIR.parent
    if (repo / "principles").is_dir() and (repo / "constitution").is_dir():
        return repo
    return PACKAGE_DIR / "_builtin"


def builtin_principles_dir() -> Path:
    return _builtin_root() / "principles"


def builtin_constitution_dir() -> Path:
    return _builtin_root() / "constitution"


# --------------------------------------------------------------------------- principles


def _principle_from(data: dict[str, Any], path: Path) -> Principle:
    return Principle(
        id=data["id"],
        title=data["title"],
        tags=tuple(data["tags"]),
        critique=data["critique"].strip(),
        revision=data["revision"].strip(),
        comparison=data["comparison"].strip(),
        weight=float(data.get("weight", 1.0)),
        description=data.get("description", "").strip(),
        examples=tuple(
            Demonstration(
                prompt=e["prompt"].strip(),
                response=e["response"].strip(),
                critique_request=data["critique"].strip(),
                critique=e["critique"].strip(),
                revision_request=data["revision"].strip(),
                revision=e["revision"].strip(),
                principle=data["id"],
            )
            for e in data.get("examples", [])
        ),
        path=str(path),
    )


@dataclass
class PrincipleSet:
    principles: dict[str, Principle]
    raw: dict[str, dict[str, Any]]
    texts: dict[str, str]
    problems: list[Problem]


def load_principle_dir(directory: Path) -> PrincipleSet:
    """Read and check every ``*.yaml``/``*.yml`` file of a principles folder."""
    principles: dict[str, Principle] = {}
    raw: dict[str, dict[str, Any]] = {}
    texts: dict[str, str] = {}
    problems: list[Problem] = []
    if not directory.is_dir():
        return PrincipleSet({}, {}, {}, [Problem(str(directory), 1, "principles folder does not exist")])
    files = sorted(list(directory.glob("*.yaml")) + list(directory.glob("*.yml")))
    if not files:
        problems.append(Problem(str(directory), 1, "no principle files (*.yaml) in this folder"))
    for path in files:
        found = check_principle_file(path)
        if found.doc.error is None and file_kind(found.doc) == "constitution":
            continue  # a constitution kept beside its principles is not a principle
        problems.extend(found.problems)
        if found.principle is None:
            continue
        p = found.principle
        if p.id in principles:
            problems.append(
                Problem(str(path), found.doc.line(["id"]), f"duplicate principle id {p.id!r} (also in {principles[p.id].path})")
            )
            continue
        principles[p.id] = p
        raw[p.id] = found.doc.data
        texts[p.id] = found.doc.text
    return PrincipleSet(principles, raw, texts, problems)


@dataclass
class _Checked:
    doc: YamlDoc
    principle: Principle | None
    problems: list[Problem]


def check_principle_file(path: Path) -> _Checked:
    doc = YamlDoc(path)
    if doc.error:
        return _Checked(doc, None, [doc.error])
    if not isinstance(doc.data, dict):
        return _Checked(doc, None, [Problem(str(path), 1, "a principle file must be a YAML mapping")])
    problems = schema_problems(doc, "principle")
    if problems:
        return _Checked(doc, None, problems)
    if doc.data["id"] != path.stem:
        problems.append(
            Problem(str(path), doc.line(["id"]), f"id {doc.data['id']!r} does not match the file name {path.stem!r}")
        )
    cases, found = read_cases(doc.data, str(path), doc.line)
    problems.extend(Problem(str(path), line, msg) for line, msg in found)
    return _Checked(doc, dataclasses.replace(_principle_from(doc.data, path), tests=cases), problems)


# --------------------------------------------------------------------------- constitutions


def principles_dir_for(constitution_path: Path, data: dict[str, Any] | None) -> Path:
    """Where a constitution's principles live (see the schema's ``principles_dir``)."""
    if data and isinstance(data.get("principles_dir"), str):
        return (constitution_path.parent / data["principles_dir"]).resolve()
    sibling = constitution_path.resolve().parent.parent / "principles"
    if sibling.is_dir():
        return sibling
    return builtin_principles_dir()


def _resolve_selection(doc: YamlDoc, pset: PrincipleSet) -> tuple[list[tuple[Principle, float]], list[Problem]]:
    data, path = doc.data, str(doc.path)
    problems: list[Problem] = []
    chosen: dict[str, float] = {}
    explicit: set[str] = set()
    for i, sel in enumerate(data["principles"]):
        weight = float(sel.get("weight", 1.0))
        if "id" in sel:
            pid = sel["id"]
            if pid not in pset.principles:
                hint = close_match(pid, set(pset.principles))
                problems.append(
                    Problem(path, doc.line(["principles", i, "id"]),
                            f"unknown principle id {pid!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
                )
                continue
            if pid in explicit:
                problems.append(Problem(path, doc.line(["principles", i, "id"]), f"principle {pid!r} is selected twice"))
                continue
            explicit.add(pid)
            chosen[pid] = weight  # an explicit id overrides a weight set by a tag
        else:
            tag = sel["tag"]
            matched = [pid for pid, p in sorted(pset.principles.items()) if tag in p.tags]
            if not matched:
                problems.append(Problem(path, doc.line(["principles", i, "tag"]), f"no principle has the tag {tag!r}"))
            for pid in matched:
                if pid not in explicit:
                    chosen[pid] = weight
    for i, pid in enumerate(data.get("exclude", [])):
        if pid not in pset.principles:
            problems.append(Problem(path, doc.line(["exclude", i]), f"exclude names an unknown principle id {pid!r}"))
        chosen.pop(pid, None)
    if not chosen and not problems:
        problems.append(Problem(path, doc.line(["principles"]), "the selection is empty: no principle is left"))
    selected = [(pset.principles[pid], w * pset.principles[pid].weight) for pid, w in sorted(chosen.items())]
    return selected, problems


def _demonstrations(doc: YamlDoc, pset: PrincipleSet) -> tuple[list[Demonstration], list[Problem]]:
    out, problems = [], []
    for i, d in enumerate(doc.data.get("demonstrations", [])):
        pid = d.get("principle")
        p = pset.principles.get(pid) if pid else None
        if pid and p is None:
            problems.append(Problem(str(doc.path), doc.line(["demonstrations", i, "principle"]), f"unknown principle id {pid!r}"))
            continue
        out.append(
            Demonstration(
                prompt=d["prompt"].strip(),
                response=d["response"].strip(),
                critique_request=(d.get("critique_request") or p.critique).strip(),
                critique=d["critique"].strip(),
                revision_request=(d.get("revision_request") or p.revision).strip(),
                revision=d["revision"].strip(),
                principle=pid,
                context=tuple({"role": m["role"], "content": m["content"]} for m in d.get("context", [])),
            )
        )
    return out, problems


def check_constitution_file(path: Path, principles_dir: Path | None = None) -> tuple[Constitution | None, list[Problem]]:
    """Validate one constitution file together with its principles folder."""
    doc = YamlDoc(path)
    if doc.error:
        return None, [doc.error]
    if not isinstance(doc.data, dict):
        return None, [Problem(str(path), 1, "a constitution file must be a YAML mapping")]
    problems = schema_problems(doc, "constitution")
    if problems:
        return None, problems
    pdir = principles_dir or principles_dir_for(path, doc.data)
    pset = load_principle_dir(pdir)
    problems.extend(pset.problems)
    selected, sel_problems = _resolve_selection(doc, pset)
    problems.extend(sel_problems)
    demos, demo_problems = _demonstrations(doc, pset)
    problems.extend(demo_problems)
    for i, ex in enumerate(doc.data.get("comparison_examples", [])):
        if ex.get("principle") and ex["principle"] not in pset.principles:
            problems.append(
                Problem(str(path), doc.line(["comparison_examples", i, "principle"]), f"unknown principle id {ex['principle']!r}")
            )
    for case, j in example_repeats((c for p, _ in selected for c in p.tests), doc.data.get("comparison_examples", [])):
        problems.append(Problem(case.path, case.line, f"test case {case.name} repeats comparison example {j} of {path} "
                                f"(line {doc.line(['comparison_examples', j])}), which --few-shot shows to the judge"))
    if problems:
        return None, problems
    # Worked examples carried by the selected principles join the shared few-shot block,
    # after the constitution's own demonstrations, in a fixed order (so the prefix is stable).
    for p, _ in selected:
        demos.extend(p.examples)
    used_raw = {p.id: pset.raw[p.id] for p, _ in selected}
    # test cases change no request, so they are not part of the hash (adding one keeps runs resumable)
    hashed = {pid: {k: v for k, v in raw.items() if k != "tests"} for pid, raw in used_raw.items()}
    digest = hashlib.sha256(
        json.dumps({"constitution": doc.data, "principles": hashed}, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()
    texts = {f"constitution/{path.name}": doc.text}
    texts.update({f"principles/{Path(p.path).name}": pset.texts[p.id] for p, _ in selected})
    const = Constitution(
        name=doc.data["name"],
        description=doc.data.get("description", "").strip(),
        system_prompt=(doc.data.get("system_prompt") or "").strip() or None,
        principles=tuple(p for p, _ in selected),
        weights=tuple(w for _, w in selected),
        demonstrations=tuple(demos),
        comparison_examples=tuple(
            ComparisonExample(
                prompt=e["prompt"].strip(), response_a=e["response_a"].strip(), response_b=e["response_b"].strip(),
                better=e["better"], principle=e.get("principle"), reasoning=(e.get("reasoning") or "").strip() or None,
            )
            for e in doc.data.get("comparison_examples", [])
        ),
        defaults=doc.data.get("defaults", {}),
        path=str(path),
        sha256=digest,
        raw=doc.data,
        principle_raw=used_raw,
        file_texts=texts,
    )
    return const, []


def available_constitutions() -> list[str]:
    return sorted(p.stem for p in builtin_constitution_dir().glob("*.yaml"))


def find_constitution(spec: str | None) -> Path:
    """A constitution path from a name (``default``) or a path to a YAML file."""
    spec = spec or "default"
    candidate = Path(spec).expanduser()
    if candidate.suffix in (".yaml", ".yml") or candidate.exists() or "/" in spec:
        if not candidate.is_file():
            raise ConstitutionError([Problem(spec, 1, "constitution file does not exist")])
        return candidate
    path = builtin_constitution_dir() / f"{spec}.yaml"
    if not path.is_file():
        names = ", ".join(available_constitutions()) or "none"
        raise ConstitutionError([Problem(spec, 1, f"no constitution named {spec!r} (available: {names})")])
    return path


def load_constitution(spec: str | None = None, principles_dir: str | Path | None = None) -> Constitution:
    """Load and validate a constitution by name or path; raise ConstitutionError on any problem."""
    path = find_constitution(spec)
    const, problems = check_constitution_file(path, Path(principles_dir) if principles_dir else None)
    if problems or const is None:
        raise ConstitutionError(problems)
    return const


# --------------------------------------------------------------------------- lint


def _yaml_files(directory: Path) -> list[Path]:
    return sorted(list(directory.glob("*.yaml")) + list(directory.glob("*.yml")))


def lint(paths: list[str | Path] | None = None) -> list[Problem]:
    """Check principle and constitution files and their cross-references.

    With no paths, checks rlaif's own ``principles/`` and ``constitution/`` folders. A
    folder is read as a folder of principles (checking duplicate ids) unless its files are
    constitutions; a constitution is checked against the principles it points to.
    """
    if not paths:
        paths = [builtin_principles_dir(), builtin_constitution_dir()]
    problems: set[Problem] = set()
    for raw_path in paths:
        path = Path(raw_path)
        if not path.exists():
            problems.add(Problem(str(path), 1, "no such file or folder"))
            continue
        files = _yaml_files(path) if path.is_dir() else [path]
        if path.is_dir() and not files:
            problems.add(Problem(str(path), 1, "no YAML files in this folder"))
        principle_files = []
        for f in files:
            doc = YamlDoc(f)
            if doc.error:
                problems.add(doc.error)
                continue
            if file_kind(doc) == "constitution":
                _, found = check_constitution_file(f)
                problems.update(found)
            else:
                principle_files.append(f)
        if path.is_dir() and principle_files:
            problems.update(load_principle_dir(path).problems)
        else:
            for f in principle_files:
                problems.update(check_principle_file(f).problems)
    return sorted(problems)
