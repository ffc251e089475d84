"""Every incoming update is checked here before any strategy sees it."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fedlora.adapters import AdapterState, check_compatible
from fedlora.errors import AdapterError


class UpdateRejectedError(AdapterError):
    """A site's update failed validation; the message is the reason, for logs and metrics."""


def update_norm(reference: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of ``update − reference`` over all tensors (float64)."""
    total = 0.0
    for name, tensor in update.items():
        difference = tensor.to(torch.float64) - reference[name].to(torch.float64)
        total += float(torch.sum(difference * difference))
    return math.sqrt(total)


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
        Reject when ``‖update − reference‖₂`` exceeds it; 0 disables the bound.

    Returns
    -------
    float
        The update's norm ``‖update − reference‖₂``.

    Raises
    ------
    UpdateRejectedError
        Naming the first tensor that is missing, unexpected, mis-shaped, of another dtype or
        non-finite, or giving the norm and the bound.
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
    return norm
