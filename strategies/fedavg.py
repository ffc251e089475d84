"""FedAvg over adapters: the example-weighted mean of the sites' adapter tensors."""

from __future__ import annotations

from fedlora.adapters import AdapterState
from fedlora.strategies.base import SiteUpdate, Strategy, check_finite
from fedlora.strategies.helpers import example_weights, weighted_mean


class FedAvg(Strategy):
    """McMahan et al.'s FedAvg applied to each adapter tensor (LoRA factors and heads).

    Each tensor of the next global adapter is ``sum_i n_i * t_i / sum_i n_i`` over the sites
    ``i`` of the round, ``n_i`` being the site's training examples.
    """

    name = "fedavg"

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        """Return the example-weighted mean of the updates (see the class docstring)."""
        aggregate = weighted_mean([update.state for update in updates], example_weights(updates))
        check_finite(aggregate)
        return aggregate
