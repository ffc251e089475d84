"""SIGTERM / SIGINT become RunInterrupted inside stop_on_signals, and the handlers come back."""

from __future__ import annotations

import os
import signal
import time

import pytest

from fedlora.cli.interrupts import RunInterrupted, stop_on_signals


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_raises_run_interrupted_and_restores_the_handlers(signum, code) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with pytest.raises(RunInterrupted) as raised, stop_on_signals():
        os.kill(os.getpid(), signum)
        time.sleep(0.5)  # the handler raises here
    assert str(raised.value) == f"stopped by {signum.name}"
    assert raised.value.exit_code == code
    assert isinstance(raised.value, KeyboardInterrupt)
    assert {s: signal.getsignal(s) for s in before} == before
