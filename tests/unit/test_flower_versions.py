"""The Flower releases the seam was checked against: named once, pinned, installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from fedlora.flower_internals.versions import CHECKED_FLOWER, checked_flower, is_checked_flower

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def _flower_pin() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [Requirement(dep) for dep in project["dependencies"] if dep.startswith("flwr")]
    return pin


def _minor(release: str, step: int) -> str:
    major, minor = release.split(".")
    return f"{major}.{int(minor) + step}"


def test_the_pin_admits_exactly_the_checked_releases() -> None:
    pin = _flower_pin()
    below, above = _minor(CHECKED_FLOWER[0], -1), _minor(CHECKED_FLOWER[-1], 1)

    admitted = [f"{release}.{patch}" for release in CHECKED_FLOWER for patch in (0, 9)]

    assert all(pin.specifier.contains(version) for version in admitted)
    assert not pin.specifier.contains(f"{below}.9")
    assert not pin.specifier.contains(f"{above}.0")


def test_the_installed_flower_is_a_checked_release() -> None:
    # Fails on an unchecked Flower: run the canary tests on it, then add it to CHECKED_FLOWER.
    assert is_checked_flower() is True


@pytest.mark.parametrize(
    ("version", "checked"), [("1.41.0", True), ("1.42.3", True), ("1.43.0", False), ("1.4", False)]
)
def test_a_version_is_checked_by_its_minor_release(version: str, checked: bool) -> None:
    assert is_checked_flower(version) is checked


@pytest.mark.parametrize(
    ("releases", "words"),
    [
        (("1.41",), "Flower 1.41"),
        (("1.41", "1.42"), "Flower 1.41 or 1.42"),
        (("1.41", "1.42", "1.43"), "Flower 1.41, 1.42 or 1.43"),
    ],
)
def test_the_checked_releases_in_words(releases: tuple[str, ...], words: str) -> None:
    assert checked_flower(releases) == words
