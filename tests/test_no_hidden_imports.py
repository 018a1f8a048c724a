"""Every import of a cai_aug module is a plain import statement, which import-linter checks.

``importlib.import_module`` or ``__import__`` of a project module hides a dependency from the layer
contracts; only the optional third-party stacks of CDM are imported by name (``cdm/_deps.require``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cai_aug"
SOURCES = sorted(PACKAGE.rglob("*.py"))
# The one function that imports modules by name, and the names it may be given.
REQUIRE = ("cdm/_deps.py", {"diffusers", "transformers", "safetensors"})


def _dynamic_imports(tree: ast.AST) -> list[ast.Call]:
    """Calls of ``import_module`` (however reached) and of ``__import__`` in ``tree``."""
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__"):
                calls.append(node)
    return calls


@pytest.mark.parametrize("path", SOURCES, ids=[p.relative_to(PACKAGE).as_posix() for p in SOURCES])
def test_no_module_imports_by_name(path: Path) -> None:
    calls = _dynamic_imports(ast.parse(path.read_text()))
    if path.relative_to(PACKAGE).as_posix() == REQUIRE[0]:
        return  # checked through its callers below
    assert not calls, f"{path.name}:{calls[0].lineno} imports a module by name"


def test_the_cdm_stack_is_the_only_thing_imported_by_name() -> None:
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        if path.relative_to(PACKAGE).as_posix() == REQUIRE[0]:
            strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            assert not any(s.startswith("cai_aug") for s in strings)
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "require":
                assert node.args and getattr(node.args[0], "value", None) in REQUIRE[1], f"{path.name}:{node.lineno}"


def test_the_check_finds_a_hidden_import() -> None:
    tree = ast.parse("import importlib\nimportlib.import_module('cai_aug.frontends.x')\n__import__('cai_aug')")
    assert len(_dynamic_imports(tree)) == 2
