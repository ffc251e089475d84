"""Seconds per round: the last round counts its adapter's own evaluation exchange."""

from __future__ import annotations

from rich.console import Console

from fedlora.console import traffic_table
from fedlora.progress import round_seconds


def _line(server_round: int, seconds: float, **extra: float) -> dict[str, object]:
    return {
        "round": server_round,
        "duration-s": seconds,
        "bytes-sent": 2048,
        "bytes-received": 1024,
        "errors": [],
        **extra,
    }


RUN = [
    _line(0, 9.0, **{"eval-duration-s": 9.0}),  # round 0: the initial evaluation, not timed
    _line(1, 1.5),
    _line(2, 1.25),
    _line(3, 1.5, **{"eval-duration-s": 0.625}),  # the last adapter's own evaluation
]


def test_the_last_round_counts_its_adapters_evaluation_and_round_zero_is_left_out() -> None:
    assert round_seconds(RUN) == [1.5, 1.25, 2.125]
    assert round_seconds(RUN[:1]) == []


def test_the_traffic_table_shows_those_seconds() -> None:
    console = Console(width=120, record=True)

    console.print(traffic_table(RUN))

    rows = [
        [cell.strip() for cell in line.split("│") if cell.strip()]
        for line in console.export_text().splitlines()
        if "KiB" in line
    ]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    # The last round's seconds are starred: they include its adapter's evaluation exchange.
    assert [row[-1] for row in rows] == ["1.5", "1.2", "2.1*"]
