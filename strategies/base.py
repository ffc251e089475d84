"""The interface every aggregation strategy implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from fedlora.adapters import AdapterState


@dataclass(frozen=True)
class SiteUpdate:
    """One site's adapter after local training, with its weight in the aggregate."""

    site: str
    state: AdapterState
    num_examples: int


class Strategy(abc.ABC):
    """Turns the global adapter and the sites' updates into the next global adapter."""

    name: str = "strategy"

    @abc.abstractmethod
    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        """Return the next global adapter.

        Parameters
        ----------
        global_state
            The adapter the sites started this round from.
        updates
            The validated updates of this round (at least one).
        """


def check_finite(state: AdapterState) -> None:
    """Raise ``FloatingPointError`` naming the first tensor with a NaN or infinity."""
    for name, tensor in state.items():
        if not bool(torch.isfinite(tensor).all()):
            raise FloatingPointError(f"aggregate tensor {name} has non-finite values")
