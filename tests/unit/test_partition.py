"""Tests for the Dirichlet partitioner and the train/test split."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import pytest

from fedlora.simulations.partition import dirichlet_partition, train_test_split

NUM_CLASSES = 8


def _groups(n: int, num_classes: int = NUM_CLASSES) -> list[str]:
    return [f"class-{i % num_classes}" for i in range(n)]


def _label_shares(groups: list[str], site: list[int]) -> dict[str, float]:
    counts = Counter(groups[i] for i in site)
    return {label: counts[label] / len(site) for label in set(groups)}


@pytest.mark.parametrize("alpha", [0.05, 1.0, 1e4, math.inf])
def test_every_index_lands_in_exactly_one_site(alpha: float) -> None:
    groups = _groups(503)

    sites = dirichlet_partition(groups, num_sites=5, alpha=alpha, seed=3)

    flat = [i for site in sites for i in site]
    assert len(flat) == len(groups)
    assert sorted(flat) == list(range(len(groups)))


def test_returns_one_sorted_list_per_site() -> None:
    sites = dirichlet_partition(_groups(200), num_sites=4, alpha=0.5, seed=0)

    assert len(sites) == 4
    assert all(site == sorted(site) for site in sites)


@pytest.mark.parametrize("alpha", [1e4, math.inf])
def test_large_alpha_gives_near_uniform_label_distribution(alpha: float) -> None:
    groups = _groups(2000)

    sites = dirichlet_partition(groups, num_sites=5, alpha=alpha, seed=0)

    for site in sites:
        for share in _label_shares(groups, site).values():
            assert abs(share - 1 / NUM_CLASSES) < 0.1


def test_infinite_alpha_balances_site_sizes() -> None:
    groups = _groups(1003, num_classes=7)

    sites = dirichlet_partition(groups, num_sites=6, alpha=math.inf, seed=1)

    sizes = [len(site) for site in sites]
    assert max(sizes) - min(sizes) <= 1


def test_small_alpha_gives_strong_label_skew() -> None:
    groups = _groups(1000, num_classes=4)

    sites = dirichlet_partition(groups, num_sites=5, alpha=0.05, seed=0)

    max_shares = [max(_label_shares(groups, site).values()) for site in sites]
    assert sum(max_shares) / len(max_shares) > 0.6


def test_min_per_site_is_respected_under_extreme_skew() -> None:
    groups = _groups(60, num_classes=2)

    sites = dirichlet_partition(groups, num_sites=12, alpha=0.01, seed=0, min_per_site=4)

    assert min(len(site) for site in sites) >= 4


def test_min_per_site_is_respected_when_exactly_enough_examples() -> None:
    groups = _groups(30, num_classes=1)

    sites = dirichlet_partition(groups, num_sites=10, alpha=0.001, seed=5, min_per_site=3)

    assert [len(site) for site in sites] == [3] * 10


def test_single_site_gets_every_index() -> None:
    sites = dirichlet_partition(_groups(50), num_sites=1, alpha=0.1, seed=0)

    assert sites == [list(range(50))]


def test_same_seed_gives_same_partition() -> None:
    groups = _groups(400)

    first = dirichlet_partition(groups, num_sites=5, alpha=0.3, seed=11)
    second = dirichlet_partition(groups, num_sites=5, alpha=0.3, seed=11)

    assert first == second


def test_different_seed_gives_different_partition() -> None:
    groups = _groups(400)

    first = dirichlet_partition(groups, num_sites=5, alpha=0.3, seed=11)
    second = dirichlet_partition(groups, num_sites=5, alpha=0.3, seed=12)

    assert first != second


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_sites": 0}, "num_sites must be >= 1, got 0"),
        ({"alpha": -1}, "alpha must be > 0, got -1"),
        ({"alpha": 0.0}, "alpha must be > 0, got 0.0"),
        ({"alpha": math.nan}, "alpha must be > 0, got nan"),
        ({"min_per_site": -1}, "min_per_site must be >= 0, got -1"),
        ({"num_sites": 6, "min_per_site": 2}, "need at least num_sites * min_per_site = 12"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
    ],
)
def test_invalid_partition_arguments_raise(kwargs: dict[str, Any], message: str) -> None:
    arguments = {"num_sites": 2, "alpha": 1.0, "seed": 0, **kwargs}

    with pytest.raises(ValueError, match=re.escape(message)):
        dirichlet_partition(_groups(10), **arguments)


def test_split_covers_indices_without_overlap() -> None:
    indices = list(range(100, 150))

    train, test = train_test_split(indices, test_fraction=0.2, seed=0)

    assert not set(train) & set(test)
    assert sorted(train + test) == indices
    assert len(test) == 10


def test_split_keeps_one_example_on_each_side() -> None:
    train, test = train_test_split([7, 9], test_fraction=0.01, seed=0)

    assert len(train) == 1
    assert len(test) == 1


def test_split_of_single_index_goes_to_train() -> None:
    train, test = train_test_split([4], test_fraction=0.5, seed=0)

    assert (train, test) == ([4], [])


def test_split_is_deterministic_for_a_seed() -> None:
    indices = list(range(40))

    first = train_test_split(indices, test_fraction=0.25, seed=9)
    second = train_test_split(indices, test_fraction=0.25, seed=9)

    assert first == second


def test_split_differs_across_seeds() -> None:
    indices = list(range(40))

    first = train_test_split(indices, test_fraction=0.25, seed=9)
    second = train_test_split(indices, test_fraction=0.25, seed=10)

    assert first != second


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5, math.nan])
def test_split_rejects_fraction_outside_open_unit_interval(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\)"):
        train_test_split(list(range(10)), test_fraction=fraction, seed=0)
