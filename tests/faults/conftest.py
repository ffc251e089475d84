"""The fault-injection suite's summary: what was injected, what survived, what was lost."""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass
class FaultOutcome:
    """One injected fault and what the run kept."""

    fault: str
    survived: bool
    rounds_lost: int
    ledger_entries_lost: int


OUTCOMES: list[FaultOutcome] = []


@pytest.fixture
def record_fault():
    """``record_fault(fault, survived, rounds_lost, ledger_entries_lost)`` for the summary."""

    def record(fault: str, survived: bool, rounds_lost: int, ledger_entries_lost: int) -> None:
        OUTCOMES.append(FaultOutcome(fault, survived, rounds_lost, ledger_entries_lost))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not OUTCOMES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault injection")
    write(f"{'fault injected':<58} {'survived':>8} {'rounds lost':>11} {'ledger lost':>11}")
    for outcome in OUTCOMES:
        survived = "yes" if outcome.survived else "NO"
        write(
            f"{outcome.fault:<58} {survived:>8} {outcome.rounds_lost:>11} "
            f"{outcome.ledger_entries_lost:>11}"
        )
    lost = sum(outcome.ledger_entries_lost for outcome in OUTCOMES)
    write(f"faults: {len(OUTCOMES)}, ledger entries lost in all: {lost} (must be 0)")
