"""Type-check fedlora as it installs: ``python scripts/typecheck.py`` (``make lint`` runs it).

The role folders at the repository's top level install as ``fedlora.server``,
``fedlora.clients``, ``fedlora.strategies`` and ``fedlora.simulations`` (setuptools
``package-dir``), a mapping mypy cannot read. This script lays the installed layout out of
symbolic links in ``.typecheck/fedlora`` (the core's entries and the four role folders, nothing
copied) and runs ``mypy -p fedlora`` there with the project's mypy settings, so every import
is checked under the name it has when installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROLES = ("server", "clients", "strategies", "simulations")


def lay_out(tree: Path) -> Path:
    """Build ``tree/fedlora`` from links to the checkout and return ``tree``."""
    shutil.rmtree(tree, ignore_errors=True)
    package = tree / "fedlora"
    package.mkdir(parents=True)
    for entry in (ROOT / "fedlora").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for role in ROLES:
        (package / role).symlink_to(ROOT / role, target_is_directory=True)
    return tree


def main() -> int:
    """Run mypy on the laid-out package; its exit status."""
    tree = lay_out(ROOT / ".typecheck")
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "-p",
        "fedlora",
    ]
    return subprocess.run(command, cwd=tree, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
