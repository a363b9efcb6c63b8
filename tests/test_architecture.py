"""The house's shape: no import circles, no upward imports, no oversized modules.

The graph is read from the source, imports inside functions included: a lazy import
still ties two modules together, it only hides the tie from a quick reading.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# adapters/ ships as guard.adapters (guard/adapters is a symlink to it).
PACKAGES = {"guard": ROOT / "guard", "guard.adapters": ROOT / "adapters"}
MAX_LINES = 600

# (importer prefix, imported prefix): the lower layer never reaches up.
UPWARD = [
    ("guard.core", "guard.checking"),
    ("guard.core", "guard.comparing"),
    ("guard.core", "guard.engines"),
    ("guard.core", "guard.stores"),
    ("guard.core", "guard.adapters"),
    ("guard.core", "guard.reindex"),
    ("guard.core", "guard.monitor"),
    ("guard.core", "guard.cache"),
    ("guard.engines", "guard.checking"),
    ("guard.engines", "guard.comparing"),
    ("guard.engines", "guard.reindex"),
    ("guard.engines", "guard.monitor"),
    ("guard.engines", "guard.models"),
    ("guard.engines", "guard.stores"),
    ("guard.adapters", "guard.checking"),
    ("guard.adapters", "guard.engines"),
    ("guard.adapters", "guard.reindex"),
    ("guard.adapters", "guard.monitor"),
    ("guard.config", "guard.monitor"),
    ("guard.config", "guard.reindex"),
    ("guard.checking", "guard.comparing"),
    ("guard.checking", "guard.reindex"),
    ("guard.checking", "guard.monitor"),
    ("guard.reindex", "guard.monitor"),
    ("guard.reindex", "guard.comparing"),
]
# Only the CLI and the Python API sit above every command.
TOP = ("guard.cli", "guard.api", "guard.reindex.cli", "guard.monitor.cli")


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if package == "guard" and "adapters" in path.relative_to(folder).parts:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every guard module ``name`` imports, at any depth of its code."""
    is_package = path.name == "__init__.py"
    wanted: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            wanted.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                wanted.add(submodule if submodule in MODULES else base)
    return {target for target in wanted if target in MODULES and target != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_imports_inside_functions() -> None:
    """The CLI imports the API only inside its commands: the graph must still see it."""
    assert "guard.api" in GRAPH["guard.cli"]


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]


def test_no_import_circles() -> None:
    assert _circles(GRAPH) == []


@pytest.mark.parametrize(("lower", "upper"), UPWARD)
def test_no_upward_import(lower: str, upper: str) -> None:
    reaching_up = sorted(
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if name == lower or name.startswith(lower + ".")
        for target in targets
        if target == upper or target.startswith(upper + ".")
    )
    assert reaching_up == []


def test_nothing_imports_the_command_line_or_the_api() -> None:
    importers = sorted(
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if target in TOP and name not in TOP and name != "guard"
    )
    assert importers == []


def test_no_module_is_oversized() -> None:
    oversized = {
        name: lines
        for name, path in MODULES.items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert oversized == {}
