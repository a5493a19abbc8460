"""The house rules that keep cprec readable: small modules, functions and classes, a flat top
level, and imports that go one way."""

from __future__ import annotations

import ast
from pathlib import Path

LIMIT = 120
MODULE_LIMIT = 400
TOP_LEVEL_LIMIT = 10
PACKAGE = Path(__file__).resolve().parent.parent / "cprec"


def test_no_function_or_class_is_longer_than_the_limit() -> None:
    """Every def and class in cprec/ spans at most 120 lines (docstrings included)."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                span = node.end_lineno - node.lineno + 1
                if span > LIMIT:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({span})")
    assert long == []


def test_no_module_is_longer_than_the_limit_and_the_top_level_stays_small() -> None:
    long = [f"{p.relative_to(PACKAGE.parent)} ({n})" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MODULE_LIMIT]
    assert long == []
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= TOP_LEVEL_LIMIT, top


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The cprec modules ``path`` imports anywhere in its body (function-level imports too:
    a lazy import is still a dependency), except under ``if TYPE_CHECKING``."""
    name, found = module_name(path), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def add(target: str) -> None:
        while target and target not in modules:  # `from pkg import name`: name is no module
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from .x import y` inside `package`
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]).strip(".")
            if base.split(".")[0] == "cprec":
                for alias in node.names:
                    add(f"{base}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path of module names, or [] when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (cycle := walk(start)):
            return cycle
    return []


def test_cprec_has_no_import_cycle() -> None:
    """Imports go one way: no module reaches itself through other modules' imports."""
    cycle = find_cycle(import_graph())
    assert cycle == [], " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_and_the_import_walk_sees_lazy_imports() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "cprec.engine.trainer" in graph["cprec.cli.train"]  # imported inside a function
    assert "cprec.engine.runs" in graph["cprec.engine.checkpoint"]  # `from cprec.engine import runs`


def test_every_subpackage_is_installed() -> None:
    """pyproject.toml lists packages by hand: a subpackage missing there imports from a
    checkout (editable install) but not from a wheel."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    root = PACKAGE.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set()
