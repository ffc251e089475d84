"""Question-answer sampling from a fixed fact table, shared by the QA generators."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from fedlora.simulations.generators._sampling import balanced_labels, squash


@dataclass(frozen=True)
class Fact:
    """One answer and the ways a user may ask for it."""

    topic: str
    questions: tuple[str, ...]
    answer: str


def sample_qa(
    facts: Sequence[Fact],
    *,
    topics: Sequence[str],
    prefixes: Sequence[str],
    n: int,
    rng: random.Random,
) -> list[dict[str, str]]:
    """Draw ``n`` ``{"prompt", "response", "topic"}`` records with balanced topics.

    The response depends only on the fact, never on the phrasing or the prefix, so one
    question always gets one answer. Prefixes may contain an ``{age}`` slot.
    """
    by_topic: dict[str, list[Fact]] = {topic: [] for topic in topics}
    for fact in facts:
        by_topic[fact.topic].append(fact)
    records = []
    for topic in balanced_labels(topics, n, rng):
        fact = rng.choice(by_topic[topic])
        prefix = rng.choice(prefixes).format(age=rng.randint(19, 84))
        prompt = squash(f"{prefix} {rng.choice(fact.questions)}")
        records.append({"prompt": prompt, "response": fact.answer, "topic": topic})
    return records
