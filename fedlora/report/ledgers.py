"""The sites' privacy ledgers as the report sees them: found, verified, and compared.

Where the coordinator can read a site's ledger (a simulation), :func:`ledger_section` checks
its hash chain and compares every entry of this run with what the site reported in
``metrics.jsonl``; a disagreement is listed, never repaired.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedlora.errors import LedgerError
from fedlora.privacy.hashchain import finite_or_none
from fedlora.privacy.ledger import SiteLedger, read_ledger
from fedlora.privacy.ledger_entry import LedgerEntry
from fedlora.privacy.ledger_storage import LEDGER_FILE
from fedlora.report.names import LEDGER_NOT_AVAILABLE
from fedlora.rundir import METRICS_FILE

logger = logging.getLogger(__name__)

_LEDGER_FIELDS: tuple[tuple[str, str], ...] = (
    ("steps", "steps"),
    ("sample-rate", "sample_rate"),
    ("noise-multiplier", "noise_multiplier"),
    ("max-grad-norm", "max_grad_norm"),
    ("delta", "delta"),
    ("accountant", "accountant"),
    ("epsilon-prv", "epsilon_prv"),
    ("epsilon-rdp", "epsilon_rdp"),
)


def _as_epsilon(value: Any) -> float:
    """An ε as metrics.jsonl writes it (``None`` = infinite) as a float."""
    return math.inf if value is None else float(value)


def _same(key: str, reported: Any, recorded: Any) -> bool:
    if key.startswith("epsilon"):
        try:
            return _as_epsilon(reported) == _as_epsilon(recorded)
        except (TypeError, ValueError):
            return False
    if key == "accountant":
        return bool(reported == recorded)
    return (
        isinstance(reported, int | float)
        and not isinstance(reported, bool)
        and (reported == recorded)
    )


def _compare_entry(number: int, reported: Mapping[str, Any], entry: LedgerEntry) -> list[str]:
    problems = []
    for key, attribute in _LEDGER_FIELDS:
        recorded = getattr(entry, attribute)
        if key not in reported:
            problems.append(f"round {number}: {METRICS_FILE} has no {key}")
        elif not _same(key, reported[key], recorded):
            shown = None if isinstance(recorded, float) and math.isinf(recorded) else recorded
            problems.append(
                f"round {number}: {key} is {reported[key]!r} in {METRICS_FILE} "
                f"but {shown!r} in the ledger"
            )
    return problems


def _compare_ledger(
    ledger: SiteLedger, site: str, run_id: str, series: Sequence[Mapping[str, Any]]
) -> list[str]:
    problems = []
    last = series[-1] if series else {}
    if ledger.site != site:
        problems.append(f"the ledger belongs to site {ledger.site!r}")
    fingerprint = last.get("data-fingerprint")
    if fingerprint is not None and fingerprint != ledger.data_fingerprint:
        problems.append(
            f"the ledger is of data {ledger.data_fingerprint}, {METRICS_FILE} reports "
            f"data {fingerprint}"
        )
    if last.get("records") is not None and last["records"] != ledger.records:
        problems.append(
            f"records: {last['records']!r} in {METRICS_FILE} but {ledger.records} in the ledger"
        )
    entries = [entry for entry in ledger.entries if entry.run_id == run_id]
    cut = cut_short(entries)
    final = {entry.round: entry for index, entry in enumerate(entries) if index not in cut}
    cut_rounds = {entries[index].round for index in cut}
    reported = {int(item["round"]): item for item in series}
    for number in sorted(set(final) | set(reported)):
        if number not in final and number not in cut_rounds:
            problems.append(f"round {number}: in {METRICS_FILE} but not in the ledger")
        elif number not in final:
            problems.append(f"round {number}: only a cut-short attempt is in the ledger")
        elif number not in reported:
            problems.append(f"round {number}: in the ledger but not in {METRICS_FILE}")
        else:
            problems.extend(_compare_entry(number, reported[number], final[number]))
    return problems


def cut_short(entries: Sequence[LedgerEntry]) -> set[int]:
    """Indices of one run's ledger entries that a restart of the run superseded.

    A run resumed after an interruption trains again from the round after its checkpoint: its
    ledger then goes back to an earlier (or the same) round number. Every entry recorded before
    that point for a round at or after the one the run restarted from was cut short; its
    privacy was spent and stays counted in the lifetime ε, but ``metrics.jsonl`` keeps only
    the rounds the resumed run recorded.

    Parameters
    ----------
    entries
        The ledger's entries of one run, in chain order.

    Returns
    -------
    set of int
        Positions in ``entries`` of the cut-short attempts.
    """
    cut: set[int] = set()
    lowest_later = math.inf
    for index in range(len(entries) - 1, -1, -1):
        if entries[index].round >= lowest_later:
            cut.add(index)
        lowest_later = min(lowest_later, entries[index].round)
    return cut


def repeated_rounds(ledger: SiteLedger, run_id: str) -> list[dict[str, int]]:
    """The run's rounds with an attempt that a restart cut short (see :func:`cut_short`).

    Returns
    -------
    list of dict
        ``{"round": n, "times": k, "cut-short": c}`` per such round: the site trained it ``k``
        times in all, ``c`` of them cut short. Every attempt spent privacy, and the ledger's
        lifetime ε counts each.
    """
    entries = [entry for entry in ledger.entries if entry.run_id == run_id]
    cut = cut_short(entries)
    rounds = sorted({entries[index].round for index in cut})
    return [
        {
            "round": number,
            "times": sum(1 for entry in entries if entry.round == number),
            "cut-short": sum(1 for index in cut if entries[index].round == number),
        }
        for number in rounds
    ]


def _ledger_location(series: Sequence[Mapping[str, Any]]) -> str | None:
    """The site's ledger directory (or file) as its last privacy entry names it."""
    for entry in reversed(series):
        if entry.get("ledger"):
            return str(entry["ledger"])
    return None


