"""The house rules of docs/architecture.md, checked on the code's own imports.

Imports flow down: the CLI and ``fedlora.testing`` (top floor) -> the simulation harness ->
server / clients -> strategies -> the shared core; the scenario data sit below the roles that
use them. Nothing in the core imports a role, and no modules import each other in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("server", "clients", "strategies", "simulations")
TOP_FLOOR = ("fedlora.cli", "fedlora.testing")
HARNESS = ("fedlora.simulations.runner", "fedlora.simulations.inprocess_grid")
DATA_TABLES = ("_vocab.py", "_facts.py")
MAX_LINES = 400


def module_files() -> dict[str, Path]:
    """Every module of the installed package, by its dotted name."""
    modules = {}
    for path in sorted((ROOT / "fedlora").rglob("*.py")):
        modules[_dotted(("fedlora", *path.relative_to(ROOT / "fedlora").parts))] = path
    for role in ROLES:
        for path in sorted((ROOT / role).rglob("*.py")):
            modules[_dotted(("fedlora", *path.relative_to(ROOT).parts))] = path
    return modules


def _dotted(parts: tuple[str, ...]) -> str:
    name = ".".join(parts)[: -len(".py")]
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports at run time (at any depth), resolved to modules."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue  # annotations only: no import at run time, no arrow
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


MODULES = module_files()
GRAPH = {name: imports_of(name, path, set(MODULES)) for name, path in MODULES.items()}


def _role(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROLES else None


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_core_imports_no_role():
    offences = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if _role(name) is None and not _in(name, TOP_FLOOR)
        for target in targets
        if _role(target) is not None
    ]
    assert not offences


@pytest.mark.parametrize(
    ("role", "may_not_import"),
    [
        ("strategies", ("fedlora.server", "fedlora.clients", "fedlora.simulations")),
        ("clients", ("fedlora.server", "fedlora.strategies", *HARNESS)),
        ("server", ("fedlora.clients", *HARNESS)),
    ],
)
def test_roles_import_only_downwards(role, may_not_import):
    offences = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if _role(name) == role
        for target in targets
        if _in(target, may_not_import)
    ]
    assert not offences


def test_scenario_data_sit_below_the_roles():
    offences = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if _role(name) == "simulations" and not _in(name, HARNESS)
        for target in targets
        if _role(target) in {"server", "clients", "strategies"} or _in(target, HARNESS)
    ]
    assert not offences


def test_no_import_circles():
    circles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    assert not circles


def test_modules_are_small():
    large = {
        name: lines
        for name, path in MODULES.items()
        if not path.name.endswith(DATA_TABLES)
        and (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not large


def test_the_rules_see_the_whole_house():
    # A check that reads nothing passes vacuously: make sure the graph is the real one.
    assert "fedlora.server.federation" in GRAPH
    assert "fedlora.strategies" in GRAPH["fedlora.server.federation"] or any(
        target.startswith("fedlora.strategies") for target in GRAPH["fedlora.server.federation"]
    )
    assert any(t.startswith("fedlora.privacy") for t in GRAPH["fedlora.clients.private_round"])
