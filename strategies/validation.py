"""Every update is checked here before any strategy sees it; every aggregate before it is saved.

Two bounds apply to an update's distance ``‖update − start‖₂`` from the tensors the site
started from:

- the run's ``update-norm-bound`` when it is > 0 (the operator's choice);
- always, a built-in limit on what no honest round produces, :func:`absurd_norm_limit`:
  ``NORM_MULTIPLE · ‖start‖₂ + RMS_FLOOR · √n`` over the ``n`` values sent. The first term
  lets an update grow with the adapter it starts from; the floor lets an adapter that starts
  at zero (LoRA's B, FFA-LoRA's whole update in round 1) move every value by up to
  ``RMS_FLOOR`` (root mean square). Measured on 580 honest updates and aggregates (tiny-llama
  SFT and tiny-bert classification; every strategy, central DP fixed and adaptive; DP on and
  off; learning rates 0.01 to 0.5, the largest diverging at up to 22 x its start per round):
  at most 22 x the start's norm and an RMS change of 1.5, at least 8.6 times below the limit
  (at 0.01 and 0.05: at most 2.6 x and 0.18). A finite but absurd update, which would
  otherwise pass every check and wreck the global adapter (every value moved by 100 or more,
  or one value set to float32's 3e38), is far above it. It is a sanity limit, not a defence
  against a careful attacker: that is ``update-norm-bound`` and the robust strategies.

What enters the aggregate is bounded too: the example weights must be non-negative with a positive
sum (:func:`fedlora.strategies.helpers.example_weights`), and ``Σ |wᵢ| · ‖updateᵢ − startᵢ‖``, which
bounds the distance of the weighted mean from the start, must stay within the largest bound the
updates were held to (:func:`check_weighted_norm`). Last, the strategy's aggregate must be finite
and within :func:`absurd_norm_limit` of the global adapter (:func:`validate_aggregate`; server
optimisers, robust statistics, central-DP noise and SVD re-factorisation move it legitimately beyond
the mean, but never that far), or the round fails and nothing is saved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from fedlora.adapters import AdapterState, check_compatible
from fedlora.errors import AdapterError, FedloraError

NORM_MULTIPLE = 100.0
"""Built-in limit: how many times the starting adapter's norm an update may move."""
RMS_FLOOR = 10.0
"""Built-in limit: the root-mean-square change per value always allowed."""


class UpdateRejectedError(AdapterError):
    """A site's update failed validation; the message is the reason, for logs and metrics."""


class AggregateRejectedError(FedloraError):
    """A round's aggregate failed its check: it is not saved and the round fails."""


def state_norm(state: Mapping[str, torch.Tensor]) -> float:
    """L2 norm over all tensors of ``state`` (float64)."""
    return math.sqrt(sum(float(torch.sum(t.to(torch.float64) ** 2)) for t in state.values()))


