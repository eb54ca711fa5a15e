"""The package layout's rules, read from the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bench.server import REPO


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, absolute names (`from bench import load` -> bench.load)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _modules(package: str) -> dict[str, set[str]]:
    return {
        f"{package}.{path.stem}": _imports(path)
        for path in sorted((REPO / package).glob("*.py"))
        if path.stem != "__init__"
    }


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("models", "service"), ("models", "bench"), ("service", "bench"), ("bench", "tests")],
)
def test_a_package_never_imports_what_depends_on_it(package: str, forbidden: str) -> None:
    for module, imported in _modules(package).items():
        offending = sorted(name for name in imported if name.split(".")[0] == forbidden)
        assert not offending, f"{module} imports {offending}"


def test_bench_modules_import_no_cycle() -> None:
    graph = {
        module: {name for name in imported if name in _modules("bench")}
        for module, imported in _modules("bench").items()
    }

    def visit(module: str, path: tuple[str, ...]) -> None:
        for imported in graph[module]:
            assert imported not in path, f"import cycle: {' -> '.join((*path, imported))}"
            visit(imported, (*path, imported))

    for module in graph:
        visit(module, (module,))
