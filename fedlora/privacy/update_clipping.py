"""Client-level clipping of one site's update: where the coordinator clips, or the site itself.

Central DP (:class:`fedlora.strategies.central_dp.CentralDP`) bounds each site's influence by
clipping its update ``d = state - start`` to L2 norm ``C``, flat over all adapter tensors
(Flower's ``adaptive_clip_inputs_inplace``). In a plain round the coordinator clips every
update it receives (:func:`fedlora.strategies.dp_clipping.clip_updates`); with secure
aggregation it never sees one, so each site clips its own, with this same function, before
quantising and masking it (:func:`clip_for_secure_sum`).

Why a site clips to a little less than ``C``
    The secure sum carries each site's values rounded to the quantiser's grid; the rounding is
    a deterministic function of the site's update and so part of its contribution. With each
    site's weight fixed to ``1 / sites`` (the coordinator announces ``sites`` as the round's
    total, whoever takes part), a value is off by at most half a step ``sites · range / 2^bits``
    (:class:`fedlora.secagg.Quantiser`), and the ``D`` values of an update by at most
    ``η = sqrt(D) · (1/2 + 2^-20) · sites · range / 2^bits`` in L2 norm (the ``2^-20`` step
    covers the float64 products before rounding). A site clips to ``C - η``: its contribution
    as the coordinator decodes it then has norm at most ``C``, the sensitivity the noise and
    the accountant assume, so ε is exactly the plain path's. ``η`` is independent of who else
    takes part, since no site's weight depends on the others.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
from flwr.supercore.differential_privacy import adaptive_clip_inputs_inplace, get_norm

from fedlora.adapters import AdapterState, check_compatible
from fedlora.errors import ConfigError
from fedlora.secagg.quantise import Quantiser

Arrays = list[npt.NDArray[np.float64]]

ROUNDING_SLACK = 0.5 + 2.0**-20
"""Largest rounding error of one value, in quantiser steps (see the module docstring)."""


def to_numpy(tensor: torch.Tensor) -> npt.NDArray[np.float64]:
    """A float64 copy of ``tensor`` (numpy has no bfloat16; the copy is never shared)."""
    array: npt.NDArray[np.float64] = (
        tensor.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
    )
    return array


def to_state(names: list[str], arrays: Arrays) -> AdapterState:
    """``arrays`` as an adapter state under ``names`` (float64 tensors sharing their memory)."""
    return {name: torch.from_numpy(array) for name, array in zip(names, arrays, strict=True)}


def clip_delta(
    start: AdapterState, state: AdapterState, clip_norm: float, *, site: str
) -> tuple[Arrays, Arrays, bool]:
    """Clip ``state - start`` to L2 norm ``clip_norm``, flat over all tensors.

    Parameters
    ----------
    start
        The adapter the site trained from; its tensor order is kept.
    state
        The site's adapter after training (same names, shapes and dtypes).
    clip_norm
        ``C`` (> 0).
    site
        Named in errors.

    Returns
    -------
    tuple
        ``start`` and the clipped update, as float64 arrays in ``start``'s order, and whether
        the update was clipped (its norm was above ``C``).

    Raises
    ------
    AdapterError
        For a state that does not fit ``start``.
    FloatingPointError
        For a state with NaN or infinite values (it cannot be clipped).
    """
    check_compatible(start, state)
    names = list(start)
    base = [to_numpy(start[name]) for name in names]
    delta = [to_numpy(state[name]) - g for name, g in zip(names, base, strict=True)]
    norm = get_norm(delta)
    if not math.isfinite(norm):
        bad = next(n for n, d in zip(names, delta, strict=True) if not np.isfinite(d).all())
        raise FloatingPointError(
            f"site {site} sent non-finite values in {bad}; it cannot be clipped"
        )
    # A zero update is within any norm; Flower's helper would divide by its norm.
    clipped = norm > 0 and bool(adaptive_clip_inputs_inplace(delta, clip_norm))
    return base, delta, clipped


def quantisation_slack(values: int, sites: int, quantiser: Quantiser) -> float:
    """``η``: the largest L2 norm the secure sum's rounding adds to one site's update.

    ``values`` values encoded with weight ``1 / sites`` (module docstring).
    """
    step = sites / quantiser.scale
    return math.sqrt(values) * ROUNDING_SLACK * step


def clip_for_secure_sum(
    start: AdapterState,
    state: AdapterState,
    clip_norm: float,
    *,
    sites: int,
    range_: float,
    site: str,
) -> AdapterState:
    """A site's state with its update clipped to ``C - η``, before it is quantised and masked.

    Parameters
    ----------
    start
        The global adapter as the site received it (what it trained from).
    state
        The site's adapter after training.
    clip_norm
        The run's ``central-clip-norm`` ``C``.
    sites
        The federation's size: every site's weight in the sum is ``1 / sites``.
    range_
        The run's ``secure-aggregation-range``.
    site
        Named in errors.

    Returns
    -------
    AdapterState
        ``start + clip(state - start)`` in float64 (no cast rounds it before the quantiser).

    Raises
    ------
    ConfigError
        When ``C`` is not a positive number, ``sites < 2``, or the rounding ``η`` is not
        below ``C`` (the update could not be sent at all): the message says what to change.
    AdapterError, FloatingPointError
        As :func:`clip_delta`.
    """
    if not (clip_norm > 0 and math.isfinite(clip_norm)):
        raise ConfigError(f"central-clip-norm must be a positive number, got {clip_norm}")
    if isinstance(sites, bool) or not isinstance(sites, int) or sites < 2:
        raise ConfigError(f"secure aggregation with central DP needs sites >= 2, got {sites}")
    values = sum(tensor.numel() for tensor in start.values())
    slack = quantisation_slack(values, sites, Quantiser(range_))
    if not slack < clip_norm:
        raise ConfigError(
            f"central-clip-norm {clip_norm:g} is not above the secure sum's rounding {slack:.3g} "
            f"for {values} values from {sites} sites; raise central-clip-norm or lower "
            "secure-aggregation-range"
        )
    base, delta, _ = clip_delta(start, state, clip_norm - slack, site=site)
    return to_state(list(start), [g + d for g, d in zip(base, delta, strict=True)])
