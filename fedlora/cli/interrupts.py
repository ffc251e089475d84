"""SIGTERM and SIGINT as an exception, so a stopped run is recorded as stopped.

Python turns SIGINT into :class:`KeyboardInterrupt` but lets SIGTERM end the process on the
spot, so a run killed by a service manager or ``kill`` stayed ``"running"`` in its
``status.json``. Inside :func:`stop_on_signals` both raise :class:`RunInterrupted` in the
main thread; the federation's own error path then marks the run ``incomplete`` with the
reason ("stopped by SIGTERM"), and the command exits with ``128 + signal``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(KeyboardInterrupt):
    """The process received SIGTERM or SIGINT; ``exit_code`` is ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by this signal."""
        return 128 + self.signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Raise :class:`RunInterrupted` in the main thread on SIGTERM or SIGINT.

    The first signal raises; the previous handlers come back at once, so a second signal
    (while the run is being marked) acts as it would have without this guard. Outside the
    main thread, where handlers cannot be installed, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        restore()
        raise RunInterrupted(signum)

    for signum in SIGNALS:
        signal.signal(signum, interrupt)
    try:
        yield
    finally:
        restore()
