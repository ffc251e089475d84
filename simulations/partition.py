"""Non-IID (label-skewed) partitioning of examples across federated sites."""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence

import numpy as np

from fedlora.simulations.seeding import check_seed

logger = logging.getLogger(__name__)

MAX_REDRAWS = 100


def dirichlet_partition(
    groups: Sequence[Hashable],
    *,
    num_sites: int,
    alpha: float,
    seed: int,
    min_per_site: int = 2,
) -> list[list[int]]:
    """Split example indices across sites with per-class Dirichlet proportions.

    For each distinct group value (class), proportions ``p ~ Dirichlet(alpha * 1_K)`` are drawn
    and the class's shuffled indices are cut among the ``K`` sites by ``p``. Small ``alpha``
    gives strong label and size skew; large ``alpha`` approaches a uniform split.

    Parameters
    ----------
    groups
        The group (class) of each example; the result indexes into this sequence.
    num_sites
        Number of sites ``K`` (>= 1).
    alpha
        Dirichlet concentration (> 0). ``float("inf")`` splits every class round-robin, i.e. as
        evenly as possible.
    seed
        Non-negative seed; the same seed always gives the same partition.
    min_per_site
        Smallest acceptable site size. Draws leaving a site smaller are redrawn (up to
        ``MAX_REDRAWS`` times), after which examples move from the largest site.

    Returns
    -------
    list[list[int]]
        For each site, the sorted indices into ``groups``; every index appears exactly once.

    Raises
    ------
    ValueError
        For an invalid argument, or fewer than ``num_sites * min_per_site`` examples.
    """
    _check_partition_args(len(groups), num_sites=num_sites, alpha=alpha, min_per_site=min_per_site)
    check_seed(seed)
    rng = np.random.default_rng(seed)
    classes = _indices_by_group(groups)

    if math.isinf(alpha):
        sites = _round_robin_split(classes, num_sites, rng)
    else:
        sites = _dirichlet_split(classes, num_sites, alpha, rng)
        draws = 1
        while _smallest(sites) < min_per_site and draws < MAX_REDRAWS:
            sites = _dirichlet_split(classes, num_sites, alpha, rng)
            draws += 1
        if draws > 1:
            logger.debug("dirichlet_partition needed %d draws (alpha=%s)", draws, alpha)

    if _smallest(sites) < min_per_site:
        logger.info(
            "no draw gave every site >= %d examples; moving examples from the largest sites",
            min_per_site,
        )
        _top_up_small_sites(sites, min_per_site, rng)
    return [sorted(site) for site in sites]


def train_test_split(
    indices: Sequence[int], *, test_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split indices into train and test sets with a seeded shuffle.

    Parameters
    ----------
    indices
        The indices to split.
    test_fraction
        Share of ``indices`` that goes to the test set, in ``(0, 1)``. The count is rounded and,
        when there are at least two indices, clamped so both sets are non-empty.
    seed
        Non-negative seed.

    Returns
    -------
    tuple[list[int], list[int]]
        ``(train, test)``, each sorted.

    Raises
    ------
    ValueError
        If ``test_fraction`` is not in ``(0, 1)`` or ``seed`` is invalid.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    check_seed(seed)
    n = len(indices)
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(max(round(n * test_fraction), 1), n - 1) if n >= 2 else 0
    test = sorted(indices[int(i)] for i in order[:n_test])
    train = sorted(indices[int(i)] for i in order[n_test:])
    return train, test


def _check_partition_args(n: int, *, num_sites: int, alpha: float, min_per_site: int) -> None:
    if num_sites < 1:
        raise ValueError(f"num_sites must be >= 1, got {num_sites}")
    # Written so that NaN fails too.
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if min_per_site < 0:
        raise ValueError(f"min_per_site must be >= 0, got {min_per_site}")
    if n < num_sites * min_per_site:
        raise ValueError(
            f"need at least num_sites * min_per_site = {num_sites * min_per_site} examples, got {n}"
        )


def _indices_by_group(groups: Sequence[Hashable]) -> list[list[int]]:
    # First-appearance order keeps the result deterministic without requiring sortable groups.
    by_group: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, []).append(index)
    return list(by_group.values())


def _dirichlet_split(
    classes: list[list[int]], num_sites: int, alpha: float, rng: np.random.Generator
) -> list[list[int]]:
    sites: list[list[int]] = [[] for _ in range(num_sites)]
    for members in classes:
        shuffled = rng.permutation(np.asarray(members, dtype=np.int64))
        proportions = _draw_proportions(num_sites, alpha, rng)
        cuts = np.rint(np.cumsum(proportions)[:-1] * len(shuffled)).astype(np.int64)
        for site, chunk in zip(sites, np.split(shuffled, cuts), strict=True):
            site.extend(int(i) for i in chunk)
    return sites


def _draw_proportions(num_sites: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    proportions = rng.dirichlet(np.full(num_sites, alpha))
    total = float(proportions.sum())
    if not math.isfinite(total) or total <= 0:
        # Extreme alphas can underflow every component; the limit is all mass on one site.
        proportions = np.zeros(num_sites)
        proportions[int(rng.integers(num_sites))] = 1.0
        return proportions
    return proportions / total


def _round_robin_split(
    classes: list[list[int]], num_sites: int, rng: np.random.Generator
) -> list[list[int]]:
    sites: list[list[int]] = [[] for _ in range(num_sites)]
    # Each class starts where the previous one stopped, so site sizes differ by at most one.
    offset = 0
    for members in classes:
        shuffled = rng.permutation(np.asarray(members, dtype=np.int64))
        for position, index in enumerate(shuffled):
            sites[(offset + position) % num_sites].append(int(index))
        offset = (offset + len(shuffled)) % num_sites
    return sites


def _smallest(sites: list[list[int]]) -> int:
    return min(len(site) for site in sites)


def _top_up_small_sites(
    sites: list[list[int]], min_per_site: int, rng: np.random.Generator
) -> None:
    # The caller guarantees enough examples, so the largest site always has more than the
    # minimum while some site is below it, and never drops below it by giving one away.
    for site in sites:
        while len(site) < min_per_site:
            donor = max(sites, key=len)
            site.append(donor.pop(int(rng.integers(len(donor)))))
