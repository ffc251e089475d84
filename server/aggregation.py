"""A round's aggregation: each update validated, the aggregate checked before it is saved.

Each site's update is checked against what the strategy says it must match
(``Strategy.update_reference``: names, shapes, dtypes, and where its norm is measured from),
within the run's ``update-norm-bound`` and the built-in limit
(:mod:`fedlora.strategies.validation`); then what enters the example-weighted aggregate is
bounded, and the strategy's aggregate must be finite and within the built-in limit.
"""

from __future__ import annotations

import logging

from fedlora.adapters import AdapterState
from fedlora.errors import AdapterError
from fedlora.server.exchange import PhaseResult
from fedlora.strategies import SiteUpdate, Strategy
from fedlora.strategies.validation import (
    UpdateRejectedError,
    check_weighted_norm,
    effective_bound,
    validate_aggregate,
    validate_update,
)

logger = logging.getLogger(__name__)

BoundedUpdate = tuple[SiteUpdate, float, float]
"""A validated update with its norm and the bound it was held to."""


def validated_updates(
    strategy: Strategy, global_state: AdapterState, trained: PhaseResult, norm_bound: float
) -> list[BoundedUpdate]:
    """The updates of ``trained``'s replies that pass validation, in reply order.

    Each rejected one is logged and kept in ``trained.rejected`` with the reason.

    Parameters
    ----------
    strategy
        Says what each update must match (``update_reference``).
    global_state
        The global adapter of this round.
    trained
        The round's train exchange.
    norm_bound
        The run's ``update-norm-bound`` (0: only the built-in limit).
    """
    updates = []
    for site, reply in trained.replies.items():
        try:
            if reply.state is None:
                raise UpdateRejectedError("the reply carries no adapter")
            reference = strategy.update_reference(reply.state, global_state)
            norm = validate_update(reference, reply.state, norm_bound=norm_bound)
        except AdapterError as exc:
            logger.warning("site %s: update rejected: %s", site, exc)
            trained.rejected[site] = str(exc)
            continue
        update = SiteUpdate(site=site, state=reply.state, num_examples=reply.num_examples)
        updates.append((update, norm, effective_bound(reference, norm_bound)))
    return updates


def checked_aggregate(
    strategy: Strategy, global_state: AdapterState, updates: list[BoundedUpdate]
) -> AdapterState:
    """The strategy's aggregate of ``updates``, checked before it may be saved.

    Raises
    ------
    AggregateRejectedError
        When what enters the aggregate exceeds the bound, or the aggregate is not finite or
        beyond the built-in limit.
    AdapterError, FloatingPointError
        As the strategy raises them.
    """
    check_weighted_norm(
        [norm for _, norm, _ in updates],
        [update.num_examples for update, _, _ in updates],
        [bound for _, _, bound in updates],
    )
    aggregate = strategy.aggregate(global_state, [u for u, _, _ in updates])
    validate_aggregate(global_state, aggregate)
    return aggregate
