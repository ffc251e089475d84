"""The metric maths of ``fedlora evaluate`` on hand-made predictions with known answers."""

import pytest

from fedlora.metrics import accuracy, exact_match, macro_f1, normalise_answer

PREDICTIONS = ["a", "a", "b", "b", "c", "a"]
REFERENCES = ["a", "b", "b", "b", "c", "c"]


def test_accuracy_counts_equal_pairs():
    # positions 0, 2, 3, 4 agree: 4 of 6
    assert accuracy(PREDICTIONS, REFERENCES) == pytest.approx(4 / 6)
    assert accuracy([1, 2], [1, 2]) == 1.0


def test_macro_f1_averages_per_class_f1():
    # a: TP 1, FP 2, FN 0 -> 2/4 = 0.5;  b: TP 2, FP 0, FN 1 -> 4/5 = 0.8
    # c: TP 1, FP 0, FN 1 -> 2/3;        mean = (0.5 + 0.8 + 2/3) / 3 = 59/90 = 0.6556
    assert macro_f1(PREDICTIONS, REFERENCES) == pytest.approx(59 / 90)


def test_macro_f1_counts_an_absent_class_as_zero():
    # the label set names a class "d" nobody predicts or holds: its F1 is 0, mean over 4
    assert macro_f1(PREDICTIONS, REFERENCES, labels=["a", "b", "c", "d"]) == pytest.approx(59 / 120)


def test_macro_f1_of_a_majority_guess_is_low_though_accuracy_is_not():
    # always "pos" on 8 pos / 2 neg: accuracy 0.8, F1(pos) = 16/18, F1(neg) = 0 -> 4/9
    references = ["pos"] * 8 + ["neg"] * 2
    predictions = ["pos"] * 10
    assert accuracy(predictions, references) == pytest.approx(0.8)
    assert macro_f1(predictions, references) == pytest.approx(4 / 9)


def test_normalise_answer():
    assert normalise_answer("  Positive.\n") == "positive"
    assert normalise_answer("The   Patient's\tANSWER!") == "the patients answer"
    assert normalise_answer("...") == ""


def test_exact_match_after_normalisation():
    predictions = ["Positive.", " the  Answer!", "no", "Neutral"]
    references = ["positive", "the answer", "yes", "negative"]
    assert exact_match(predictions, references) == pytest.approx(0.5)


@pytest.mark.parametrize("metric", [accuracy, macro_f1, exact_match])
def test_unpaired_inputs_are_refused(metric):
    with pytest.raises(ValueError, match="pair"):
        metric(["a"], ["a", "b"])


def test_accuracy_of_nothing_is_refused():
    with pytest.raises(ValueError, match="undefined"):
        accuracy([], [])
