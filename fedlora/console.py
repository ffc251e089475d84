"""The CLI's live progress display and final summary (rich)."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedlora.progress import Phase, RoundObserver, round_seconds


class ProgressDisplay(RoundObserver):
    """Shows the round, the sites done in the current phase and the latest losses."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[sites]}"),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.rounds_task: TaskID | None = None
        self.phase_task: TaskID | None = None
        self.done = 0
        self.expected = 0

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_start(self, *, rounds: int, sites: int) -> None:
        """Create the overall bar."""
        self.rounds_task = self.progress.add_task(
            f"{sites} sites, {rounds} rounds", total=rounds, sites="", loss=""
        )

    def on_phase(self, *, server_round: int, phase: Phase, expected: int) -> None:
        """Start a bar for this round's phase."""
        if self.phase_task is not None:
            self.progress.remove_task(self.phase_task)
        label = "initial eval" if server_round == 0 else f"round {server_round} {phase}"
        self.done, self.expected = 0, expected
        self.phase_task = self.progress.add_task(
            label, total=expected, sites=f"sites 0/{expected}", loss=""
        )

    def on_reply(
        self, *, server_round: int, phase: Phase, site: str, metrics: dict[str, float] | None
    ) -> None:
        """Advance the phase bar; show the site's loss (or that it failed)."""
        if self.phase_task is None:
            return
        self.done += 1
        if metrics is None:
            loss = f"[red]{site} failed"
        else:
            value = metrics.get("train-loss", metrics.get("loss", math.nan))
            loss = f"{site} loss {value:.4f}"
        self.progress.update(
            self.phase_task, advance=1, sites=f"sites {self.done}/{self.expected}", loss=loss
        )

    def on_round_end(self, record: dict[str, Any]) -> None:
        """Advance the overall bar with the round's weighted eval loss."""
        if self.rounds_task is None or record["round"] == 0:
            return
        loss = record["eval"].get("loss")
        self.progress.update(
            self.rounds_task,
            advance=1,
            loss=f"eval loss {loss:.4f}" if loss is not None else "",
            sites=f"round {record['round']}",
        )


def summary_table(metrics: list[dict[str, Any]], task: str) -> Table:
    """Per-site evaluation before (round 0) and after (last round), and traffic per round."""
    first, last = metrics[0], metrics[-1]
    score = "accuracy" if task == "classification" else "perplexity"
    table = Table(title=f"Evaluation before vs after {last['round']} round(s)")
    table.add_column("site")
    table.add_column("test examples", justify="right")
    for when in ("before", "after"):
        table.add_column(f"loss {when}", justify="right")
        table.add_column(f"{score} {when}", justify="right")
    for site in sorted(last["sites"]):
        before = first["sites"].get(site, {}).get("eval", {})
        after = last["sites"][site].get("eval", {})
        table.add_row(
            site,
            f"{after.get('num-examples', before.get('num-examples', 0)):.0f}",
            *_pair(before, score),
            *_pair(after, score),
        )
    table.add_row(
        "[bold]weighted",
        f"{last['eval'].get('num-examples', 0):.0f}",
        *_pair(first["eval"], score),
        *_pair(last["eval"], score),
    )
    return table


def traffic_table(metrics: list[dict[str, Any]]) -> Table:
    """Adapter bytes sent and received per round, over all sites, and each round's seconds.

    The last round's seconds include its adapter's own evaluation exchange, as its bytes sent
    include that message (:func:`fedlora.progress.round_seconds`).
    """
    table = Table(title="Adapter traffic per round")
    for name in ("round", "sent", "received", "errors", "seconds"):
        table.add_column(name, justify="right")
    timed = [record for record in metrics if int(record["round"]) >= 1]
    for record, seconds in zip(timed, round_seconds(metrics), strict=True):
        table.add_row(
            str(record["round"]),
            _bytes(record["bytes-sent"]),
            _bytes(record["bytes-received"]),
            str(len(record["errors"])),
            f"{seconds:.1f}",
        )
    return table


def _pair(metrics: dict[str, Any], score: str) -> tuple[str, str]:
    loss, value = metrics.get("loss"), metrics.get(score)
    if score == "perplexity" and value is None and loss is not None:
        value = math.exp(min(loss, 50.0))
    return (
        f"{loss:.4f}" if loss is not None else "-",
        f"{value:.4f}" if value is not None else "-",
    )


def _bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"
