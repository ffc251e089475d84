"""Krum's pairwise distances as one matrix product, against the pairwise loop it replaced."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch
from flwr.common import NDArrays

from fedlora.strategies.base import SiteUpdate
from fedlora.strategies.krum import Krum, _krum_scores, _squared_distances


def loop_squared_distances(arrays: list[NDArrays]) -> npt.NDArray[np.float64]:
    """The reference: the pairwise loop Krum used before (kept here, unchanged)."""
    count = len(arrays)
    distances = np.zeros((count, count), dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        for i in range(count):
            for j in range(i + 1, count):
                total = 0.0
                for left, right in zip(arrays[i], arrays[j], strict=True):
                    difference = (left - right).ravel()
                    total += float(difference @ difference)
                distances[i, j] = distances[j, i] = total
    distances[np.isnan(distances)] = np.inf
    return distances


def loop_scores(distances: npt.NDArray[np.float64], neighbours: int) -> npt.NDArray[np.float64]:
    """The reference scores: the row loop Krum used before."""
    scores = np.empty(len(distances), dtype=np.float64)
    for i in range(len(distances)):
        scores[i] = np.sort(np.delete(distances[i], i))[:neighbours].sum()
    return scores


def random_updates(
    rng: np.random.Generator, count: int, *, offset: float = 0.0, spread: float = 1.0
) -> list[NDArrays]:
    shapes = [(8, 32), (32, 8), (8, 16), (16, 8)]
    return [
        [offset + spread * rng.standard_normal(shape) for shape in shapes] for _ in range(count)
    ]


@pytest.mark.parametrize("count", [3, 7, 40])
def test_matrix_distances_equal_the_loop_on_random_updates(count: int) -> None:
    arrays = random_updates(np.random.default_rng(count), count)
    matrix = _squared_distances(arrays)

    np.testing.assert_allclose(matrix, loop_squared_distances(arrays), rtol=1e-9, atol=0)
    neighbours = count - 3
    np.testing.assert_allclose(
        _krum_scores(matrix, neighbours), loop_scores(loop_squared_distances(arrays), neighbours)
    )


def test_close_updates_far_from_the_origin_keep_their_digits() -> None:
    """The Gram form alone would cancel: a 1e3 offset, 1e-5 spreads, a 1e-7 near twin."""
    rng = np.random.default_rng(0)
    arrays = random_updates(rng, 12, offset=1e3, spread=1e-5)
    arrays.append([tensor + 1e-7 for tensor in arrays[0]])  # a near copy of the first
    arrays.append([1e3 + 10.0 * rng.standard_normal(t.shape) for t in arrays[0]])  # an outlier

    reference = loop_squared_distances(arrays)
    np.testing.assert_allclose(_squared_distances(arrays), reference, rtol=1e-9, atol=0)
    assert 0 < reference[0, 12] < 1e-10  # the case that would cancel


def test_non_finite_rows_are_infinitely_far_as_in_the_loop() -> None:
    arrays = random_updates(np.random.default_rng(1), 6)
    arrays[2][1][0, 0] = np.nan
    arrays[4][3][1, 1] = np.inf

    matrix = _squared_distances(arrays)
    np.testing.assert_allclose(matrix, loop_squared_distances(arrays), rtol=1e-9, atol=0)
    assert np.isinf(matrix[2, [0, 1, 3, 4, 5]]).all() and np.isinf(matrix[4, 5])
    assert matrix[2, 2] == 0 and np.isfinite(matrix[0, 1])


def test_krum_selection_is_unchanged_at_a_hundred_sites() -> None:
    rng = np.random.default_rng(7)
    global_state = {"a": torch.zeros(4, 64), "b": torch.zeros(64, 4)}
    updates = []
    for index in range(100):
        shift = 5.0 if index % 10 == 0 else 0.0  # ten far-off sites
        state = {
            name: torch.from_numpy(shift + rng.standard_normal(tuple(t.shape))).float()
            for name, t in global_state.items()
        }
        updates.append(SiteUpdate(f"site-{index}", state, 1))
    krum = Krum(byzantine=10, multi=5)
    krum.aggregate(global_state, updates)

    arrays = [[u.state[name].double().numpy() for name in global_state] for u in updates]
    expected = loop_scores(loop_squared_distances(arrays), 100 - 10 - 2)
    np.testing.assert_allclose(krum.last_scores, expected, rtol=1e-9)
    best = [f"site-{i}" for i in np.argsort(expected, kind="stable")[:5]]
    assert krum.last_selected == best
    assert not any(name.endswith("0") for name in krum.last_selected)
