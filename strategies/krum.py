"""Krum and Multi-Krum (Blanchard et al. 2017) over the sites' adapters."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from flwr.common import NDArrays
from flwr.server.strategy.aggregate import aggregate

from fedlora.adapters import AdapterState
from fedlora.errors import AdapterError, ConfigError
from fedlora.strategies.base import SiteUpdate, Strategy, check_finite
from fedlora.strategies.helpers import example_weights
from fedlora.strategies.median import arrays_as_state, updates_as_arrays


class Krum(Strategy):
    """Krum (``multi=1``) and Multi-Krum (``multi=m > 1``), Blanchard et al. 2017.

    With ``n`` updates of which at most ``f`` (``byzantine``) may be arbitrary, each update
    ``i`` is scored by ``s(i) = sum_j ||x_i - x_j||^2`` over its ``n - f - 2`` nearest other
    updates ``j``, the distance being the L2 distance over all adapter tensors concatenated.
    Krum returns the update of lowest score; Multi-Krum returns the **example-weighted** mean
    of the ``m`` updates of lowest scores (``num_examples`` matters only there, after the
    selection, which is unweighted). Equal scores are broken by the order of the updates. The
    chosen sites, best score first, are in :attr:`last_selected` after each aggregate, and all
    scores (in the order of the updates) in :attr:`last_scores`.

    The states are scored and averaged directly: the distance between two states is the
    distance between their deltas from the global adapter, and a mean with weights summing to
    one of the states is the global adapter plus that mean of the deltas.

    An update with NaN or infinite values gets an infinite distance to every other update, so
    it is not selected unless there is no alternative (the aggregate then fails
    :func:`~fedlora.strategies.base.check_finite`).

    Why not Flower's ``aggregate_krum``
        It returns only the parameters, never which clients it chose, so the selection could
        not be reported (matching the result back to an update is ambiguous for identical
        updates and impossible for the Multi-Krum mean); it does not refuse ``n < 2f + 3`` but
        silently uses ``max(1, n - f - 2)`` neighbours; and ``nan`` distances would make its
        sorting arbitrary. Scoring and selection are therefore done here; the Multi-Krum mean
        of the selected updates is Flower's example-weighted ``aggregate``, as in
        ``aggregate_krum``. Everything is computed in float64 and cast back to each tensor's
        dtype.

    Parameters
    ----------
    byzantine
        ``f``, the number of arbitrary (Byzantine) updates to tolerate; ``>= 0``.
    multi
        ``m``, the number of updates selected and averaged; ``1`` is plain Krum.

    Raises
    ------
    ConfigError
        When ``byzantine < 0`` or ``multi < 1`` (or either is not an integer).
    """

    def __init__(self, byzantine: int = 0, multi: int = 1) -> None:
        if isinstance(byzantine, bool) or not isinstance(byzantine, int) or byzantine < 0:
            raise ConfigError(f"krum byzantine count must be an integer >= 0, got {byzantine}")
        if isinstance(multi, bool) or not isinstance(multi, int) or multi < 1:
            raise ConfigError(
                f"krum multi (updates to select) must be an integer >= 1, got {multi}"
            )
        self.byzantine = byzantine
        self.multi = multi
        self.name = "krum" if multi == 1 else "multi-krum"
        self.last_selected: list[str] = []
        self.last_scores: list[float] = []

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        """Return the Krum or Multi-Krum aggregate (see the class docstring).

        Raises
        ------
        AdapterError
            When there are fewer than ``2f + 3`` updates, fewer than ``m``, the selected
            updates carry no examples (Multi-Krum), or an update does not match
            ``global_state``.
        FloatingPointError
            When the aggregate has a non-finite value.
        """
        self.last_selected = []
        self.last_scores = []
        count, byzantine, multi = len(updates), self.byzantine, self.multi
        if count < 2 * byzantine + 3:
            raise AdapterError(
                f"{self.name} with byzantine={byzantine} needs at least 2f + 3 = "
                f"{2 * byzantine + 3} updates, got {count}"
            )
        if multi > count:
            raise AdapterError(f"{self.name} cannot select {multi} of {count} updates")
        arrays = updates_as_arrays(global_state, updates)

        scores = _krum_scores(_squared_distances(arrays), count - byzantine - 2)
        chosen = [int(index) for index in np.argsort(scores, kind="stable")[:multi]]
        if multi == 1:
            result = arrays_as_state(global_state, arrays[chosen[0]])
        else:
            selected = [updates[index] for index in chosen]
            example_weights(selected)  # refuses selected updates that carry no example
            mean = aggregate([(arrays[index], updates[index].num_examples) for index in chosen])
            result = arrays_as_state(global_state, mean)
        self.last_scores = [float(score) for score in scores]
        self.last_selected = [updates[index].site for index in chosen]
        check_finite(result)
        return result


def _squared_distances(arrays: list[NDArrays]) -> npt.NDArray[np.float64]:
    """Pairwise squared L2 distances over all tensors, as Gram-matrix products.

    ``||x_i - x_j||^2 = ||x_i||^2 + ||x_j||^2 - 2 x_i . x_j``, the Gram matrix summed tensor by
    tensor (one BLAS product per tensor, no copy of every update at once). The Gram form loses
    digits when two updates are close compared with their norms (the states, not their deltas,
    are compared here), so each tensor is first centred on its mean over the updates (distances
    do not change under a shift), and each pair whose Gram-form distance is so small against its
    two squared norms that rounding could exceed :data:`_RELATIVE_ERROR` of it is computed again
    directly from its difference (:func:`_recompute_ratio`). A row with a NaN or infinite value
    is at an infinite distance from every other row, as a NaN distance would otherwise make the
    sorting arbitrary.
    """
    count = len(arrays)
    distances = np.full((count, count), np.inf, dtype=np.float64)
    kept = [i for i, update in enumerate(arrays) if all(np.isfinite(t).all() for t in update)]
    if kept:
        gram = np.zeros((len(kept), len(kept)), dtype=np.float64)
        size = 0
        for index in range(len(arrays[kept[0]])):
            stacked = np.stack([arrays[i][index].ravel() for i in kept])
            stacked -= stacked.mean(axis=0)
            gram += stacked @ stacked.T
            size += stacked.shape[1]
        norms = np.diag(gram).copy()
        scale = norms[:, None] + norms[None, :]
        with np.errstate(invalid="ignore", over="ignore"):
            block = np.maximum(scale - 2.0 * gram, 0.0)
            suspect = np.triu(block < _recompute_ratio(size) * scale, k=1)
            for i, j in zip(*np.nonzero(suspect), strict=True):
                block[i, j] = block[j, i] = _direct(arrays[kept[i]], arrays[kept[j]])
        block[np.isnan(block)] = np.inf
        distances[np.ix_(kept, kept)] = block
    np.fill_diagonal(distances, 0.0)
    return distances


def _direct(left: NDArrays, right: NDArrays) -> float:
    """One pair's squared distance from its difference, tensor by tensor."""
    total = 0.0
    for a, b in zip(left, right, strict=True):
        difference = (a - b).ravel()
        total += float(difference @ difference)
    return total


_RELATIVE_ERROR = 1e-9
"""Largest rounding error of a Gram-form distance kept, relative to the distance."""


def _recompute_ratio(size: int) -> float:
    """Distance / squared-norm sum below which the Gram form is recomputed directly.

    The rounding error of a float64 sum of ``size`` products grows like
    ``sqrt(size) * eps`` times its magnitude (the probabilistic bound of Higham and Mary 2019,
    with a factor 8 to spare), and the Gram form's magnitude is ``||x_i||^2 + ||x_j||^2``.
    """
    return 8.0 * math.sqrt(max(size, 1)) * float(np.finfo(np.float64).eps) / _RELATIVE_ERROR


def _krum_scores(distances: npt.NDArray[np.float64], neighbours: int) -> npt.NDArray[np.float64]:
    """Each row's sum of its ``neighbours`` smallest distances to the *other* rows."""
    others = distances.copy()
    np.fill_diagonal(others, np.inf)  # sorts last: neighbours <= count - 2 never reaches it
    scores: npt.NDArray[np.float64] = np.sort(others, axis=1)[:, :neighbours].sum(axis=1)
    return scores
