"""The run directory: ``runs/<run-id>/``.

Layout::

    config.json            resolved configuration, base fingerprint, sites, package versions
    status.json            {"state": "running" | "complete" | "incomplete", ...}
    metrics.jsonl          one JSON line per round (round 0 = the initial adapter, eval only)
    adapters/round-NNN/    PEFT adapter directory after round NNN
    adapters/final/        PEFT adapter directory of the last round

Every file is written atomically. ``status.json`` says ``complete`` only after the final
adapter is on disk; a run that raised is marked ``incomplete`` with the reason, and a run
killed outright stays ``running`` -- never ``complete``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from pathlib import Path
from typing import Any, Literal

from fedlora.errors import RunDirError
from fedlora.io import append_line, atomic_write_json, atomic_write_text, read_json_lines

logger = logging.getLogger(__name__)

RunState = Literal["running", "complete", "stopped", "incomplete"]
"""``stopped``: ended before the planned rounds because no site could train within its budget."""


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp plus random suffix."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


class RunDirectory:
    """Writer and reader of one run directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, out: Path, run_id: str | None = None) -> RunDirectory:
        """Create a fresh run directory under ``out``.

        Raises
        ------
        RunDirError
            When ``out`` cannot be created or written, or the run directory already exists.
        """
        path = out / (run_id or new_run_id())
        try:
            out.mkdir(parents=True, exist_ok=True)
            path.mkdir()
        except FileExistsError:
            raise RunDirError(f"run directory {path} already exists") from None
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {path}: {exc.strerror or exc}") from exc
        run_dir = cls(path)
        run_dir.mark("running")
        return run_dir

    @property
    def run_id(self) -> str:
        """The run id (directory name)."""
        return self.path.name

    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl``."""
        return self.path / "metrics.jsonl"

    @property
    def config_path(self) -> Path:
        """``config.json``."""
        return self.path / "config.json"

    def adapter_path(self, server_round: int | None) -> Path:
        """``adapters/round-NNN`` for a round, ``adapters/final`` for ``None``."""
        name = "final" if server_round is None else f"round-{server_round:03d}"
        return self.path / "adapters" / name

    def write_config(self, payload: dict[str, Any]) -> None:
        """Write the resolved configuration."""
        atomic_write_json(self.config_path, payload)

    def read_config(self) -> dict[str, Any]:
        """Read ``config.json``."""
        return dict(json.loads(self.config_path.read_text(encoding="utf-8")))

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one round's metrics line."""
        append_line(self.metrics_path, json.dumps(record, sort_keys=True))

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` atomically with ``records`` (a resume drops cut rounds)."""
        text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
        atomic_write_text(self.metrics_path, text)

    def replace_last_metrics(self, record: dict[str, Any]) -> None:
        """Replace the last metrics line (a round's line written before its evaluation).

        Raises
        ------
        RunDirError
            When the last line is not the same round's.
        """
        records = self.read_metrics()
        if not records or records[-1]["round"] != record["round"]:
            raise RunDirError(
                f"{self.metrics_path}: the last line is not round {record['round']}'s"
            )
        self.rewrite_metrics([*records[:-1], record])

    def read_metrics(self) -> list[dict[str, Any]]:
        """All metrics lines, in order (``RunDirError`` naming a corrupted line)."""
        if not self.metrics_path.exists():
            return []
        return read_json_lines(self.metrics_path)

    def mark(self, state: RunState, reason: str | None = None) -> None:
        """Record the run's state (and why, when it is incomplete)."""
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(
            self.path / "status.json", {"state": state, "reason": reason, "updated": now}
        )

    def state(self) -> RunState:
        """The recorded state; a missing or unreadable status counts as incomplete."""
        try:
            payload = json.loads((self.path / "status.json").read_text())
        except (OSError, ValueError):
            return "incomplete"
        state = payload.get("state")
        return state if state in ("running", "complete", "stopped") else "incomplete"
