"""The one reader of a run directory ``runs/<run-id>/``.

Layout::

    config.json            resolved configuration, base fingerprint, sites, package versions
    status.json            {"state": "running" | "complete" | "stopped" | "incomplete", ...}
    metrics.jsonl          one JSON line per round (round 0 = the initial adapter, eval only)
    adapters/round-NNN/    PEFT adapter directory after round NNN
    adapters/final/        PEFT adapter directory of the last round
    report/                the privacy report (:mod:`fedlora.report`)

The coordinator writes it (:class:`fedlora.server.rundir.RunDirectory`, a
:class:`RunDirectoryReader` that also writes); the report, ``fedlora deploy fetch``, the
simulation harness and the benchmarks read it through :class:`RunDirectoryReader` alone, so
the file names and their checks live here once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from fedlora.errors import RunDirError
from fedlora.io import read_json_lines

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
ADAPTERS_DIR = "adapters"
FINAL_ADAPTER = "final"
REPORT_DIR = "report"

RunState = Literal["running", "complete", "stopped", "incomplete"]
"""``stopped``: ended before the planned rounds because no site could train within its budget."""

_RECORDED_STATES: tuple[RunState, ...] = ("running", "complete", "stopped")


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``.

    Parameters
    ----------
    path
        A JSON file.
    what
        What the file is, for the error message (``"run status"``).

    Raises
    ------
    RunDirError
        When the file cannot be read, is not JSON, or holds something other than an object.
    """
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunDirError(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(payload, dict):
        raise RunDirError(f"{what} {path} is not a JSON object")
    return payload


def _check_metrics_record(path: Path, number: int, record: Mapping[str, Any]) -> None:
    where = f"{path} record {number}"
    if not isinstance(record.get("round"), int) or isinstance(record.get("round"), bool):
        raise RunDirError(f"{where} has no integer 'round'")
    for key in ("privacy", "refused", "sites"):
        if not isinstance(record.get(key, {}), dict):
            raise RunDirError(f"{where}: '{key}' is not a JSON object")


class RunDirectoryReader:
    """Read-only access to one run directory: its file names, and each file parsed and checked.

    Parameters
    ----------
    path
        The run directory ``runs/<run-id>/``; nothing is read until a method asks.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def run_id(self) -> str:
        """The run id (directory name)."""
        return self.path.name

    @property
    def config_path(self) -> Path:
        """``config.json``."""
        return self.path / CONFIG_FILE

    @property
    def status_path(self) -> Path:
        """``status.json``."""
        return self.path / STATUS_FILE

    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl``."""
        return self.path / METRICS_FILE

    @property
    def report_path(self) -> Path:
        """``report/``, where the privacy report is written."""
        return self.path / REPORT_DIR

    def adapter_path(self, server_round: int | None) -> Path:
        """``adapters/round-NNN`` for a round, ``adapters/final`` for ``None``."""
        name = FINAL_ADAPTER if server_round is None else f"round-{server_round:03d}"
        return self.path / ADAPTERS_DIR / name

    def read_config(self) -> dict[str, Any]:
        """The resolved configuration: ``config.json`` with its flat ``config`` object.

        Raises
        ------
        RunDirError
            When the run directory or its ``config.json`` is missing, unreadable, not a JSON
            object, or has no ``config`` object.
        """
        if not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} not found")
        if not self.config_path.exists():
            raise RunDirError(f"{self.path} is not a run directory: it has no {CONFIG_FILE}")
        payload = _read_json_object(self.config_path, "run configuration")
        if not isinstance(payload.get("config"), dict):
            raise RunDirError(f"run configuration {self.config_path} has no 'config' object")
        return payload

    def read_status(self) -> dict[str, Any]:
        """``status.json`` as written: ``state``, ``reason`` and ``updated``.

        Raises
        ------
        RunDirError
            When there is no ``status.json`` (not a run directory), or it is unreadable or
            not a JSON object.
        """
        if not self.status_path.is_file():
            raise RunDirError(f"{self.path} is not a run directory (no {STATUS_FILE})")
        return _read_json_object(self.status_path, "run status")

    def state(self) -> RunState:
        """The recorded state; a missing, unreadable or unknown status counts as incomplete."""
        try:
            state = self.read_status().get("state")
        except RunDirError:
            return "incomplete"
        for known in _RECORDED_STATES:
            if state == known:
                return known
        return "incomplete"

    def read_metrics(self) -> list[dict[str, Any]]:
        """All ``metrics.jsonl`` lines, in order; none when the file does not exist yet.

        Raises
        ------
        RunDirError
            Naming the first line that is not valid JSON, not a JSON object, has no integer
            ``round``, or whose ``privacy``, ``refused`` or ``sites`` is not an object.
        """
        if not self.metrics_path.exists():
            return []
        records = read_json_lines(self.metrics_path)
        for number, record in enumerate(records, start=1):
            _check_metrics_record(self.metrics_path, number, record)
        return records