def ledger_section(site: str, run_id: str, series: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The report's ledger entry for one site.

    Parameters
    ----------
    site
        The site's name.
    run_id
        This run's id: the ledger's entries of other runs are counted, not compared.
    series
        The site's privacy entries of this run, one per round, as ``metrics.jsonl`` holds them
        (the last one names the ledger's location).

    Returns
    -------
    dict
        ``path``, ``available``, ``status`` (``none``, ``not-available``, ``invalid`` or
        ``verified``), ``note``, ``agrees`` and ``disagreements``; a verified ledger adds its
        entries and lifetime ε.
    """
    location = _ledger_location(series)
    section: dict[str, Any] = {
        "path": location,
        "available": False,
        "status": "none",
        "note": "no ledger: the site recorded no DP training in this run",
        "agrees": None,
        "disagreements": [],
        "repeated-rounds": [],
    }
    if location is None:
        return section
    path = Path(location).expanduser()
    if path.suffix != ".jsonl":
        path = path / LEDGER_FILE
    if not (path.is_file() and os.access(path, os.R_OK)):
        section.update(status="not-available", note=LEDGER_NOT_AVAILABLE)
        return section
    try:
        ledger = read_ledger(path)
    except LedgerError as exc:
        section.update(
            available=True, status="invalid", note=str(exc), agrees=False, disagreements=[str(exc)]
        )
        return section
    return {**section, **_verified_ledger(ledger, site, run_id, series)}


def _verified_ledger(
    ledger: SiteLedger, site: str, run_id: str, series: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    problems = _compare_ledger(ledger, site, run_id, series)
    for problem in problems:
        logger.info("site %s: ledger and %s disagree: %s", site, METRICS_FILE, problem)
    last = ledger.entries[-1] if ledger.entries else None
    return {
        "available": True,
        "status": "verified",
        "note": "hash chain verified",
        "site": ledger.site,
        "data-fingerprint": ledger.data_fingerprint,
        "records": ledger.records,
        "entries": [entry.to_json() for entry in ledger.entries],
        "other-run-entries": sum(1 for entry in ledger.entries if entry.run_id != run_id),
        "lifetime-epsilon-prv": finite_or_none(last.epsilon_prv) if last else 0.0,
        "lifetime-epsilon-rdp": finite_or_none(last.epsilon_rdp) if last else 0.0,
        "agrees": not problems,
        "disagreements": problems,
        "repeated-rounds": repeated_rounds(ledger, run_id),
    }
