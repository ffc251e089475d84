"""One import name: an installed fedlora adds ``fedlora`` to site-packages, nothing else."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # flwr depends on tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("server", "clients", "strategies", "simulations")
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "runs",
    ".flwr-home",
    ".typecheck",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
)


def source_copy(tmp_path: Path) -> Path:
    """The checkout's sources in ``tmp_path``: setuptools builds in the tree it is given."""
    return Path(shutil.copytree(ROOT, tmp_path / "src", ignore=NOT_SOURCE))


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]


def test_every_package_folder_installs_under_fedlora():
    folders = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.glob("fedlora/**/__init__.py")
    }
    for role in ROLES:
        folders |= {
            "fedlora." + ".".join(p.parent.relative_to(ROOT).parts)
            for p in (ROOT / role).rglob("__init__.py")
        }
    assert set(_setuptools()["packages"]) == folders


def test_the_role_folders_map_into_the_one_name():
    assert _setuptools()["package-dir"] == {
        "fedlora": "fedlora",
        **{f"fedlora.{role}": role for role in ROLES},
    }


@pytest.mark.slow
def test_the_wheel_holds_one_top_level_name(tmp_path: Path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(source_copy(tmp_path)),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("fedlora-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
        names = set(archive.namelist())
    assert {name for name in top if not name.endswith(".dist-info")} == {"fedlora"}
    for module in (
        "fedlora/server/app.py",
        "fedlora/clients/app.py",
        "fedlora/strategies/fedavg.py",
        "fedlora/simulations/runner.py",
        "fedlora/assets/tiny_tokenizer.json",
    ):
        assert module in names


@pytest.mark.slow
def test_an_installed_copy_imports_its_roles_only_as_fedlora(tmp_path: Path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source_copy(tmp_path)),
        ],
        check=True,
        cwd=tmp_path,
    )
    installed = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")}
    assert installed - {"bin"} == {"fedlora"}  # bin/: the console script
    probe = (
        "import importlib.util, sys\n"
        "import fedlora.server.app, fedlora.clients.app\n"
        "assert fedlora.server.app.__file__.startswith(sys.argv[1]), fedlora.server.app.__file__\n"
        "assert importlib.util.find_spec('server') is None\n"
        "assert importlib.util.find_spec('clients') is None\n"
    )
    # From an empty folder, the installed copy first on the path and no checkout on it.
    env = {**os.environ, "PYTHONPATH": str(target)}
    subprocess.run(
        [sys.executable, "-c", probe, str(target)], check=True, cwd=tmp_path / "site", env=env
    )
