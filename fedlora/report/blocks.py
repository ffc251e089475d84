"""The report's document model: titled sections of text, tables, images and the like.

Both renderings (:mod:`fedlora.report.document` for Markdown, :mod:`fedlora.report.render` for
HTML) walk the same sections, so they say the same thing. Numbers are shown to 4 significant
digits; ``∞`` for an infinite ε.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Text:
    """A paragraph; ``lead`` marks the one the reader must not miss (the guarantee)."""

    text: str
    lead: bool = False


@dataclass(frozen=True)
class Banner:
    """A warning: something in the run or its ledgers is wrong or unprotected."""

    text: str


@dataclass(frozen=True)
class Note:
    """Information a reader needs to read the numbers right; not a fault."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """A bulleted list."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A table of already-formatted cells."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    """A plot: the PNG written next to the report under ``file`` (embedded in the HTML)."""

    file: str
    alt: str


@dataclass(frozen=True)
class Meter:
    """One site's budget at a glance: a sentence and the share of the budget used.

    ``used`` is ``None`` where no share can be drawn (no budget, infinite or no ε).
    """

    label: str
    text: str
    used: float | None
    state: str
    """``ok``, ``low`` (under a tenth of the budget left), ``over`` or ``none``."""
    detail: str = ""
    """How the site took part (rounds trained and declined)."""


@dataclass(frozen=True)
class Protection:
    """What the run's guarantee covers, and what it does not."""

    protected: tuple[str, ...]
    not_protected: tuple[str, ...]


@dataclass(frozen=True)
class Glossary:
    """Terms and their short explanation."""

    terms: tuple[tuple[str, str], ...]


Block = Text | Banner | Note | Bullets | Table | Image | Meter | Protection | Glossary


@dataclass(frozen=True)
class Section:
    """A titled part of the report; ``key`` names it for links and tests."""

    title: str
    blocks: tuple[Block, ...]
    key: str = ""


def fmt_number(value: Any) -> str:
    """A number to 4 significant digits for display; ``—`` for a missing value."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fmt_epsilon(value: Any, *, present: bool = True) -> str:
    """An ε for display: ``∞`` for ``None`` (infinite) when the value is expected."""
    if value is None:
        return "∞" if present else "—"
    return fmt_number(value)


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)
