"""Hooks through which a front end (the CLI's progress display) follows a run, and its timing."""

from __future__ import annotations

from typing import Any, Literal

Phase = Literal["train", "evaluate"]


class RoundObserver:
    """Receives progress events from the round loop; every method is a no-op by default."""

    def on_start(self, *, rounds: int, sites: int) -> None:
        """The federation starts: ``rounds`` rounds over ``sites`` sites."""

    def on_phase(self, *, server_round: int, phase: Phase, expected: int) -> None:
        """``expected`` sites were sent a ``phase`` instruction for ``server_round``."""

    def on_reply(
        self, *, server_round: int, phase: Phase, site: str, metrics: dict[str, float] | None
    ) -> None:
        """A site replied (``metrics`` is ``None`` for an error reply)."""

    def on_declined(self, *, server_round: int, phase: Phase, site: str, status: str) -> None:
        """A site declined under its own policy (``status``: ``budget-exhausted``).

        By default the reply is counted like an error reply (:meth:`on_reply` with no
        metrics), so an observer that does not tell declines apart still counts it.
        """
        self.on_reply(server_round=server_round, phase=phase, site=site, metrics=None)

    def on_round_end(self, record: dict[str, Any]) -> None:
        """A round finished; ``record`` is its ``metrics.jsonl`` line."""


def round_seconds(records: list[dict[str, Any]]) -> list[float]:
    """Wall seconds of rounds 1..R from a run's ``metrics.jsonl`` lines.

    A round's ``duration-s`` covers its training (with the previous round's evaluation,
    which its train messages carry) and aggregation; the last round's adapter is evaluated
    in an exchange of its own (``eval-duration-s``), counted here in the last round. The sum
    is the wall time from round 1's train messages to the last evaluation reply.
    """
    timed = [record for record in records if int(record["round"]) >= 1]
    seconds = [float(record["duration-s"]) for record in timed]
    if seconds:
        seconds[-1] = round(seconds[-1] + float(timed[-1].get("eval-duration-s", 0.0)), 3)
    return seconds
