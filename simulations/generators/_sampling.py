"""Sampling helpers shared by the text generators."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

MAX_LENGTH_TRIES = 50


def check_count(n: int) -> None:
    """Raise ``ValueError`` unless ``n`` is a non-negative number of records."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")


def balanced_labels(labels: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """Return ``n`` labels cycling through ``labels`` (counts differ by at most one), shuffled."""
    # Rotating the start spreads the remainder over random labels rather than the first ones.
    start = rng.randrange(len(labels))
    drawn = [labels[(start + i) % len(labels)] for i in range(n)]
    rng.shuffle(drawn)
    return drawn


def fit_length(
    make: Callable[[], str],
    *,
    lo: int,
    hi: int,
    padding: Sequence[str],
    rng: random.Random,
) -> str:
    """Build a text with ``make`` whose length lies in ``[lo, hi]``.

    Too-long texts are rebuilt; too-short ones are extended with sentences from ``padding``.
    """
    for _ in range(MAX_LENGTH_TRIES):
        text = make()
        while len(text) < lo:
            text = f"{text} {rng.choice(padding)}"
        if len(text) <= hi:
            return text
    raise RuntimeError(f"could not build a text of {lo}-{hi} characters; templates too long")


def squash(text: str) -> str:
    """Collapse runs of whitespace left by empty slots."""
    return " ".join(text.split())
