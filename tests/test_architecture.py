"""Rules of the code's shape, checked statically (nothing is imported or run).

* No import cycles among the ``rlaif`` modules, counting imports inside function bodies too: a
  lazy import (the CLI's of heavy stages, for example) runs later but ties the modules together
  all the same, so it may point only downwards, like a top-level one. Imports under
  ``if TYPE_CHECKING:`` never run and do not count.
* No module imports a private name (``_name``) from another module.
* No module over ``MAX_LINES`` lines, except the ones listed in ``TOO_LONG`` (to be split;
  the list may only shrink: a listed module that got short enough fails the test too, so
  that it is taken off).
* Only the vLLM engine backends (``engine/vllm_*.py``) import ``vllm``, and outside ``rlaif.engine``
  nothing imports the vLLM backend itself: every stage, PPO included, gets its engine from
  ``rlaif.engine.create_engine``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "rlaif"
MAX_LINES = 400

# Modules longer than MAX_LINES today; split them and take them off this list.
TOO_LONG = {
    "rlaif.engine.openai_server",
}

# Private names imported across modules (importer, module, name); keep it empty.
PRIVATE_IMPORTS: set[tuple[str, str, str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, source: str | None = None):
    """Yield (target module, imported name or None, top_level, lineno) for each import of ``module``
    (read from its file, or from ``source``); imports under ``if TYPE_CHECKING:`` are left out."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8") if source is None else source)

    def walk(nodes, top):
        for node in nodes:
            if isinstance(node, ast.Import):
                for a in node.names:
                    yield a.name, None, top, node.lineno
            elif isinstance(node, ast.ImportFrom):
                target = _absolute(module, node)
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    yield (sub, None, top, node.lineno) if sub in MODULES else (target, a.name, top, node.lineno)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(ast.iter_child_nodes(node), False)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            else:
                yield from walk(ast.iter_child_nodes(node), top)

    yield from walk(tree.body, True)


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of ``graph`` meets, as ``[a, b, ..., a]``."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, []):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
    return cycles


def test_the_cycle_walk_finds_cycles_and_only_cycles():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"]}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": ["b", "c"], "b": ["c"], "c": []}) == []
    assert _cycles({"a": ["a"]}) == [["a", "a"]]


def _graph(imports=_imports) -> dict[str, list[str]]:
    """Each module -> the ``rlaif`` modules it imports, at the top level or inside a function."""
    return {m: sorted({t for t, _, _, _ in imports(m) if t in MODULES and t != m}) for m in MODULES}


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_a_function_level_import_back_is_a_cycle():
    """``commands.py`` imports ``engines.py``; an ``engines.py`` that imported ``commands.py`` back
    inside a function (as ``bon.py`` once did) closes a cycle; under ``TYPE_CHECKING`` it does not."""
    lazy = "def f():\n    from rlaif.cli.commands import cmd_label\n"
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rlaif.cli.commands import cmd_label\n"
    for source, cycle in ((lazy, True), (typing_only, False)):
        graph = _graph(lambda m: _imports(m, source if m == "rlaif.cli.engines" else None))
        assert any(set(c) == {"rlaif.cli.commands", "rlaif.cli.engines"} for c in _cycles(graph)) == cycle


def test_imports_are_read_right():
    """The import reader sees ``rlaif.cli``'s lazy import of ``rlaif.cli.bon`` as function-local, a class
    body's imports as top level, and leaves out imports under ``if TYPE_CHECKING:``."""
    found = {(t, top) for t, _, top, _ in _imports("rlaif.cli")}
    assert ("rlaif.cli.engine_flags", True) in found
    assert ("rlaif.cli.bon", False) in found
    source = ("from typing import TYPE_CHECKING\nimport rlaif.seeds\nif TYPE_CHECKING:\n    from rlaif.engine import base\n"
              "class C:\n    from rlaif.settings import SettingsError\n    def m(self):\n        from . import bon\n")
    found = {(t, top) for t, _, top, _ in _imports("rlaif.cli.engines", source)}
    assert found == {("typing", True), ("rlaif.seeds", True), ("rlaif.settings", True), ("rlaif.cli.bon", False)}


def test_no_private_names_imported_across_modules():
    found = set()
    for m in MODULES:
        for target, name, _, _ in _imports(m):
            if name and name.startswith("_") and not name.startswith("__") and target.startswith("rlaif") and target != m:
                found.add((m, target, name))
    assert found <= PRIVATE_IMPORTS, f"private names imported across modules: {sorted(found - PRIVATE_IMPORTS)}"
    assert PRIVATE_IMPORTS <= found, f"no longer imported, take off PRIVATE_IMPORTS: {sorted(PRIVATE_IMPORTS - found)}"


def test_module_size():
    sizes = {m: len(f.read_text(encoding="utf-8").splitlines()) for m, f in MODULES.items()}
    long = {m for m, n in sizes.items() if n > MAX_LINES}
    assert long <= TOO_LONG, f"modules over {MAX_LINES} lines: {sorted((m, sizes[m]) for m in long - TOO_LONG)}"
    assert TOO_LONG <= long, f"now short enough, take off TOO_LONG: {sorted(TOO_LONG - long)}"


def test_only_the_vllm_backends_import_vllm():
    found, direct = set(), set()
    for m in MODULES:
        targets = {t for t, _, _, _ in _imports(m)}
        if not m.startswith("rlaif.engine.vllm_") and any(t == "vllm" or t.startswith("vllm.") for t in targets):
            found.add(m)
        if not m.startswith("rlaif.engine") and any(t.startswith("rlaif.engine.vllm_") for t in targets):
            direct.add(m)
    assert not found, f"vllm imported outside engine/vllm_*.py: {sorted(found)}"
    assert not direct, f"the vLLM backend imported past rlaif.engine.create_engine: {sorted(direct)}"


def test_benchmark_and_script_imports_of_rlaif_resolve():
    """Benchmarks and scripts are not run by the suite, so a renamed or moved rlaif name would break them
    silently: every ``from rlaif... import name`` in them (at any depth) must name something that exists."""
    import importlib

    root = Path(__file__).resolve().parent.parent
    missing = []
    for path in sorted([*(root / "benchmarks").glob("*.py"), *(root / "scripts").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "rlaif"):
                continue
            try:
                module = importlib.import_module(node.module)
            except ImportError as exc:
                missing.append(f"{path.name}:{node.lineno}: {node.module} ({exc})")
                continue
            for alias in node.names:
                if not hasattr(module, alias.name):
                    try:
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        missing.append(f"{path.name}:{node.lineno}: {node.module}.{alias.name}")
    assert not missing, "\n".join(missing)
