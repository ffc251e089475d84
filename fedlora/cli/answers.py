"""One held-out question answered by the initial and by the final adapter, for the run's end.

Each answer comes with the adapter's loss on the reference answer (the held-out metric the
run reports), which shows learning before greedy answers of a small model read well.

The example is the first held-out record of the first site, whatever its answers turn out to
be (never picked for looking good), so the display is an honest sample of what changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fedlora.errors import FedloraError
from fedlora.metrics import normalise_answer
from fedlora.records import PROMPT_TEMPLATE, ClassificationExample, Example, SftExample

logger = logging.getLogger(__name__)

_SHOWN_CHARS = 240
"""Longer questions are cut for the terminal; the full text is in the site's data file."""


@dataclass(frozen=True)
class BeforeAfter:
    """One held-out record, its reference answer, and the initial and final adapters' answers."""

    site: str
    question: str
    reference: str
    before: str
    after: str
    loss_before: float
    loss_after: float

    def lines(self) -> list[str]:
        """The comparison as terminal lines, each answer marked right or wrong."""

        def mark(answer: str, loss: float) -> str:
            right = normalise_answer(answer) == normalise_answer(self.reference)
            return f"{answer or '(empty)'}   [{'right' if right else 'wrong'}; loss {loss:.3f}]"

        question = " ".join(self.question.split())
        if len(question) > _SHOWN_CHARS:
            question = question[: _SHOWN_CHARS - 1] + "…"
        return [
            f"one held-out question of site {self.site}, before and after federated training:",
            f"  question:  {question}",
            f"  expected:  {self.reference}",
            f"  before:    {mark(self.before, self.loss_before)}",
            f"  after:     {mark(self.after, self.loss_after)}",
        ]


def question_of(example: Example, labels: tuple[str, ...]) -> tuple[str, str]:
    """The question as a person reads it and its reference answer."""
    if isinstance(example, ClassificationExample):
        return example.text, labels[example.label]
    assert isinstance(example, SftExample)
    head, _, rest = PROMPT_TEMPLATE.partition("{instruction}")
    question = example.prompt.removeprefix(head).removesuffix(rest)
    return question, example.response.strip()


def before_and_after(run_dir: Path) -> BeforeAfter:
    """Answer the first held-out record of the first site with the initial and final adapters.

    Raises
    ------
    FedloraError
        When the run's model, adapters or held-out data cannot be read.
    """
    from fedlora.cli.evaluate import held_out_sources
    from fedlora.evaluation import INITIAL, Checkpoint, RunEvaluator

    evaluator = RunEvaluator(run_dir)
    site, examples = next(
        ((name, found) for name, found in held_out_sources(run_dir, evaluator.config) if found),
        ("", []),
    )
    if not examples:
        raise FedloraError(f"no held-out record to answer in {run_dir}")
    example = examples[0]
    answers: list[str] = []
    losses: list[float] = []
    for checkpoint in (Checkpoint(INITIAL, None), evaluator.checkpoints()[-1]):
        evaluator.use(checkpoint)
        answers.append(evaluator.answer(example))
        losses.append(evaluator.loss([example]))
    question, reference = question_of(example, evaluator.config.labels)
    before, after = answers
    loss_before, loss_after = losses
    return BeforeAfter(site, question, reference, before, after, loss_before, loss_after)
