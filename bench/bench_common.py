"""Pieces every benchmark script shares: the ABBA run order and the JSON result line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
