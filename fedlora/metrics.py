"""Task metrics on predictions: accuracy, macro-F1 and exact match of normalised answers.

Pure functions of Python values (no model, no tensors), so the numbers ``fedlora evaluate``
reports can be checked by hand.
"""

from __future__ import annotations

import re
import string
from collections.abc import Hashable, Sequence

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
_WHITESPACE = re.compile(r"\s+")


def _check_pairs(predictions: Sequence[object], references: Sequence[object]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions for {len(references)} references; "
            "they must pair one to one"
        )


def accuracy(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> float:
    """The fraction of predictions equal to their reference.

    Raises
    ------
    ValueError
        When the sequences differ in length or are empty.
    """
    _check_pairs(predictions, references)
    if not references:
        raise ValueError("accuracy of no examples is undefined")
    hits = sum(p == r for p, r in zip(predictions, references, strict=True))
    return hits / len(references)


def macro_f1(
    predictions: Sequence[Hashable],
    references: Sequence[Hashable],
    labels: Sequence[Hashable] | None = None,
) -> float:
    """The unweighted mean over classes of each class's F1 score.

    A class's F1 is ``2·TP / (2·TP + FP + FN)``; a class with no true, predicted or reference
    example (``TP + FP + FN = 0``) scores 0 (as scikit-learn's ``zero_division=0``).

    Parameters
    ----------
    predictions, references
        Paired class values.
    labels
        The classes to average over; by default every class that occurs in either sequence.

    Raises
    ------
    ValueError
        When the sequences differ in length, or there are no classes.
    """
    _check_pairs(predictions, references)
    classes = list(labels) if labels is not None else sorted({*references, *predictions}, key=str)
    if not classes:
        raise ValueError("macro-F1 needs at least one class")
    total = 0.0
    for cls in classes:
        tp = sum(p == cls and r == cls for p, r in zip(predictions, references, strict=True))
        fp = sum(p == cls and r != cls for p, r in zip(predictions, references, strict=True))
        fn = sum(p != cls and r == cls for p, r in zip(predictions, references, strict=True))
        denominator = 2 * tp + fp + fn
        total += 2 * tp / denominator if denominator else 0.0
    return total / len(classes)


def normalise_answer(text: str) -> str:
    r"""Lower-case, drop ASCII punctuation, collapse whitespace runs to one space and strip.

    ``"  Positive.\n"`` and ``"positive"`` normalise alike.
    """
    text = _PUNCTUATION.sub("", text.lower())
    return _WHITESPACE.sub(" ", text).strip()


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The fraction of generated answers equal to their reference after :func:`normalise_answer`.

    Raises
    ------
    ValueError
        When the sequences differ in length or are empty.
    """
    return accuracy(
        [normalise_answer(p) for p in predictions], [normalise_answer(r) for r in references]
    )
