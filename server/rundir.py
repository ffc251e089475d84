"""The run directory writer: ``runs/<run-id>/`` as the coordinator records a run.

The layout, its file names and every read are :mod:`fedlora.rundir`'s; this module adds the
writes. Every file is written atomically. ``status.json`` says ``complete`` only after the
final adapter is on disk; a run that raised is marked ``incomplete`` with the reason, and a
run killed outright stays ``running`` -- never ``complete``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from pathlib import Path
from typing import Any

from fedlora.errors import RunDirError
from fedlora.io import append_line, atomic_write_json, atomic_write_text
from fedlora.rundir import RunDirectoryReader, RunState

logger = logging.getLogger(__name__)


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp plus random suffix."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


class RunDirectory(RunDirectoryReader):
    """Writer of one run directory; it reads back through :class:`RunDirectoryReader`."""

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

    def write_config(self, payload: dict[str, Any]) -> None:
        """Write the resolved configuration."""
        atomic_write_json(self.config_path, payload)

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

    def mark(self, state: RunState, reason: str | None = None) -> None:
        """Record the run's state (and why, when it is incomplete)."""
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(self.status_path, {"state": state, "reason": reason, "updated": now})
