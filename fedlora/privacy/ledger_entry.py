"""One trained round as a site's privacy ledger records it (a ``"kind": "round"`` line)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedlora.privacy.accounting import Release
from fedlora.privacy.hashchain import finite_or_none

ROUND_FIELDS = (
    "run-id",
    "round",
    "steps",
    "sample-rate",
    "noise-multiplier",
    "max-grad-norm",
    "delta",
    "accountant",
    "epsilon-prv",
    "epsilon-rdp",
)


@dataclass(frozen=True)
class LedgerEntry:
    """One trained round as the ledger records it."""

    run_id: str
    round: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str
    epsilon_prv: float
    epsilon_rdp: float
    time: str

    @property
    def release(self) -> Release:
        """The DP-SGD release this round made."""
        return Release(self.noise_multiplier, self.sample_rate, self.steps)

    def to_json(self) -> dict[str, Any]:
        """The entry's fields under the ledger's kebab-case keys."""
        return {
            "run-id": self.run_id,
            "round": self.round,
            "steps": self.steps,
            "sample-rate": self.sample_rate,
            "noise-multiplier": self.noise_multiplier,
            "max-grad-norm": self.max_grad_norm,
            "delta": self.delta,
            "accountant": self.accountant,
            "epsilon-prv": finite_or_none(self.epsilon_prv),
            "epsilon-rdp": finite_or_none(self.epsilon_rdp),
            "time": self.time,
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> LedgerEntry:
        """Parse a ``round`` line (``KeyError`` / ``TypeError`` / ``ValueError`` if malformed)."""

        def eps(key: str) -> float:
            value = payload[key]
            return math.inf if value is None else float(value)

        return cls(
            run_id=str(payload["run-id"]),
            round=int(payload["round"]),
            steps=int(payload["steps"]),
            sample_rate=float(payload["sample-rate"]),
            noise_multiplier=float(payload["noise-multiplier"]),
            max_grad_norm=float(payload["max-grad-norm"]),
            delta=float(payload["delta"]),
            accountant=str(payload["accountant"]),
            epsilon_prv=eps("epsilon-prv"),
            epsilon_rdp=eps("epsilon-rdp"),
            time=str(payload["time"]),
        )
