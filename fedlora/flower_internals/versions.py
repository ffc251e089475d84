"""The Flower releases fedlora's seam was checked against, named in one place.

Every module of :mod:`fedlora.flower_internals` reaches into something Flower does not offer
as public API, checks first that the installed Flower still has it, and otherwise leaves
Flower as it is with a warning. What it was checked against is :data:`CHECKED_FLOWER`; the
``flwr`` pin in ``pyproject.toml`` admits exactly these minor releases, and the canary tests
(``tests/unit/test_link_hold.py``, ``test_link_operator.py``, ``test_node_wake.py``,
``test_node_runtime.py``, ``test_reply_polls.py``, ``test_deploy_operator.py`` for the
simulation grid) fail on a release that changes what the seam
touches. Adding a release: run those tests and ``tests/deployment`` on it, then add it here and
widen the pin.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata

__all__ = ["CHECKED_FLOWER", "checked_flower", "installed_flower", "is_checked_flower"]

CHECKED_FLOWER: tuple[str, ...] = ("1.41", "1.42")
"""The ``flwr`` minor releases whose internals the seam was checked against."""


def checked_flower(releases: Sequence[str] = CHECKED_FLOWER) -> str:
    """The checked releases in words, for messages: ``"Flower 1.41 or 1.42"``."""
    *earlier, last = releases
    return "Flower " + (f"{', '.join(earlier)} or {last}" if earlier else last)


def installed_flower() -> str:
    """The installed ``flwr`` version (``"unknown"`` without package metadata)."""
    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return "unknown"


def is_checked_flower(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed ``flwr``) is one of :data:`CHECKED_FLOWER`."""
    parts = (installed_flower() if version is None else version).split(".")
    return ".".join(parts[:2]) in CHECKED_FLOWER
