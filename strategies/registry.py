"""Strategies by name."""

from __future__ import annotations

from collections.abc import Callable

from fedlora.errors import ConfigError
from strategies.base import Strategy
from strategies.fedavg import FedAvg

_STRATEGIES: dict[str, Callable[[], Strategy]] = {"fedavg": FedAvg}


def strategy_names() -> tuple[str, ...]:
    """Names accepted by :func:`get_strategy`."""
    return tuple(sorted(_STRATEGIES))


def get_strategy(name: str) -> Strategy:
    """Build the strategy called ``name``.

    Raises
    ------
    ConfigError
        For an unknown name, listing the valid ones.
    """
    try:
        return _STRATEGIES[name]()
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; valid: {', '.join(strategy_names())}"
        ) from None
