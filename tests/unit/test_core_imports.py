"""The shared core imports no role (issue 15): only the top floor, cli and testing, may."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("server", "clients", "strategies", "simulations")
TOP_FLOOR = ("cli", "testing")
"""``fedlora.cli`` and ``fedlora.testing`` sit above the roles and may import them."""


def _core_modules() -> list[Path]:
    core = ROOT / "fedlora"
    return sorted(
        path
        for path in core.rglob("*.py")
        if path.relative_to(core).parts[0].removesuffix(".py") not in TOP_FLOOR
    )


def _imported(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("path", _core_modules(), ids=lambda path: str(path.relative_to(ROOT)))
def test_a_core_module_imports_no_role(path: Path) -> None:
    imported = _imported(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))

    roles = [
        name
        for name in imported
        if any(name == f"fedlora.{role}" or name.startswith(f"fedlora.{role}.") for role in ROLES)
    ]

    assert roles == []
