"""Aggregation of adapter updates, one strategy per module, selectable by name."""

from fedlora.strategies.base import SiteUpdate, Strategy, SummedUpdate
from fedlora.strategies.registry import (
    build_strategy,
    get_strategy,
    strategy_for_run,
    strategy_names,
)

__all__ = [
    "SiteUpdate",
    "Strategy",
    "SummedUpdate",
    "build_strategy",
    "get_strategy",
    "strategy_for_run",
    "strategy_names",
]
