"""Shared test set-up: offline, quiet, GPU tests skipped without a GPU."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session", autouse=True)
def _no_user_home_in_any_scope(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temporary ``$FEDLORA_HOME`` before any module- or class-scoped fixture runs.

    The per-test home below comes too late for fixtures of a wider scope, which would
    otherwise spend budget in the user's own ledgers (and find it spent on the next run).
    Real assets were looked up at collection (``tests/real_assets.py``), before this.
    """
    home = tmp_path_factory.mktemp("fedlora-session-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDLORA_HOME", str(home))
        yield home


@pytest.fixture(autouse=True)
def _ledgers_in_tmp(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Simulated sites keep ledgers in the per-user ``$FEDLORA_HOME``: a fresh one per test.

    No test may read or write the ledgers in the user's home (``~/.local/share/fedlora``).
    """
    home = tmp_path_factory.mktemp("fedlora-home")
    monkeypatch.setenv("FEDLORA_HOME", str(home))
    return home


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def sentiment_rows() -> list[dict[str, str]]:
    good = ["great", "love", "excellent", "happy", "good"]
    bad = ["bad", "awful", "hate", "terrible", "sad"]
    rows = []
    for index in range(40):
        words, label = (good, "pos") if index % 2 else (bad, "neg")
        text = " ".join(words[(index + k) % len(words)] for k in range(4))
        rows.append({"text": f"{text} #{index}", "label": label})
    return rows


@pytest.fixture
def flower_identity() -> Iterator[None]:
    """Give this process the task identity a ServerApp has, so tests can build Messages."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


# Fault injection (tests/faults, tests/deployment): what was injected, what survived, what
# was lost, printed as one table at the end of the run.


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
