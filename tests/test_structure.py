"""The package's shape: no import cycle among ntire's own modules, every module importable."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ntire"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> set[str]:
    """ntire modules `name` imports anywhere in its body (deferred imports count: a cycle through
    a function-level import is still a cycle in the design), and so do TYPE_CHECKING blocks: a type
    that one module takes from another is a dependency too (training/export <-> validate was one)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != name}


def import_graph() -> dict[str, set[str]]:
    # Only explicit imports count: a package's __init__ re-exporting its modules is no cycle,
    # but a module importing from its own package's __init__ is one, and is seen.
    return {name: imports_of(name, path) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = walk(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = walk(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_among_ntire_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    # Negative control: the old train.py <-> commands/train.py pair is a cycle.
    graph = {"ntire.train": {"ntire.commands.train"}, "ntire.commands.train": {"ntire.train"}, "ntire.x": set()}
    assert find_cycle(graph) == ["ntire.commands.train", "ntire.train", "ntire.commands.train"]


def test_imports_of_sees_deferred_and_relative_imports(tmp_path):
    graph = import_graph()
    assert "ntire.training.fit" in graph["ntire.train"]  # a function-level import
    assert "ntire.config" in graph["ntire.options"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)
