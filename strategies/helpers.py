"""Arithmetic shared by the strategies."""

from __future__ import annotations

import torch

from fedlora.adapters import AdapterState
from fedlora.errors import AdapterError
from fedlora.strategies.base import SiteUpdate


def example_weights(updates: list[SiteUpdate]) -> list[float]:
    """Each site's share of the examples in this round (each >= 0, summing to 1).

    Raises
    ------
    AdapterError
        When an update carries a negative example count (its weight would push the mean
        outside the updates, past any norm bound) or none carries any example.
    """
    negative = [update.site for update in updates if update.num_examples < 0]
    if negative:
        raise AdapterError(f"cannot weight updates: negative example counts from {negative}")
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
