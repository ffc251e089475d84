"""Aggregation of adapter updates, one strategy per module, selectable by name."""

from strategies.base import SiteUpdate, Strategy
from strategies.registry import get_strategy, strategy_names

__all__ = ["SiteUpdate", "Strategy", "get_strategy", "strategy_names"]
