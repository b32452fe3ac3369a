"""lrtune's modules form a stack: no module imports one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lrtune"


def imported_lrtune_modules(path: Path) -> set[str]:
    """The lrtune modules ``path`` imports, at the top or inside functions
    (``from lrtune.cli import jobs`` imports the module ``lrtune.cli.jobs``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lrtune."):
            folder = PACKAGE.parent.joinpath(*node.module.split("."))
            submodules = {a.name for a in node.names if (folder / f"{a.name}.py").exists()}
            found |= {f"{node.module}.{name}" for name in submodules}
            if len(submodules) < len(node.names):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("lrtune.")}
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = {
        f"lrtune.{path.stem}": imported_lrtune_modules(path)
        for path in PACKAGE.glob("*.py")
        if path.stem != "__init__"
    }
    for path in (PACKAGE / "cli").glob("*.py"):  # the command line's package, its __init__ too
        name = "lrtune.cli" if path.stem == "__init__" else f"lrtune.cli.{path.stem}"
        graph[name] = imported_lrtune_modules(path)
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError(
                "import cycle: " + " -> ".join([*path[path.index(module) :], module])
            )
        if module in done:
            return
        for dependency in sorted(graph.get(module, ())):
            visit(dependency, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
