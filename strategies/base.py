"""The interface every aggregation strategy implements: ``aggregate`` and the round loop's hooks.

The round loop (:class:`fedlora.server.federation.Federation`) never asks which strategy it
runs; it calls these hooks, in this order:

1. :meth:`Strategy.prepare` once, with the initial global adapter, when the run is built;
2. :meth:`Strategy.open_run` once, with the run directory, before the first round (a resumed
   run too, after :meth:`load_state` where the strategy keeps state);
3. every round, :meth:`Strategy.update_reference` for each site's update (what it must match
   and where its norm is measured from), then :meth:`Strategy.aggregate` over the validated
   updates, then :meth:`Strategy.round_metrics` for the round's ``metrics.jsonl`` line.

The defaults do the plain thing (a site sends a whole adapter like the global one; nothing
to prepare, record or report), so a strategy overrides only what it does differently. A
strategy whose state must survive a restart also has ``save_state`` / ``load_state``
(:class:`fedlora.server.checkpoint.StatefulStrategy`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedlora.adapters import AdapterState


@dataclass(frozen=True)
class SiteUpdate:
    """One site's adapter after local training, with its weight in the aggregate."""

    site: str
    state: AdapterState
    num_examples: int


@dataclass(frozen=True)
class SummedUpdate(SiteUpdate):
    """Several sites' updates as one: their mean, opened only as a sum (secure aggregation).

    ``sites`` are the sites in it. With central DP each site clipped its own update, measured
    from ``start`` (the global adapter as the sites received it), to ``clip_norm`` before it
    was masked, and every site weighed the same (``fedlora.server.secure_round``).
    """

    sites: tuple[str, ...] = ()
    start: AdapterState | None = None
    clip_norm: float | None = None


class Strategy(abc.ABC):
    """Turns the global adapter and the sites' updates into the next global adapter."""

    name: str = "strategy"

    def prepare(self, global_state: AdapterState) -> None:
        """Adopt the initial global adapter before any round; refuse one the strategy cannot run.

        Called once when the run is built, so that an impossible combination (e.g. a LoRA
        rank above a module's dimensions) fails before any site trains. Default: nothing.

        Raises
        ------
        FedloraError
            When the strategy cannot aggregate adapters of this layout.
        """
        del global_state

    def open_run(self, run_dir: Path) -> None:
        """Attach to the run directory ``run_dir`` before the first round (default: nothing).

        Where a strategy keeps records of its own (central DP's server privacy ledger under
        ``run_dir/privacy``), it opens them here; a resumed run reopens and continues them.
        """
        del run_dir

    def update_reference(self, update: AdapterState, global_state: AdapterState) -> AdapterState:
        """What a site's ``update`` must match (names, shapes, dtypes) and its norm start from.

        Default: the global adapter the site received. A strategy whose sites send something
        else (only the trained tensors; factors of their own rank) returns that instead.

        Parameters
        ----------
        update
            The site's tensors, not yet validated (only its layout may be read here).
        global_state
            The global adapter of this round.
        """
        del update
        return global_state

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

    def round_metrics(self) -> dict[str, Any]:
        """Entries of the strategy's own for the round's ``metrics.jsonl`` line (default: none).

        Called after :meth:`aggregate`, for every round that had updates; e.g. central DP's
        ``central-privacy``.
        """
        return {}


def check_finite(state: AdapterState) -> None:
    """Raise ``FloatingPointError`` naming the first tensor with a NaN or infinity."""
    for name, tensor in state.items():
        if not bool(torch.isfinite(tensor).all()):
            raise FloatingPointError(f"aggregate tensor {name} has non-finite values")
