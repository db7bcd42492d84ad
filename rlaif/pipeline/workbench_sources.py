"""What ``rlaif try`` tries: one principle file (as it is now, or as it was at a git revision)
inside its constitution, and the prompts to try it on.

A *version* is the constitution loaded exactly as ``rlaif generate`` would load it -- its system
prompt and few-shot block, with the principle's own worked examples taken from the file being
tried -- narrowed to that one principle, so that every round critiques and revises with it and
the judge asks its comparison question. A principle the constitution does not select is tried
with the constitution's demonstrations plus its own examples.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from rlaif.constitution import (
    Constitution, Principle, Problem, builtin_principles_dir, check_constitution_file, check_principle_file,
    find_constitution, lint, load_principle_dir, principles_dir_for,
)
from rlaif.data import textio
from rlaif.data.prompts import read_prompts
from rlaif.data.records import PromptRecord

TRY_PROMPTS = "try-prompts.jsonl"
"""The shipped prompt set of ``rlaif try`` (``prompts/try-prompts.jsonl``): prompts with a ``tag``."""


class WorkbenchError(ValueError):
    """An input ``rlaif try`` cannot use; the message says which and why."""


class LintFailed(WorkbenchError):
    """The principle (or its constitution) has problems; ``problems`` lists them as ``rlaif lint`` does."""

    def __init__(self, what: str, problems: list[Problem]):
        self.problems = problems
        super().__init__(f"{what} does not pass rlaif lint ({len(problems)} problem(s)):\n" + "\n".join(map(str, problems)))


@dataclass(frozen=True)
class Version:
    """One version of the principle: ``label`` names it ("working copy" or the revision)."""

    label: str
    source: str
    """Where the text came from: the file's path, or ``REV:path/in/repo``."""
    const: Constitution
    """The constitution narrowed to this principle (weights (1.0,))."""
    text: str

    @property
    def principle(self) -> Principle:
        return self.const.principles[0]


def constitution_paths(constitution: str | None, principles_dir: str | Path | None) -> tuple[Path, Path]:
    """(constitution file, principles folder) as ``rlaif generate`` would resolve them."""
    from rlaif.constitution import ConstitutionError

    try:
        path = find_constitution(constitution)
    except ConstitutionError as exc:
        raise WorkbenchError(str(exc)) from None
    if principles_dir:
        return path, Path(principles_dir)
    try:
        data = yaml.safe_load(textio.read_text(path))
    except (ValueError, yaml.YAMLError):
        data = None  # reported by the lint that follows
    return path, principles_dir_for(path, data if isinstance(data, dict) else None)


def find_principle_file(principle_id: str, principles_dir: Path) -> Path:
    """The file of ``principle_id`` in the folder (``<id>.yaml`` or ``.yml``, or any file with that id)."""
    for suffix in (".yaml", ".yml"):
        candidate = principles_dir / f"{principle_id}{suffix}"
        if candidate.is_file():
            return candidate
    pset = load_principle_dir(principles_dir)
    if principle_id in pset.principles:
        return Path(pset.principles[principle_id].path)
    import difflib

    known = sorted(pset.principles) or sorted(p.stem for p in principles_dir.glob("*.y*ml"))
    hint = difflib.get_close_matches(principle_id, known, n=1, cutoff=0.6)
    raise WorkbenchError(f"no principle {principle_id!r} in {principles_dir}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; principles there: {', '.join(known) or 'none'}")


def narrow(const: Constitution, principle_file: Path) -> Constitution:
    """The constitution with only the principle of ``principle_file`` (its examples in the few-shot block)."""
    checked = check_principle_file(principle_file)
    if checked.problems or checked.principle is None:
        raise LintFailed(str(principle_file), checked.problems)
    p = checked.principle
    selected = next((q for q in const.principles if q.id == p.id), None)
    demos = const.demonstrations if selected is not None else (*const.demonstrations, *p.examples)
    return dataclasses.replace(const, principles=(selected or p,), weights=(1.0,), demonstrations=tuple(demos))


def current_version(principle_id: str, constitution: str | None = None, principles_dir: str | Path | None = None) -> Version:
    """The principle as the working copy holds it; lint first, problems raise :class:`LintFailed`."""
    const_path, pdir = constitution_paths(constitution, principles_dir)
    if not pdir.is_dir():
        raise WorkbenchError(f"principles folder {pdir} does not exist")
    pfile = find_principle_file(principle_id, pdir)
    problems = lint([pfile])
    if problems:
        raise LintFailed(str(pfile), problems)
    const, problems = check_constitution_file(const_path, pdir)
    if problems or const is None:
        raise LintFailed(f"constitution {const_path} with principles {pdir}", problems)
    return Version("working copy", str(pfile), narrow(const, pfile), textio.read_text(pfile))


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise WorkbenchError("--against needs git, and git is not installed") from None


