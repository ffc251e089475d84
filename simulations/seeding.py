"""Seed validation and derivation of independent sub-seeds."""

from __future__ import annotations

import numpy as np


def check_seed(seed: int) -> None:
    """Reject seeds that :func:`numpy.random.default_rng` cannot use.

    Parameters
    ----------
    seed
        Candidate seed.

    Raises
    ------
    ValueError
        If ``seed`` is not a non-negative integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def derive_seed(seed: int, *keys: int) -> int:
    """Derive a sub-seed from ``seed`` and integer ``keys``.

    Different key tuples give statistically independent streams, so e.g. the data generator and
    the partitioner of one run never share random numbers.

    Parameters
    ----------
    seed
        Non-negative root seed.
    *keys
        Non-negative integers naming the consumer (e.g. a stage id and a site index).

    Returns
    -------
    int
        A seed in ``[0, 2**32)``.
    """
    check_seed(seed)
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])
