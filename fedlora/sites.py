"""Where a site's data lives, and how a single file becomes a train and a test split."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fedlora.errors import DataError

T = TypeVar("T")


@dataclass(frozen=True)
class SiteSpec:
    """A site's name and data files.

    Attributes
    ----------
    name
        Human-readable site name, used in metrics and reports.
    train_file
        JSONL or CSV file the site trains on.
    test_file
        Held-out JSONL or CSV file; when ``None`` a seeded fraction of ``train_file`` is held
        out instead (see :func:`split_held_out`).
    """

    name: str
    train_file: Path
    test_file: Path | None = None


def split_held_out(
    items: Sequence[T], *, test_fraction: float, seed: int, where: str
) -> tuple[list[T], list[T]]:
    """Split ``items`` into (train, test) with a seeded shuffle.

    Raises
    ------
    DataError
        When fewer than two items leave nothing to hold out.
    """
    if len(items) < 2:
        raise DataError(
            f"{where}: needs at least 2 examples to hold out a test split, got {len(items)}"
        )
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    num_test = min(len(items) - 1, max(1, round(len(items) * test_fraction)))
    test_index = set(order[:num_test])
    train = [item for index, item in enumerate(items) if index not in test_index]
    test = [item for index, item in enumerate(items) if index in test_index]
    return train, test


def sites_from_files(data_files: Sequence[str], test_files: Sequence[str] = ()) -> list[SiteSpec]:
    """One site per data file, named after the file (made unique when stems repeat)."""
    names: list[str] = []
    for path in data_files:
        stem = Path(path).stem or "site"
        name = stem
        suffix = 2
        while name in names:
            name = f"{stem}-{suffix}"
            suffix += 1
        names.append(name)
    tests: list[Path | None] = [Path(p) for p in test_files] or [None] * len(data_files)
    return [
        SiteSpec(name, Path(train), test)
        for name, train, test in zip(names, data_files, tests, strict=True)
    ]
