"""The end-of-run example: the question as a person reads it, each answer marked."""

from __future__ import annotations

from fedlora.cli.answers import BeforeAfter, question_of
from fedlora.records import PROMPT_TEMPLATE, ClassificationExample, SftExample


def test_an_sft_question_loses_its_template() -> None:
    example = SftExample(PROMPT_TEMPLATE.format(instruction="Is it serious?"), " Yes, see a GP.")
    assert question_of(example, ()) == ("Is it serious?", "Yes, see a GP.")


def test_a_classification_question_is_its_text_and_label_name() -> None:
    example = ClassificationExample("my chest hurts", 1)
    assert question_of(example, ("dermatology", "cardiology")) == ("my chest hurts", "cardiology")


def test_answers_are_marked_after_normalisation() -> None:
    lines = BeforeAfter("clinic-a", "Q?", "Positive", "neutral", " positive.", 1.25, 0.5).lines()
    assert lines[0] == (
        "one held-out question of site clinic-a, before and after federated training:"
    )
    assert lines[3].endswith("[wrong; loss 1.250]") and "neutral" in lines[3]
    assert lines[4].endswith("[right; loss 0.500]")


def test_a_long_question_is_cut_and_an_empty_answer_named() -> None:
    lines = BeforeAfter("s", "word " * 200, "x", "", "x", 1.0, 1.0).lines()
    assert len(lines[1]) < 260 and lines[1].endswith("…")
    assert "(empty)" in lines[3]