def file_at_revision(path: Path, rev: str) -> tuple[bytes, str, str]:
    """(content, commit, path in the repository) of ``path`` at git revision ``rev``, read with
    ``git show COMMIT:PATH`` from the repository that holds the file."""
    if not rev or rev.startswith("-"):
        raise WorkbenchError(f"--against needs a git revision (a commit, branch or tag), got {rev!r}")
    folder = path.resolve().parent
    top = _git(["rev-parse", "--show-toplevel"], folder)
    if top.returncode != 0:
        raise WorkbenchError(f"--against {rev}: {folder} is not inside a git repository")
    root = Path(top.stdout.decode().strip()).resolve()
    found = _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], root)
    if found.returncode != 0:
        raise WorkbenchError(f"--against {rev}: no such revision in the git repository {root}")
    commit = found.stdout.decode().strip()
    rel = path.resolve().relative_to(root).as_posix()
    shown = _git(["show", f"{commit}:{rel}"], root)
    if shown.returncode != 0:
        raise WorkbenchError(f"--against {rev}: {rel} does not exist at that revision ({commit[:12]})")
    return shown.stdout, commit, rel


def version_at(current: Version, constitution: str | None, principles_dir: str | Path | None, rev: str) -> Version:
    """The principle as it was at ``rev``, in today's constitution and principles folder (only the
    one file is taken from the past); lint first, problems raise :class:`LintFailed`."""
    const_path, pdir = constitution_paths(constitution, principles_dir)
    pfile = Path(current.source)
    content, commit, rel = file_at_revision(pfile, rev)
    label = f"{rev}" if rev == commit[: len(rev)] else f"{rev} ({commit[:10]})"
    with tempfile.TemporaryDirectory(prefix="rlaif-try-") as tmp:
        tdir = Path(tmp) / "principles"
        shutil.copytree(pdir, tdir)
        (tdir / pfile.name).write_bytes(content)
        shown = f"{rev}:{rel}"

        def where(problems: list[Problem]) -> list[Problem]:
            return [dataclasses.replace(p, file=p.file.replace(str(tdir / pfile.name), shown).replace(str(tdir), str(pdir)))
                    for p in problems]

        problems = lint([tdir / pfile.name])
        if problems:
            raise LintFailed(shown, where(problems))
        checked = check_principle_file(tdir / pfile.name)
        if checked.principle is not None and checked.principle.id != current.principle.id:
            raise WorkbenchError(f"{shown} holds principle {checked.principle.id!r}, not {current.principle.id!r}")
        const, problems = check_constitution_file(const_path, tdir)
        if problems or const is None:
            raise LintFailed(f"constitution {const_path} with {shown}", where(problems))
        narrowed = narrow(const, tdir / pfile.name)
        text = textio.read_text(tdir / pfile.name)
    return Version(label, shown, narrowed, text)


def try_prompts_path() -> Path:
    return builtin_principles_dir().parent / "prompts" / TRY_PROMPTS


def default_prompts(principle: Principle, n: int, path: Path | None = None) -> tuple[list[PromptRecord], str]:
    """Up to ``n`` prompts of the principle's own tags from the shipped set, taken in turn from each
    tag (in the principle's order), and a line saying which; a principle whose tags have no prompts
    there gets a mix of every tag."""
    rows = read_prompts(path or try_prompts_path(), keep=("tag",))
    by_tag: dict[str, list[PromptRecord]] = {}
    for r in rows:
        by_tag.setdefault(str(r.meta.get("tag", "")), []).append(r)
    tags = [t for t in principle.tags if by_tag.get(t)]
    note = f"the shipped ones of the tags {', '.join(tags)} ({path or 'prompts/' + TRY_PROMPTS})"
    if not tags:
        tags = sorted(by_tag)
        note = f"a mix of every tag (no shipped prompt has the tags {', '.join(principle.tags)})"
    picked: list[PromptRecord] = []
    queues = {t: list(by_tag[t]) for t in tags}
    seen: set[str] = set()
    while len(picked) < n and any(queues.values()):
        for t in tags:
            while queues[t]:
                r = queues[t].pop(0)
                if r.id not in seen:
                    seen.add(r.id)
                    picked.append(r)
                    break
            if len(picked) >= n:
                break
    return picked, note
