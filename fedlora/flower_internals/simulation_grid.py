"""Whether a ServerApp runs in Flower's simulation, where every SuperNode exists at once.

Under ``flwr run`` with a simulation connection (``num-supernodes``), Flower registers all the
run's nodes in one loop right after starting the ServerApp, and never more: the node count is
known as soon as the first node is, so a ``sites`` that differs can be refused at once instead
of after ``node-wait-timeout``. In a deployment nodes come and go; there the ServerApp waits.
The simulation's grid is Flower's ``InMemoryGrid`` (``flwr.superlink.grid``, not public API).
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["is_simulation_grid", "settled_node_count"]


def is_simulation_grid(grid: Any) -> bool:
    """Whether ``grid`` is Flower's simulation grid (``False`` when this Flower has none)."""
    try:
        from flwr.superlink.grid import InMemoryGrid
    except ImportError:
        return False
    return isinstance(grid, InMemoryGrid)


def settled_node_count(grid: Any, timeout: float, settle: float = 0.3) -> int:
    """The node count of a simulation grid once nodes appeared and stopped appearing.

    Parameters
    ----------
    grid : Any
        A grid with ``get_node_ids()``.
    timeout : float
        Longest wait for the first node, in seconds; 0 nodes are returned after it.
    settle : float
        Seconds the count must stay unchanged.
    """
    deadline = time.monotonic() + timeout
    count, since = len(list(grid.get_node_ids())), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = len(list(grid.get_node_ids()))
        if now != count:
            count, since = now, time.monotonic()
        elif count and time.monotonic() - since >= settle:
            break
    return count
