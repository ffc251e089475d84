"""Pieces the benchmark scripts share: the ABBA run order, a run's checked rounds, the JSON line."""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path
from typing import Any

from fedlora.rundir import RunDirectoryReader


def add_output_arguments(
    parser: argparse.ArgumentParser, *, verbose_help: str, run_data: bool = True
) -> None:
    """Add ``--json`` (write the result line there too), ``--out`` and ``--verbose``."""
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    if run_data:
        parser.add_argument(
            "--out", type=Path, default=None, help="keep run data here (else a tmp dir)"
        )
    parser.add_argument("--verbose", action="store_true", help=verbose_help)


def quiet_flower() -> None:
    """Keep Flower's and the libraries' notices out of a benchmark's table."""
    logging.getLogger("flwr").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def abba_schedule(repeats: int, first: str, second: str) -> list[str]:
    """ABBA order: alternating which side goes first cancels slow drift in machine load."""
    order: list[str] = []
    for index in range(repeats):
        order += [first, second] if index % 2 == 0 else [second, first]
    return order


def emit_result(result: dict[str, Any], path: Path | None) -> None:
    """Print ``result`` as one JSON line, and also write it to ``path`` when given."""
    line = json.dumps(result, sort_keys=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(line + "\n")
    print(line)


def completed_rounds(run_dir: Path, rounds: int) -> list[dict[str, Any]]:
    """A completed run's metrics records (round 0 included), checked before they are timed.

    Raises
    ------
    RuntimeError
        When the run did not complete, a site reported an error, or it recorded other than
        ``rounds`` rounds after round 0: its times would not measure the same work.
    """
    reader = RunDirectoryReader(run_dir)
    status = reader.read_status()
    if status.get("state") != "complete":
        raise RuntimeError(f"{run_dir} did not complete: {status}")
    records = reader.read_metrics()
    errors = [e for r in records for e in r.get("errors", [])]
    if errors:
        raise RuntimeError(f"{run_dir} had site errors: {errors[:3]}")
    timed = [r for r in records if int(r["round"]) >= 1]
    if len(timed) != rounds:
        raise RuntimeError(f"{run_dir} recorded {len(timed)} of {rounds} rounds")
    return records
