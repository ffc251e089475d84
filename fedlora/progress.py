"""Hooks through which a front end (the CLI's progress display) follows a run."""

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

    def on_round_end(self, record: dict[str, Any]) -> None:
        """A round finished; ``record`` is its ``metrics.jsonl`` line."""
