"""A deployed run's progress as plain lines: what ``fedlora deploy submit`` streams to the operator.

Under ``flwr run`` the ServerApp runs on the SuperLink host and Flower streams its output to the
operator's ``flwr run --stream``. The ServerApp prints, each line starting with
:data:`PREFIX`: the run directory, one line per round (sites trained / declined / failed, the
losses, every site's ε of its budget, as the sites reported them in ``metrics.jsonl``), and how
the run ended. ``fedlora deploy submit`` (:mod:`fedlora.deploy.submit`) shows those lines and
reads the run directory and the outcome from them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

from fedlora.progress import RoundObserver

__all__ = [
    "COMPLETE",
    "ERROR",
    "PREFIX",
    "RUN_DIRECTORY",
    "STOPPED",
    "RoundLines",
    "round_line",
    "run_output",
]

PREFIX = "fedlora: "
"""Every line the ServerApp prints for the operator starts with this."""
RUN_DIRECTORY = "run directory: "
COMPLETE = "run complete: "
STOPPED = "run stopped: "
ERROR = "error: "
"""What follows :data:`PREFIX` on the lines that name the run directory and how it ended."""


class RoundLines(RoundObserver):
    """Logs a line when the sites are connected and one per finished round.

    Parameters
    ----------
    emit : Callable[[str], None]
        Receives each line (the ServerApp logs it).
    run_dir : str, optional
        The run directory, named when the sites are connected (the run is then under way).
    on_first_record : Callable[[], None], optional
        Called once, after the run's first ``metrics.jsonl`` line is written (its
        ``config.json`` then exists).
    """

    def __init__(
        self,
        emit: Callable[[str], None],
        run_dir: str | None = None,
        on_first_record: Callable[[], None] | None = None,
    ) -> None:
        self.emit = emit
        self.run_dir = run_dir
        self.on_first_record = on_first_record
        self.rounds = 0
        self.sites = 0

    def on_start(self, *, rounds: int, sites: int) -> None:
        """Name the run directory and say that the sites are connected."""
        self.rounds, self.sites = rounds, sites
        if self.run_dir is not None:
            self.emit(RUN_DIRECTORY + self.run_dir)
        self.emit(f"{sites} sites connected; {rounds} rounds")

    def on_round_end(self, record: dict[str, Any]) -> None:
        """One line for the round (:func:`round_line`)."""
        if self.on_first_record is not None:
            first, self.on_first_record = self.on_first_record, None
            first()
        self.emit(round_line(record, rounds=self.rounds, sites=self.sites))


def round_line(record: dict[str, Any], *, rounds: int, sites: int) -> str:
    """A ``metrics.jsonl`` record as one line for the operator.

    Round 0 is the base adapter's evaluation; a training round names how many sites trained,
    declined (their budget or policy) and failed, the losses and each site's ε of its budget
    (the lifetime ε its ledger holds, at its δ).
    """
    server_round = int(record["round"])
    evaluated = _loss("eval loss", record.get("eval"), "loss")
    if server_round == 0:
        return f"round 0 (before training): {evaluated or 'no evaluation'}"
    trained = record.get("train") or {}
    declined = sorted(record.get("refused") or {})
    failed = sorted(
        {
            str(error["site"])
            for error in record.get("errors") or []
            if error.get("phase") == "train" and error.get("site") != "*"
        }
        - set(declined)
    )
    parts = [
        f"round {server_round}/{rounds}: {int(trained.get('num-sites', 0))} of {sites} sites "
        f"trained, {len(declined)} declined, {len(failed)} failed"
    ]
    parts += [text for text in (_loss("train loss", trained, "train-loss"), evaluated) if text]
    spent = [_epsilon(site, entry) for site, entry in sorted((record.get("privacy") or {}).items())]
    if spent:
        parts.append("ε " + ", ".join(spent))
    if declined:
        parts.append("declined: " + ", ".join(declined))
    if failed:
        parts.append("failed: " + ", ".join(failed))
    return "; ".join(parts)


def _loss(label: str, metrics: dict[str, Any] | None, key: str) -> str:
    value = (metrics or {}).get(key)
    return f"{label} {float(value):.4f}" if isinstance(value, (int, float)) else ""


def _epsilon(site: str, entry: dict[str, Any]) -> str:
    spent, budget = entry.get("epsilon"), entry.get("budget-epsilon")
    shown = f"{float(spent):.3g}" if isinstance(spent, (int, float)) else "∞"
    if isinstance(budget, (int, float)):
        return f"{site} {shown} of {float(budget):g}"
    return f"{site} {shown}"


class _LineFormatter(logging.Formatter):
    """``fedlora: MESSAGE``; a warning says so (``fedlora: warning: MESSAGE``)."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno == logging.WARNING:
            return f"{PREFIX}warning: {message}"
        return PREFIX + message


@contextlib.contextmanager
def run_output(logger_name: str = "fedlora") -> Iterator[None]:
    """Print fedlora's INFO and WARNING lines to stdout, each as ``fedlora: MESSAGE``.

    Under ``flwr run`` (the ServerApp's process) Flower mirrors this process's stdout to the
    operator's ``--stream``; fedlora's logger has no handler there otherwise, and its INFO
    lines (the run directory, the rounds) went nowhere.
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_LineFormatter())
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
