"""The layout of streams/ (docs/architecture.md): who may import whom, and no import circles.

Every import counts, also one inside a function: a circle closed by a lazy import is
still a circle (two modules that cannot be understood or changed one without the other).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

# Which part of streams/ may import which; segments/ (the core) is open to all of them.
ALLOWED = {
    "settings": set(),
    "log_rate": set(),
    "logs": {"settings", "log_rate"},
    "kafka": {"settings"},
    "worker": {"kafka", "settings", "log_rate"},
    "serving": {"kafka", "settings", "log_rate"},
    "cli": {"worker", "serving", "kafka", "settings", "log_rate", "logs"},
    "__main__": {"cli"},
}
# Command-line libraries belong to the command line only.
CLI_ONLY = {"click", "rich"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / package).rglob("*.py"))}


def imported_names(path: Path) -> Iterator[str]:
    """Every module name an import statement anywhere in the file names."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def import_graph(package: str) -> dict[str, set[str]]:
    """module -> the modules of `package` it imports (a `from p import m` names p.m)."""
    known = modules(package)
    return {
        name: {imported for imported in imported_names(path) if imported in known} - {name}
        for name, path in known.items()
    }


def part_of(module: str) -> str:
    """streams.worker.app -> worker; streams.settings -> settings."""
    return module.split(".")[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
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


def test_the_cycle_finder_finds_a_circle_closed_by_a_lazy_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_streams_takes_part_in_an_import_circle() -> None:
    assert cycles(import_graph("streams")) == []


def test_each_part_of_streams_imports_only_the_parts_below_it() -> None:
    graph = import_graph("streams")
    assert {part_of(module) for module in graph if module != "streams"} == set(ALLOWED)
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module != "streams"
        for target in targets
        if target != "streams"
        and part_of(target) != part_of(module)
        and part_of(target) not in ALLOWED[part_of(module)]
    )
    assert offenders == []


def test_command_line_code_lives_in_streams_cli_only() -> None:
    offenders = sorted(
        f"{name}: {imported}"
        for package in ("segments", "streams")
        for name, path in modules(package).items()
        if not name.startswith("streams.cli")
        for imported in imported_names(path)
        if imported.split(".")[0] in CLI_ONLY
    )
    assert offenders == []
