"""The SuperNode's local Runtime API port: the preferred one, or a free one, never a shared one.

``flower-supernode`` binds its Runtime API (``--host``/``--port``, default 9094) seconds after
it starts, once Flower is imported. Two nodes started together on one host both found 9094
free and both took it; the second died with ``SuperNode Runtime HTTP API failed to start``.
:func:`claim_runtime_port` makes the choice and the bind one step among fedlora's nodes: it
holds a host-wide lock from the check until the port is listening, so the next node to start
sees the port taken and takes a free one.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from fedlora.deploy.host import free_stable_port, port_is_free

__all__ = ["LOCK_FILE", "claim_runtime_port", "runtime_host_port"]

logger = logging.getLogger(__name__)

LOCK_FILE = Path(tempfile.gettempdir()) / "fedlora-supernode-ports.lock"
"""Host-wide: every fedlora node on this host picks its port under this lock."""
DEFAULT_RUNTIME_PORT = 9094
"""``flower-supernode``'s default ``--port``."""
_BIND_WAIT_S = 120.0
"""Longest hold of the lock while Flower starts (a node that never binds releases it then)."""


def runtime_host_port(flower_args: Sequence[str]) -> tuple[str, int]:
    """``(host, port)`` of the SuperNode's Runtime API from its ``--host``/``--port`` arguments."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_RUNTIME_PORT)
    known, _ = parser.parse_known_args(list(flower_args))
    return str(known.host), int(known.port)


def claim_runtime_port(flower_args: Sequence[str], lock_file: Path | None = LOCK_FILE) -> list[str]:
    """``flower_args`` with a ``--port`` no other fedlora node on this host is taking.

    Under the host-wide lock the preferred ``--port`` is kept when it is free, else replaced
    by a free one; the lock is held (by a daemon thread) until that port is listening, or
    :data:`_BIND_WAIT_S` passed. Without a usable lock file (a symlink, a folder that cannot
    hold it), the check still runs, unlocked.

    Parameters
    ----------
    flower_args : Sequence[str]
        ``flower-supernode``'s arguments.
    lock_file : Path, optional
        The host-wide lock; ``None``: choose unlocked.

    Returns
    -------
    list[str]
        The arguments, with ``--port`` set to the port this node will bind.
    """
    host, preferred = runtime_host_port(flower_args)
    lock = _open_lock(lock_file) if lock_file is not None else None
    if lock is not None:
        fcntl.flock(lock, fcntl.LOCK_EX)
    port = preferred
    if not port_is_free(host, preferred):
        # not an OS-picked (ephemeral) port: an outgoing connection could take it before
        # Flower binds it seconds later
        port = free_stable_port(host, start=preferred + 1)
        logger.info(
            "Runtime API port %d is taken on %s (another SuperNode?): this node uses %d",
            preferred,
            host,
            port,
        )
    if lock is not None:
        threading.Thread(
            target=_release_when_bound, args=(lock, host, port), daemon=True, name="port-lock"
        ).start()
    return _with_port(flower_args, port)


def _open_lock(path: Path) -> IO[str] | None:
    # read-only is enough for flock, so another user's lock file serves too; never a symlink
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        logger.debug("no port lock at %s (%s): choosing the port unlocked", path, error)
        return None
    return os.fdopen(descriptor, "r")


def _release_when_bound(lock: IO[str], host: str, port: int) -> None:
    deadline = time.monotonic() + _BIND_WAIT_S
    tick = threading.Event()  # never set: a wait that leaves time.sleep to Flower's patches
    while port_is_free(host, port) and time.monotonic() < deadline:
        tick.wait(0.05)
    with contextlib.suppress(OSError):
        fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()


def _with_port(flower_args: Sequence[str], port: int) -> list[str]:
    args = list(flower_args)
    for index, arg in enumerate(args):
        if arg == "--port" and index + 1 < len(args):
            args[index + 1] = str(port)
            return args
        if arg.startswith("--port="):
            args[index] = f"--port={port}"
            return args
    return [*args, "--port", str(port)]