def update_norm(reference: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of ``update − reference`` over all tensors (float64)."""
    total = 0.0
    for name, tensor in update.items():
        difference = tensor.to(torch.float64) - reference[name].to(torch.float64)
        total += float(torch.sum(difference * difference))
    return math.sqrt(total)


def absurd_norm_limit(reference: Mapping[str, torch.Tensor]) -> float:
    """The built-in limit on a distance from ``reference``: ``100 ‖reference‖₂ + 10 √n``.

    See the module docstring for the rule and the measurements behind it.
    """
    values = sum(t.numel() for t in reference.values())
    return NORM_MULTIPLE * state_norm(reference) + RMS_FLOOR * math.sqrt(values)


def effective_bound(reference: Mapping[str, torch.Tensor], norm_bound: float) -> float:
    """The bound an update from ``reference`` is held to: the smaller of the two bounds."""
    limit = absurd_norm_limit(reference)
    return min(norm_bound, limit) if norm_bound > 0 else limit


def validate_update(
    reference: Mapping[str, torch.Tensor], update: AdapterState, *, norm_bound: float = 0.0
) -> float:
    """Check one site's update against what it was expected to send.

    Parameters
    ----------
    reference
        The tensors the site started the round from, with the names, shapes and dtypes its
        update must have (for FFA-LoRA only the trained ones).
    update
        The site's tensors.
    norm_bound
        Reject when ``‖update − reference‖₂`` exceeds it; 0: no bound of the run's own. The
        built-in :func:`absurd_norm_limit` applies in any case.

    Returns
    -------
    float
        The update's norm ``‖update − reference‖₂``.

    Raises
    ------
    UpdateRejectedError
        Naming the first tensor that is missing, unexpected, mis-shaped, of another dtype or
        non-finite, or giving the norm and the bound it exceeds.
    """
    try:
        check_compatible(reference, update)
    except AdapterError as error:
        raise UpdateRejectedError(str(error)) from None
    for name, tensor in update.items():
        if not bool(torch.isfinite(tensor).all()):
            raise UpdateRejectedError(f"adapter tensor {name} has NaN or infinite values")
    norm = update_norm(reference, update)
    if norm_bound > 0 and norm > norm_bound:
        raise UpdateRejectedError(
            f"update norm {norm:.4g} exceeds update-norm-bound {norm_bound:g}"
        )
    limit = absurd_norm_limit(reference)
    if not norm <= limit:
        raise UpdateRejectedError(
            f"update norm {norm:.4g} exceeds the built-in limit {limit:.4g} "
            f"({NORM_MULTIPLE:g} x the norm it started from + {RMS_FLOOR:g} x sqrt(values))"
        )
    return norm


def check_weighted_norm(
    norms: Sequence[float], num_examples: Sequence[int], bounds: Sequence[float]
) -> float:
    """Bound what enters an example-weighted aggregate: ``Σ |wᵢ| · normᵢ <= max(bounds)``.

    ``wᵢ = nᵢ / Σ n``. With non-negative weights the sum is a convex combination of the
    updates' norms, never above the largest; a negative count would make it exceed it.

    Returns
    -------
    float
        ``Σ |wᵢ| · normᵢ``, an upper bound of the weighted mean's distance from the start.

    Raises
    ------
    AggregateRejectedError
        When a count is negative, they sum to 0, or the sum exceeds the largest bound.
    """
    if any(count < 0 for count in num_examples) or sum(num_examples) <= 0:
        raise AggregateRejectedError(
            f"the example counts {list(num_examples)} must be >= 0 with a positive sum"
        )
    total = sum(num_examples)
    weighted = sum(abs(n / total) * norm for n, norm in zip(num_examples, norms, strict=True))
    bound = max(bounds)
    if not weighted <= bound * (1 + 1e-9):
        raise AggregateRejectedError(
            f"the weighted updates move {weighted:.4g} from the start, more than the bound "
            f"{bound:.4g}"
        )
    return weighted


def validate_aggregate(global_state: Mapping[str, torch.Tensor], aggregate: AdapterState) -> float:
    """Check a round's aggregate before it is saved: finite, within the built-in limit.

    Returns
    -------
    float
        ``‖aggregate − global‖₂``.

    Raises
    ------
    AggregateRejectedError
        Naming a non-finite tensor, a tensor that does not match the global adapter, or the
        distance and the limit.
    """
    try:
        check_compatible(global_state, aggregate)
    except AdapterError as error:
        raise AggregateRejectedError(f"the aggregate does not fit the adapter: {error}") from None
    for name, tensor in aggregate.items():
        if not bool(torch.isfinite(tensor).all()):
            raise AggregateRejectedError(f"aggregate tensor {name} has NaN or infinite values")
    distance = update_norm(global_state, aggregate)
    limit = absurd_norm_limit(global_state)
    if not distance <= limit:
        raise AggregateRejectedError(
            f"the aggregate moves {distance:.4g} from the global adapter, more than the "
            f"built-in limit {limit:.4g}"
        )
    return distance
