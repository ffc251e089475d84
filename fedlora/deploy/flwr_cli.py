"""The operator's ``flwr`` CLI: its SuperLink connection and the run it submits.

``flwr run . CONNECTION --stream`` submits a run from the Flower App's folder to the SuperLink
named by a connection in ``$FLWR_HOME/config.toml``; :func:`write_connection` writes that
connection, :func:`submit_argv` the command.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedlora.deploy.host import flower_environment, flower_executable, flwr_home
from fedlora.errors import ConfigError
from fedlora.io import atomic_write_text
from fedlora.pki.layout import PkiLayout

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["CONFIG_FILE", "flower_app_dir", "run_flwr", "submit_argv", "write_connection"]

CONFIG_FILE = "config.toml"
"""The ``flwr`` CLI's configuration file in ``$FLWR_HOME``."""


def run_flwr(
    argv: Sequence[str], *, what: str, env: Mapping[str, str] | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run one ``flwr`` CLI command to its end, its output captured, no stdin.

    Raises
    ------
    ConfigError
        When it does not answer within ``timeout`` seconds (``what`` names it).
    """
    try:
        return subprocess.run(
            list(argv),
            env=flower_environment(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{what} did not answer in {timeout:.0f} s") from None


def flower_app_dir(app_dir: Path | str | None = None) -> Path:
    """The Flower App ``flwr run`` submits: ``app_dir``, by default this source checkout.

    Raises
    ------
    ConfigError
        When the folder holds no ``pyproject.toml`` with ``[tool.flwr.app]`` (an installed
        fedlora has no checkout beside it: pass the project folder).
    """
    folder = Path(app_dir) if app_dir is not None else Path(__file__).resolve().parents[2]
    folder = folder.expanduser().absolute()
    pyproject = folder / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text(encoding="utf-8"):
        raise ConfigError(
            f"{folder} is not a Flower App (no pyproject.toml with [tool.flwr.app]): pass "
            "app_dir, the fedlora project folder"
        )
    return folder


def submit_argv(
    connection: str, *, app_dir: Path | str = ".", run_config: str | None = None
) -> list[str]:
    """The ``flwr run APP CONNECTION --stream`` command that submits a run.

    Parameters
    ----------
    connection : str
        The SuperLink connection in ``$FLWR_HOME/config.toml`` (see :func:`write_connection`).
    app_dir : Path or str
        The Flower App (this project's folder).
    run_config : str, optional
        Run-config overrides, e.g. ``"rounds=3 sites=2 out='/srv/fedlora/runs'"``; ``out`` is
        a folder on the SuperLink host, where the ServerApp writes the run directory.
    """
    argv = [flower_executable("flwr"), "run", str(app_dir), connection, "--stream"]
    if run_config:
        argv += ["--run-config", run_config]
    return argv


def write_connection(
    name: str,
    address: str,
    *,
    pki_dir: Path | str | None = None,
    insecure: bool = False,
    make_default: bool = False,
    home: Path | None = None,
) -> Path:
    """Add or update ``[superlink.NAME]`` in the ``flwr`` CLI's ``config.toml``.

    The ``flwr`` CLI reads SuperLink connections from ``$FLWR_HOME/config.toml`` (default
    ``~/.flwr``): ``address`` and an absolute ``root-certificates`` path, or
    ``insecure = true``. Other connections and settings are kept; a new file starts from
    Flower's own default (which holds its ``local`` simulation connection).

    Parameters
    ----------
    name : str
        The connection name given to ``flwr run . NAME`` and ``flwr supernode register``.
    address : str
        The SuperLink's ``HOST:PORT``.
    pki_dir : Path or str, optional
        The folder with the federation's ``ca.pem`` (required unless ``insecure``).
    insecure : bool
        A plaintext connection (an ``--insecure`` SuperLink).
    make_default : bool
        Also make it ``[superlink] default``.
    home : Path, optional
        The Flower folder; default ``$FLWR_HOME`` or ``~/.flwr``.

    Returns
    -------
    Path
        The configuration file written.

    Raises
    ------
    ConfigError
        For a bad name or address, a missing ``ca.pem``, or an unreadable config file.
    """
    import tomli_w
    from flwr.cli.constant import DEFAULT_FLOWER_CONFIG_TOML

    if not name or not all(char.isalnum() or char in "-_" for char in name):
        raise ConfigError(f"connection name must be letters, digits, '-' or '_', got {name!r}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "/" in address:
        raise ConfigError(f"--address must be HOST:PORT without a URL prefix, got {address!r}")
    entry: dict[str, Any] = {"address": address}
    if insecure:
        entry["insecure"] = True
    else:
        if pki_dir is None:
            raise ConfigError("a TLS connection needs --pki DIR (the folder with ca.pem)")
        ca = PkiLayout(Path(pki_dir).expanduser().absolute()).ca_cert
        if not ca.is_file():
            raise ConfigError(f"{ca} not found: copy the federation's ca.pem there")
        entry["root-certificates"] = str(ca)
    path = (home or flwr_home()) / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else DEFAULT_FLOWER_CONFIG_TOML
        document = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the Flower configuration {path}: {exc}") from None
    superlink = document.setdefault("superlink", {})
    if not isinstance(superlink, dict):
        raise ConfigError(f"{path}: [superlink] is not a table")
    superlink[name] = entry
    if make_default:
        superlink["default"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, tomli_w.dumps(document))
    return path
