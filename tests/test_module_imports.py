"""lrtune's modules form a stack: no module imports one that imports it back.

Every module counts: the library (``lrtune/``), the service (``api/``, installed as
``lrtune.api``) and the workers (``workers/``, ``lrtune.workers``), packages' ``__init__``
included, and every import in them: at the top, inside functions, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "lrtune": ROOT / "lrtune",
    "lrtune.api": ROOT / "api",
    "lrtune.workers": ROOT / "workers",
}
NOT_IMPORTED = ("migrations",)  # alembic's revision scripts, run by alembic alone


def module_files() -> dict[str, Path]:
    """Every module's dotted name and file (a package's name for its ``__init__.py``)."""
    modules = {}
    for prefix, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if any(part in NOT_IMPORTED for part in parts):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((prefix, *parts))] = path
    return modules


MODULES = module_files()


def imported_modules(path: Path) -> set[str]:
    """The lrtune modules ``path`` imports (``from lrtune.cli import jobs`` imports the module
    ``lrtune.cli.jobs``; ``from lrtune.jobs import JobStore`` the package ``lrtune.jobs``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not node.module.startswith("lrtune"):
                continue
            submodules = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            found |= submodules
            if len(submodules) < len(node.names):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in MODULES}
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A path that leads from a module back to itself, or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for dependency in sorted(graph.get(module, ())):
            cycle = visit(dependency, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def test_every_package_is_covered() -> None:
    for package in ("lrtune.search", "lrtune.jobs.store", "lrtune.api.routes.jobs"):
        assert package in MODULES
    assert "lrtune.workers.loop" in MODULES and "lrtune.cli.parser" in MODULES


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = {name: imported_modules(path) - {name} for name, path in MODULES.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ],
)
def test_a_cycle_is_found(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle
