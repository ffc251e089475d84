"""Hospital scenario data: triage messages (classification) and medical QA (SFT)."""

from __future__ import annotations

import random
from functools import partial

from fedlora.simulations.generators import _hospital_vocab as v
from fedlora.simulations.generators._hospital_facts import PREFIXES, medical_facts
from fedlora.simulations.generators._qa import sample_qa
from fedlora.simulations.generators._sampling import (
    balanced_labels,
    check_count,
    fit_length,
    squash,
)

DEPARTMENTS: tuple[str, ...] = (
    "cardiology",
    "dermatology",
    "gastroenterology",
    "neurology",
    "orthopedics",
    "pulmonology",
    "psychiatry",
    "endocrinology",
)
MIN_MESSAGE_CHARS = 60
MAX_MESSAGE_CHARS = 200
PATIENT_VOICE_SHARE = 0.6
GENERIC_COMPLAINT_SHARE = 0.3


def generate_triage_messages(n: int, *, seed: int) -> list[dict[str, str]]:
    """Generate patient messages and clinician notes labelled with the department to route to.

    Parameters
    ----------
    n
        Number of records (>= 0).
    seed
        Seed; the same seed always gives the same records.

    Returns
    -------
    list[dict[str, str]]
        ``{"text": ..., "label": ...}`` records; ``label`` is one of :data:`DEPARTMENTS` and the
        departments are balanced (counts differ by at most one). Texts are 60-200 characters,
        about 60% in a patient's voice and the rest as clinician shorthand.

    Raises
    ------
    ValueError
        If ``n`` is negative.
    """
    check_count(n)
    rng = random.Random(seed)
    records = []
    for label in balanced_labels(DEPARTMENTS, n, rng):
        vocab = v.VOCAB[label]
        if rng.random() < PATIENT_VOICE_SHARE:
            text = fit_length(
                partial(_patient_message, vocab, rng),
                lo=MIN_MESSAGE_CHARS,
                hi=MAX_MESSAGE_CHARS,
                padding=v.CLOSINGS,
                rng=rng,
            )
        else:
            text = fit_length(
                partial(_clinician_note, vocab, rng),
                lo=MIN_MESSAGE_CHARS,
                hi=MAX_MESSAGE_CHARS,
                padding=v.NOTE_EXTRAS,
                rng=rng,
            )
        records.append({"text": text, "label": label})
    return records


def generate_medical_qa(n: int, *, seed: int) -> list[dict[str, str]]:
    """Generate general-audience medical questions with consistent, educational answers.

    Parameters
    ----------
    n
        Number of records (>= 0).
    seed
        Seed; the same seed always gives the same records.

    Returns
    -------
    list[dict[str, str]]
        ``{"prompt": ..., "response": ..., "topic": ...}`` records; ``topic`` is one of
        :data:`DEPARTMENTS` (balanced). Each answer comes from a fixed fact table, so the same
        question always gets the same 40-160 character answer.

    Raises
    ------
    ValueError
        If ``n`` is negative.
    """
    check_count(n)
    rng = random.Random(seed)
    return sample_qa(medical_facts(), topics=DEPARTMENTS, prefixes=PREFIXES, n=n, rng=rng)


def _patient_message(vocab: v.DepartmentVocab, rng: random.Random) -> str:
    complaint, other = rng.sample(vocab.complaints, 2)
    if rng.random() < GENERIC_COMPLAINT_SHARE:
        other = rng.choice(v.GENERIC_COMPLAINTS)
    relation = rng.choice(tuple(v.RELATIONS))
    text = rng.choice(v.PATIENT_TEMPLATES).format(
        opener=rng.choice(v.OPENERS),
        complaint=complaint,
        complaint2=other,
        context=rng.choice(vocab.contexts),
        duration=rng.choice(v.DURATIONS),
        relation=relation,
        age=rng.randint(*v.RELATIONS[relation]),
        closing=rng.choice(v.CLOSINGS),
    )
    return _capitalise(squash(text))


def _clinician_note(vocab: v.DepartmentVocab, rng: random.Random) -> str:
    finding, other = rng.sample(vocab.findings, 2)
    sex, sex_word = rng.choice(v.SEXES)
    text = rng.choice(v.NOTE_TEMPLATES).format(
        age=rng.randint(18, 92),
        sex=sex,
        sex_word=sex_word,
        finding=finding,
        finding2=other,
        short=rng.choice(v.SHORT_DURATIONS),
        history=rng.choice(vocab.history),
        ask=rng.choice(vocab.asks),
    )
    return squash(text)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]
