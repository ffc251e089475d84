"""Coordinate-wise median of the sites' adapters, and the array conversions the robust rules share.

The robust strategies (:mod:`fedlora.strategies.median`, :mod:`fedlora.strategies.trimmed_mean`,
:mod:`fedlora.strategies.krum`) run Flower's NumPy aggregation functions, which take one list of
arrays per client. :func:`updates_as_arrays` turns the updates into such lists (float64, in the
tensor order of the global adapter, after checking every update against it) and
:func:`arrays_as_state` turns the result back into an adapter of the global adapter's dtypes.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.common import NDArrays
from flwr.server.strategy.aggregate import aggregate_median

from fedlora.adapters import AdapterState, check_compatible
from fedlora.errors import AdapterError
from fedlora.strategies.base import SiteUpdate, Strategy, check_finite


def updates_as_arrays(global_state: AdapterState, updates: list[SiteUpdate]) -> list[NDArrays]:
    """Each update as a list of float64 arrays, in the tensor order of ``global_state``.

    Parameters
    ----------
    global_state
        The adapter the sites started from; it fixes the tensor names, order and shapes.
    updates
        The round's updates.

    Returns
    -------
    list[NDArrays]
        One list per update (in the order of ``updates``), one array per tensor. The arrays are
        copies: numpy has no bfloat16, and Flower's functions may work in place.

    Raises
    ------
    AdapterError
        When there is no update, or an update lacks a tensor of ``global_state``, has another
        one, or has one of another shape or dtype (naming the site).
    """
    if not updates:
        raise AdapterError("no update to aggregate")
    names = list(global_state)
    arrays: list[NDArrays] = []
    for update in updates:
        try:
            check_compatible(global_state, update.state)
        except AdapterError as exc:
            raise AdapterError(f"site {update.site}: {exc}") from exc
        arrays.append(
            [
                update.state[name].detach().to(device="cpu", dtype=torch.float64).numpy().copy()
                for name in names
            ]
        )
    return arrays


def arrays_as_state(global_state: AdapterState, arrays: NDArrays) -> AdapterState:
    """The inverse of :func:`updates_as_arrays` for one aggregate.

    Parameters
    ----------
    global_state
        Gives each tensor's name (by position), dtype and device.
    arrays
        One array per tensor of ``global_state``, in its order.

    Returns
    -------
    AdapterState
        The arrays cast to the dtype and device of the matching global tensor.
    """
    return {
        name: torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).to(
            device=reference.device, dtype=reference.dtype
        )
        for (name, reference), array in zip(global_state.items(), arrays, strict=True)
    }


class CoordinateMedian(Strategy):
    """The coordinate-wise median of the sites' adapter tensors (Yin et al. 2018).

    Every coordinate of the next global adapter is the median of that coordinate over the
    round's updates; for an even number of sites it is the mean of the two middle values
    (NumPy's median). The median is **unweighted**: ``num_examples`` is ignored, since letting a
    site's claimed example count move the median would hand an attacker the weight it claims.

    The states are aggregated directly. The median commutes with adding the global adapter to
    every update, so this equals the global adapter plus the median of the deltas.

    Computed by Flower's ``aggregate_median`` in float64, cast back to each tensor's dtype.
    """

    name = "median"

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        """Return the coordinate-wise median of the updates (see the class docstring).

        Raises
        ------
        AdapterError
            When an update does not match ``global_state`` or there is none.
        FloatingPointError
            When the median has a non-finite value.
        """
        arrays = updates_as_arrays(global_state, updates)
        median = aggregate_median([(update_arrays, 1) for update_arrays in arrays])
        result = arrays_as_state(global_state, median)
        check_finite(result)
        return result
