"""Flower's commands on this host: where they are, their environment, their folder, free ports.

Every ``fedlora deploy`` step runs a Flower command (``flwr``, ``flower-superlink``,
``flower-supernode``) or a fedlora process that calls Flower's entry point; these helpers find
the command beside this Python, give it an environment that never installs runtime
dependencies, and pick ports.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedlora.errors import ConfigError

__all__ = [
    "check_port",
    "command_line",
    "ephemeral_low",
    "flower_environment",
    "flower_executable",
    "flwr_home",
    "free_port",
    "free_stable_port",
    "port_is_free",
    "serves",
]


def flower_executable(name: str) -> str:
    """The path of a Flower command (``flwr``, ``flower-superlink``, ...).

    The one installed beside this Python wins (the project's virtual environment), then
    ``PATH``.

    Raises
    ------
    ConfigError
        When the command is not installed.
    """
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} not found: install fedlora's dependencies (flwr)")
    return found


def flower_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower processes: no runtime dependency installs, venv on PATH.

    ``flwr`` and ``flower-superlink`` start further Flower commands by name, so the
    directory of this Python goes first on ``PATH``.
    """
    env = dict(os.environ if base is None else base)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    bin_dir = str(Path(sys.executable).parent)
    parts = [bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir)]
    env["PATH"] = os.pathsep.join(parts)
    return env


def flwr_home(env: Mapping[str, str] | None = None) -> Path:
    """Flower's configuration folder: ``$FLWR_HOME``, else ``~/.flwr`` (as ``flwr`` reads it)."""
    value = (os.environ if env is None else env).get("FLWR_HOME")
    return Path(value).expanduser() if value else Path.home() / ".flwr"


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (a check, not a reservation)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on ``host`` (another process may take it before use)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_EPHEMERAL_LOW_DEFAULT = 32768
"""Linux's default start of the ports it hands out to outgoing connections."""


def ephemeral_low() -> int:
    """The lowest port this host hands out to outgoing connections (Linux), else 32768."""
    try:
        low = int(_EPHEMERAL_RANGE_FILE.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return _EPHEMERAL_LOW_DEFAULT
    return low if 1024 < low <= 65535 else _EPHEMERAL_LOW_DEFAULT


def free_stable_port(host: str = "127.0.0.1", start: int = 9095) -> int:
    """A free port at or above ``start`` and below the ephemeral range, else :func:`free_port`.

    A port the OS picks (:func:`free_port`) is an ephemeral one: until the server binds it, any
    outgoing connection on the host may be given it. A free port below that range is taken only
    by a program that asks for it by number.
    """
    for port in range(max(start, 1025), ephemeral_low()):
        if port_is_free(host, port):
            return port
    return free_port(host)


def serves(host: str, port: int, cafile: Path | None = None) -> bool:
    """Whether ``host:port`` accepts connections (with ``cafile``: a verified TLS handshake)."""
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            if cafile is None:
                return True
            context = ssl.create_default_context(cafile=str(cafile))
            with context.wrap_socket(raw, server_hostname=host):
                return True
    except OSError:
        return False


def check_port(port: int, what: str) -> None:
    """Refuse a TCP port outside 1-65535; ``what`` names it in the message.

    Raises
    ------
    ConfigError
        For a port out of range.
    """
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what} must be 1-65535, got {port}")


def command_line(argv: Sequence[str]) -> str:
    """The shell-quoted form of ``argv``, as ``fedlora deploy`` prints it before running it."""
    return shlex.join(argv)
