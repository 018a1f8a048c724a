"""The layout of cai_aug.poisson: it imports nothing else of cai_aug, and its modules form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "cai_aug" / "poisson"
MODULES = sorted(p for p in PACKAGE.glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (top level and inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def package_imports(path: Path) -> set[str]:
    """The modules of cai_aug.poisson that ``path`` imports, by file stem."""
    stems = {p.stem for p in MODULES}
    found = set()
    for name in imported_modules(path):
        parts = name.split(".")
        if parts[:2] == ["cai_aug", "poisson"] and len(parts) > 2 and parts[2] in stems:
            found.add(parts[2])
    return found - {path.stem}


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_module_imports_nothing_of_cai_aug_outside_the_package(path: Path) -> None:
    outside = {n for n in imported_modules(path) if n.startswith("cai_aug") and not n.startswith("cai_aug.poisson")}
    assert not outside, outside


def test_modules_import_each_other_without_a_cycle() -> None:
    graph = {p.stem: package_imports(p) for p in MODULES}
    # __init__ and the compatibility alias solver re-export the entry points: they sit on top
    order: list[str] = []
    visiting: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        if node in order:
            return
        assert node not in visiting, f"import cycle: {' -> '.join((*path, node))}"
        visiting.add(node)
        for dep in sorted(graph[node]):
            visit(dep, (*path, node))
        visiting.discard(node)
        order.append(node)

    for node in sorted(graph):
        visit(node, ())
    assert "blend" not in graph["cupy_backend"] and "pcg" not in graph["cupy_backend"]


def test_the_cuda_kernels_share_one_neighbour_sum() -> None:
    kernels = PACKAGE.parents[1] / "kernels"
    assert "neighbour_sum(" in (kernels / "common.cuh").read_text()
    for cu in kernels.glob("*.cu"):
        assert "T neighbour_sum(" not in cu.read_text(), f"{cu.name} defines its own neighbour_sum"
