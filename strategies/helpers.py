"""Arithmetic shared by the strategies."""

from __future__ import annotations

import torch

from fedlora.adapters import AdapterState
from fedlora.errors import AdapterError
from strategies.base import SiteUpdate


def example_weights(updates: list[SiteUpdate]) -> list[float]:
    """Each site's share of the examples in this round (sums to 1).

    Raises
    ------
    AdapterError
        When no update carries any example.
    """
    total = sum(update.num_examples for update in updates)
    if total <= 0:
        raise AdapterError("cannot weight updates: the sites reported no training examples")
    return [update.num_examples / total for update in updates]


def weighted_mean(states: list[AdapterState], weights: list[float]) -> AdapterState:
    """Per-tensor weighted mean, accumulated in float64 and cast back to each tensor's dtype."""
    result: AdapterState = {}
    for name, reference in states[0].items():
        accumulator = torch.zeros(reference.shape, dtype=torch.float64)
        for state, weight in zip(states, weights, strict=True):
            accumulator += weight * state[name].to(torch.float64)
        result[name] = accumulator.to(reference.dtype)
    return result
