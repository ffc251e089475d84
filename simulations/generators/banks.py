"""Bank scenario data: support messages (classification) and support QA (SFT)."""

from __future__ import annotations

import math
import random

from fedlora.simulations.generators import _bank_vocab as v
from fedlora.simulations.generators._bank_facts import FACTS, PREFIXES
from fedlora.simulations.generators._qa import sample_qa
from fedlora.simulations.generators._sampling import balanced_labels, check_count, squash

INTENTS: tuple[str, ...] = (
    "card_lost",
    "transfer_failed",
    "loan_question",
    "fraud_report",
    "account_balance",
    "change_address",
    "mortgage_rate",
    "atm_problem",
    "card_declined",
    "close_account",
)


def generate_support_messages(n: int, *, seed: int) -> list[dict[str, str]]:
    """Generate customer-support messages labelled with their intent.

    Parameters
    ----------
    n
        Number of records (>= 0).
    seed
        Seed; the same seed always gives the same records.

    Returns
    -------
    list[dict[str, str]]
        ``{"text": ..., "label": ...}`` records; ``label`` is one of :data:`INTENTS`, balanced
        (counts differ by at most one). Messages vary in amounts, merchants, channels and tone.

    Raises
    ------
    ValueError
        If ``n`` is negative.
    """
    check_count(n)
    rng = random.Random(seed)
    records = []
    for label in balanced_labels(INTENTS, n, rng):
        body = rng.choice(v.TEMPLATES[label]).format_map(_slots(rng))
        openers, closers = v.TONES[rng.choice(tuple(v.TONES))]
        text = _join(rng.choice(openers), body, rng.choice(closers))
        records.append({"text": text, "label": label})
    return records


def generate_support_qa(n: int, *, seed: int) -> list[dict[str, str]]:
    """Generate customer questions with the bank's consistent support-agent answers.

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
        :data:`INTENTS` (balanced). The same question always gets the same answer.

    Raises
    ------
    ValueError
        If ``n`` is negative.
    """
    check_count(n)
    rng = random.Random(seed)
    return sample_qa(FACTS, topics=INTENTS, prefixes=PREFIXES, n=n, rng=rng)


def _slots(rng: random.Random) -> dict[str, str]:
    recipient = rng.choice(v.RECIPIENTS)
    channel = rng.choice(v.CHANNELS)
    return {
        "amount": _money(rng, 4.0, 2_500.0, cents=True),
        "loan_amount": _money(rng, 1_000.0, 40_000.0, cents=False, step=500),
        "home_amount": _money(rng, 120_000.0, 900_000.0, cents=False, step=5_000),
        "cash": _money(rng, 20.0, 500.0, cents=False, step=20),
        "merchant": rng.choice(v.MERCHANTS),
        "channel": channel,
        "channel_cap": channel[0].upper() + channel[1:],
        "account": rng.choice(v.ACCOUNTS),
        "recipient": recipient,
        "recipient_cap": recipient[0].upper() + recipient[1:],
        "day": rng.choice(v.DAYS),
        "place": rng.choice(v.PLACES),
        "last4": f"{rng.randrange(10_000):04d}",
        "city": rng.choice(v.CITIES),
        "street": f"{rng.randint(1, 240)} {rng.choice(v.STREETS)}",
        "month": rng.choice(v.MONTHS),
        "years": str(rng.choice((2, 3, 5, 10, 15, 25, 30))),
        "deposit": str(rng.choice((5, 10, 15, 20, 25, 40))),
        "loan_purpose": rng.choice(v.LOAN_PURPOSES),
        "loan_kind": rng.choice(v.LOAN_KINDS),
        "other_bank": rng.choice(v.OTHER_BANKS),
    }


def _money(rng: random.Random, lo: float, hi: float, *, cents: bool, step: int = 1) -> str:
    # Log-uniform, so small everyday amounts are as common as large ones.
    value = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if cents:
        return f"${value:,.2f}"
    return f"${max(step, round(value / step) * step):,}"


def _join(opener: str, body: str, closer: str) -> str:
    # After "Hi there," the body continues the sentence, so drop its capital (but keep "I").
    first_word = body.split(maxsplit=1)[0]
    keeps_capital = first_word == "I" or first_word.startswith("I'") or first_word.isupper()
    if opener.endswith((",", "-")) and not keeps_capital:
        body = body[0].lower() + body[1:]
    return squash(f"{opener} {body} {closer}")
