"""Coordinate-wise trimmed mean of the sites' adapters."""

from __future__ import annotations

from flwr.server.strategy.aggregate import aggregate_trimmed_avg

from fedlora.adapters import AdapterState
from fedlora.errors import AdapterError, ConfigError
from fedlora.strategies.base import SiteUpdate, Strategy, check_finite
from fedlora.strategies.median import arrays_as_state, updates_as_arrays


class TrimmedMean(Strategy):
    """The coordinate-wise β-trimmed mean of the sites' adapter tensors (Yin et al. 2018).

    For ``n`` updates and ``k = ⌊β·n⌋``, every coordinate of the next global adapter is the
    plain mean of that coordinate's values once its ``k`` largest and ``k`` smallest values are
    dropped. Like the median it is **unweighted** (``num_examples`` is ignored); with ``β = 0``
    it is the unweighted mean of the updates.

    The states are aggregated directly; trimming and averaging commute with adding the global
    adapter to every update, so this equals the global adapter plus the trimmed mean of the
    deltas.

    Computed by Flower's ``aggregate_trimmed_avg`` (which cuts ``int(β·n)`` per side, i.e.
    ``⌊β·n⌋``) in float64, cast back to each tensor's dtype.

    Parameters
    ----------
    trim_fraction
        β, the fraction of the updates dropped at *each* end, in ``[0, 0.5)``.

    Raises
    ------
    ConfigError
        When ``trim_fraction`` is outside ``[0, 0.5)``.
    """

    name = "trimmed-mean"

    def __init__(self, trim_fraction: float = 0.1) -> None:
        if not 0.0 <= trim_fraction < 0.5:
            raise ConfigError(f"trim fraction must be in [0, 0.5), got {trim_fraction}")
        self._trim_fraction = float(trim_fraction)

    @property
    def trim_fraction(self) -> float:
        """β, the fraction of the updates dropped at each end."""
        return self._trim_fraction

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        """Return the coordinate-wise trimmed mean of the updates (see the class docstring).

        Raises
        ------
        AdapterError
            When trimming leaves no value (only possible without updates, as ``β < 0.5``), or
            an update does not match ``global_state``.
        FloatingPointError
            When the trimmed mean has a non-finite value.
        """
        count = len(updates)
        # Same cut as Flower's _trim_mean; checked here because Flower would return NaN.
        cut = int(self._trim_fraction * count)
        if count - 2 * cut < 1:
            raise AdapterError(
                f"trimmed mean: dropping the {cut} largest and {cut} smallest of {count} "
                f"updates (trim fraction {self._trim_fraction}) leaves no value to average"
            )
        arrays = updates_as_arrays(global_state, updates)
        trimmed = aggregate_trimmed_avg(
            [(update_arrays, 1) for update_arrays in arrays], self._trim_fraction
        )
        result = arrays_as_state(global_state, trimmed)
        check_finite(result)
        return result
