"""The CLI's live progress display and final summary (rich)."""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedlora.progress import Phase, RoundObserver, round_seconds
from fedlora.protocol import BUDGET_EXHAUSTED


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

    def on_declined(self, *, server_round: int, phase: Phase, site: str, status: str) -> None:
        """Advance the phase bar; say the site declined (for its budget), not that it failed."""
        if self.phase_task is None:
            return
        self.done += 1
        why = "budget" if status == BUDGET_EXHAUSTED else status
        self.progress.update(
            self.phase_task,
            advance=1,
            sites=f"sites {self.done}/{self.expected}",
            loss=f"[yellow]{site} declined ({why})",
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


def evaluated_rounds(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The round lines whose adapter has a held-out evaluation from at least one site.

    A stopped or failed run's last line may carry no evaluation (its round never trained),
    while an earlier round's adapter was evaluated: that one is the run's "after".
    """
    return [record for record in metrics if (record.get("eval") or {}).get("num-sites", 0) > 0]


def summary_table(metrics: list[dict[str, Any]], task: str) -> Table:
    """Per-site held-out evaluation before training (round 0) and after the last evaluated round.

    Nothing is cut at 80 columns: headers take two lines, and a site name longer than the
    line has room for folds onto the next line.
    """
    evaluated = evaluated_rounds(metrics)
    first = metrics[0]
    last = evaluated[-1] if evaluated and int(evaluated[-1]["round"]) >= 1 else None
    score = "accuracy" if task == "classification" else "perplexity"
    title = (
        f"Held-out evaluation before training vs after round {last['round']}"
        if last is not None
        else "Held-out evaluation before training (no round's adapter was evaluated)"
    )
    if last is not None and int(last["round"]) < int(metrics[-1]["round"]):
        title += f" (the last evaluated; round {metrics[-1]['round']} has no evaluation)"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    names = sorted(set(first.get("sites", {})) | set(last["sites"] if last else ()))
    # The numbers never wrap (two-line headers keep them narrow); a site name too long for
    # the rest of the line folds onto a second line, whole, instead of being cut.
    table.add_column("site", overflow="fold", min_width=len("weighted"))
    table.add_column("test\nexamples", justify="right", no_wrap=True)
    for when in ("before", "after"):
        table.add_column(f"loss\n{when}", justify="right", no_wrap=True)
        table.add_column(f"{score}\n{when}", justify="right", no_wrap=True)
    after_sites = last["sites"] if last is not None else {}
    for site in names:
        before = first.get("sites", {}).get(site, {}).get("eval", {})
        after = after_sites.get(site, {}).get("eval", {})
        table.add_row(
            site,
            f"{after.get('num-examples', before.get('num-examples', 0)):.0f}",
            *_pair(before, score),
            *_pair(after, score),
        )
    after_eval = last["eval"] if last is not None else {}
    before_eval = first.get("eval") or {}
    table.add_row(
        "[bold]weighted",
        f"{after_eval.get('num-examples', before_eval.get('num-examples', 0)):.0f}",
        *_pair(before_eval, score),
        *_pair(after_eval, score),
    )
    return table


EVAL_FOOTNOTE = (
    "* includes the final evaluation: the last round's adapter is sent to every site once "
    "more, to be evaluated on its held-out split (earlier adapters travel for evaluation "
    "inside the next round's training message)"
)


def traffic_table(metrics: list[dict[str, Any]]) -> Table:
    """Adapter bytes sent and received per round, over all sites, and each round's seconds.

    The last round's bytes sent and seconds include its adapter's own evaluation exchange
    (:func:`fedlora.progress.round_seconds`): that round's values are starred, and
    :func:`traffic_footnote` says why.
    """
    table = Table(title="Adapter traffic per round")
    for name in ("round", "sent", "received", "errors", "seconds"):
        table.add_column(name, justify="right")
    timed = [record for record in metrics if int(record["round"]) >= 1]
    for record, seconds in zip(timed, round_seconds(metrics), strict=True):
        star = "*" if "eval-duration-s" in record else ""
        table.add_row(
            str(record["round"]),
            _bytes(record["bytes-sent"]) + star,
            _bytes(record["bytes-received"]),
            str(len(record["errors"])),
            f"{seconds:.1f}{star}",
        )
    return table


def traffic_footnote(metrics: list[dict[str, Any]]) -> str | None:
    """:data:`EVAL_FOOTNOTE` when a round of :func:`traffic_table` is starred, else ``None``."""
    starred = any("eval-duration-s" in r for r in metrics if int(r["round"]) >= 1)
    return EVAL_FOOTNOTE if starred else None


def _pair(metrics: dict[str, Any], score: str) -> tuple[str, str]:
    loss, value = metrics.get("loss"), metrics.get(score)
    if score == "perplexity" and value is None and loss is not None:
        value = math.exp(min(loss, 50.0))
    return _number(loss, 4), _number(value, 4 if score == "accuracy" else 2)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"
