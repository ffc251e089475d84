"""Processes started for a deployment on one machine, each in its own session, stopped together.

A :class:`ProcessGroup` starts every process in a session (process group) of its own, with its
output in ``LOGS/NAME.log``, and stops them all: SIGTERM to each group, a grace period, then
SIGKILL, then any process whose command line still names the deployment's folder (what Flower
detaches from the groups: ``flower-superexec``, ``flwr-serverapp``). Linux only (the last step
reads ``/proc``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from fedlora.deploy.host import command_line
from fedlora.errors import FedloraError

__all__ = ["LOG_TAIL", "LoopbackError", "ProcessGroup", "wait_for"]

logger = logging.getLogger(__name__)

LOG_TAIL = 4000
"""Characters of a process's log quoted in an error."""
_STOP_GRACE_S = 15


class LoopbackError(FedloraError):
    """A process of a :class:`LocalDeployment` did not start, register or finish as expected."""


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 0.3 s until it holds.

    Raises
    ------
    LoopbackError
        When it does not hold within ``timeout`` seconds; the message names ``what``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise LoopbackError(f"timed out after {timeout:.0f}s waiting for {what}")


class ProcessGroup:
    """The processes of one deployment, each logging to ``logs/NAME.log``.

    Parameters
    ----------
    logs : Path
        The folder of the process logs (it must exist when a process starts).
    """

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self._started: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a session of its own with ``env``, appending to ``NAME.log``."""
        with (self.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                argv,
                env=dict(env),
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._started.append(process)
        logger.info("started %s (pid %d): %s", name, process.pid, command_line(argv))
        return process

    def log(self, name: str) -> str:
        """The output so far of the process started as ``name`` (empty before it writes)."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, name: str) -> str:
        """The last :data:`LOG_TAIL` characters of ``name``'s log, for an error message."""
        return self.log(name)[-LOG_TAIL:]

    def wait_alive(
        self,
        condition: Callable[[], bool],
        processes: Mapping[str, subprocess.Popen[bytes]],
        what: str,
        timeout: float,
    ) -> None:
        """Wait for ``condition``; fail at once, with its log, when one of ``processes`` ends.

        Raises
        ------
        LoopbackError
            When a process exits first, or ``condition`` does not hold within ``timeout``.
        """

        def ready() -> bool:
            for name, process in processes.items():
                if process.poll() is not None:
                    raise LoopbackError(
                        f"{name} exited with {process.returncode} while waiting for {what}; "
                        f"end of {self.logs / (name + '.log')}:\n{self.log_tail(name)}"
                    )
            return condition()

        wait_for(ready, timeout, what)

    def run_to_end(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: Path | None,
        timeout: float,
        what: str,
    ) -> None:
        """Run ``argv`` (as :meth:`start`) and wait for it to exit 0.

        Raises
        ------
        LoopbackError
            With the end of its log, when it exits non-zero or runs past ``timeout`` seconds
            (it is killed then); ``what`` names it.
        """
        process = self.start(name, argv, env=env, cwd=cwd)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(process, timeout=10)
            raise LoopbackError(
                f"{what} did not end within {timeout:.0f}s; end of its log:\n{self.log_tail(name)}"
            ) from None
        if returncode != 0:
            raise LoopbackError(
                f"{what} exited with {returncode}; end of its log:\n{self.log_tail(name)}"
            )

    def restart_until(
        self,
        name: str,
        launch: Callable[[], subprocess.Popen[bytes]],
        marker: str,
        *,
        timeout: float,
        what: str,
    ) -> subprocess.Popen[bytes]:
        """Start a process with ``launch`` again and again until its log shows ``marker`` anew.

        As a process supervisor would: a launch that exits is retried after 3 s; one that
        keeps running without writing ``marker`` is given the rest of ``timeout``.

        Raises
        ------
        LoopbackError
            When ``marker`` does not appear within ``timeout`` seconds (``what`` names it).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.log(name).count(marker)
            process = launch()
            while process.poll() is None and time.monotonic() < deadline:
                if self.log(name).count(marker) > seen:
                    return process
                time.sleep(0.5)
            if process.poll() is None:
                break
            time.sleep(3)
        raise LoopbackError(f"{what} did not come back within {timeout:.0f} s")

    @staticmethod
    def kill(process: subprocess.Popen[bytes], timeout: float) -> None:
        """SIGKILL ``process``'s session and wait up to ``timeout`` seconds for it."""
        signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)

    def stop(self, root: Path) -> None:
        """Stop every process started here, then any process still naming ``root``.

        SIGTERM to each process group, up to 15 s to exit, then SIGKILL; safe to call twice.
        """
        groups = [process.pid for process in self._started]
        for pgid in groups:
            signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for process in self._started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for pgid in groups:
            signal_group(pgid, signal.SIGKILL)
        for process in self._started:
            if process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
        # What Flower detached from our process groups (flower-superexec, flwr-serverapp)
        # but still names our folder.
        leftovers = pids_naming(root)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if groups or leftovers:
            logger.info(
                "stopped %d process group(s) and %d detached process(es) of %s",
                len(groups),
                len(leftovers),
                root,
            )
        self._started.clear()


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pgid``, if it (still) exists and is ours."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def pids_naming(root: Path) -> list[int]:
    """Processes (other than this one and its parent) with ``root`` in their command line."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    marker = str(root)
    inside = marker + os.sep
    skip = {os.getpid(), os.getppid()}
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(arg == marker or inside in arg for arg in args):
            pids.append(int(entry.name))
    return pids
