"""Every site ledger under a root, summarised read-only: what each dataset has spent.

:func:`ledger_summaries` walks a ledger root (default
:func:`fedlora.privacy.ledger_storage.default_ledger_root`) and reads each ledger it finds —
the active ``privacy-ledger.jsonl`` of a folder and its retired ledgers of other data — with
:func:`fedlora.privacy.ledger.read_ledger`, which validates the hash chain and the high-water
mark and writes nothing (it takes no lock either: a ledger being appended to at that moment
is read as of its last complete, fsynced line). A ledger that fails validation is summarised
as not verified, with the reason, and never stops the walk. A folder whose high-water mark
records spend but whose ledger is gone is listed as missing.

The ε values are the accountant's exact figures as the ledger recorded them: the last round
line's ``epsilon-prv`` and ``epsilon-rdp``, each the lifetime ε of the whole ledger at its δ.
Nothing is recomputed.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedlora.errors import FedloraError
from fedlora.privacy.ledger import read_ledger
from fedlora.privacy.ledger_storage import LEDGER_FILE, default_ledger_root, read_mark

logger = logging.getLogger(__name__)

LedgerState = Literal["active", "retired", "missing"]
_RETIRED_PREFIX = "privacy-ledger.retired-"
_MARK_PREFIX = "privacy-ledger.high-water-"
_FULL = 64  # hex digits of a SHA-256 data fingerprint


@dataclass(frozen=True)
class LedgerSummary:
    """One ledger's lifetime spend, as recorded, and whether its record verified.

    Attributes
    ----------
    site, data_fingerprint
        Whose data the ledger belongs to (from its ``open`` line; from the folder and file
        names when the ledger cannot be read: then the fingerprint may be only its first 12
        digits, or empty).
    path
        The ledger file.
    state
        ``active`` (the folder's current ledger), ``retired`` (kept for other data) or
        ``missing`` (a high-water mark records spend but the ledger file is gone).
    verified
        True when the hash chain and the high-water mark check out.
    problem
        Why it did not verify (``None`` when it did).
    delta
        The ledger's δ, fixed when it opened (``None`` before its first round in a
        version-1 ledger, or when unreadable).
    epsilon_prv, epsilon_rdp
        Lifetime ε at ``delta`` after the last recorded round, by each accountant; 0 for a
        ledger without rounds; ``None`` when not verified.
    accountant
        The accountant the last round's budget check used (``prv`` unless configured).
    runs, rounds
        Distinct runs and rounds recorded.
    records
        Records of the dataset when the ledger opened.
    last_time
        When the last round was recorded.
    """

    site: str
    data_fingerprint: str
    path: Path
    state: LedgerState
    verified: bool
    problem: str | None = None
    delta: float | None = None
    epsilon_prv: float | None = None
    epsilon_rdp: float | None = None
    accountant: str = "prv"
    runs: int = 0
    rounds: int = 0
    records: int | None = None
    last_time: str | None = None

    @property
    def epsilon(self) -> float | None:
        """The ε budgets are checked against: that of the ledger's accountant."""
        return self.epsilon_rdp if self.accountant == "rdp" else self.epsilon_prv

    def to_json(self) -> dict[str, Any]:
        """The summary under kebab-case keys (infinite ε as ``null`` with ``"inf"`` noted)."""
        return {
            "site": self.site,
            "data-fingerprint": self.data_fingerprint,
            "path": str(self.path),
            "state": self.state,
            "verified": self.verified,
            "problem": self.problem,
            "delta": self.delta,
            "epsilon-prv": _finite(self.epsilon_prv),
            "epsilon-rdp": _finite(self.epsilon_rdp),
            "accountant": self.accountant,
            "runs": self.runs,
            "rounds": self.rounds,
            "records": self.records,
            "last-time": self.last_time,
        }


def _finite(value: float | None) -> float | str | None:
    if value is not None and math.isinf(value):
        return "inf"
    return value


def ledger_files(root: Path) -> list[Path]:
    """Every ledger file under ``root`` (active and retired), in a stable order."""
    if not root.is_dir():
        return []
    found = [*root.rglob(LEDGER_FILE), *root.rglob(f"{_RETIRED_PREFIX}*.jsonl")]
    return sorted(p for p in found if p.is_file())


def ledger_summaries(root: Path | None = None) -> list[LedgerSummary]:
    """Summarise every ledger under ``root`` without changing anything.

    Parameters
    ----------
    root
        A ledger root (each site's ledgers in a folder below it); default
        :func:`~fedlora.privacy.ledger_storage.default_ledger_root`.

    Returns
    -------
    list of LedgerSummary
        One per ledger file (and per missing ledger a high-water mark still records), sorted
        by site, then data fingerprint; empty when the root holds none or does not exist.
    """
    root = default_ledger_root() if root is None else root
    summaries = [summarise(path) for path in ledger_files(root)]
    present = {(s.path.parent, s.data_fingerprint) for s in summaries}
    unknown = {s.path.parent for s in summaries if len(s.data_fingerprint) != _FULL}
    summaries.extend(_missing(root, present, unknown))
    return sorted(summaries, key=lambda s: (s.site, s.data_fingerprint, s.state, str(s.path)))


def summarise(path: Path) -> LedgerSummary:
    """Summarise one ledger file; a ledger that fails validation comes back not verified."""
    state: LedgerState = "retired" if path.name.startswith(_RETIRED_PREFIX) else "active"
    try:
        ledger = read_ledger(path)
    except (FedloraError, OSError) as exc:
        logger.info("privacy ledger %s did not verify: %s", path, exc)
        site, fingerprint = _identity(path)
        return LedgerSummary(site, fingerprint, path, state, verified=False, problem=str(exc))
    entries = ledger.entries
    last = entries[-1] if entries else None
    return LedgerSummary(
        site=ledger.site,
        data_fingerprint=ledger.data_fingerprint,
        path=path,
        state=state,
        verified=True,
        delta=ledger.delta,
        epsilon_prv=last.epsilon_prv if last else 0.0,
        epsilon_rdp=last.epsilon_rdp if last else 0.0,
        accountant=last.accountant if last else "prv",
        runs=len({e.run_id for e in entries}),
        rounds=len(entries),
        records=ledger.records,
        last_time=last.time if last else None,
    )


def _identity(path: Path) -> tuple[str, str]:
    """Site and data fingerprint of an unreadable ledger, as far as they can be told."""
    try:
        with path.open(encoding="utf-8") as handle:
            first = json.loads(handle.readline())
        return str(first["site"]), str(first["data-fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if path.name.startswith(_RETIRED_PREFIX):
        return _folder_site(path.parent)[0], path.name[len(_RETIRED_PREFIX) : -len(".jsonl")]
    return _folder_site(path.parent)


def _folder_site(folder: Path) -> tuple[str, str]:
    """Site and fingerprint prefix of a ``<site>-<fingerprint[:12]>`` folder, as far as known."""
    name, sep, tail = folder.name.rpartition("-")
    if sep and name and len(tail) == 12 and all(c in "0123456789abcdef" for c in tail):
        return name, tail
    return folder.name, ""


def _missing(root: Path, present: set[tuple[Path, str]], unknown: set[Path]) -> list[LedgerSummary]:
    """A high-water mark that records spend for a ledger found nowhere beside it.

    Folders in ``unknown`` hold a ledger too damaged to tell its data; their marks may be
    its own, so none of them is reported missing (the damaged ledger is already listed).
    """
    missing: list[LedgerSummary] = []
    if not root.is_dir():
        return missing
    for mark in sorted(root.rglob(f"{_MARK_PREFIX}*.json")):
        fingerprint = mark.name[len(_MARK_PREFIX) : -len(".json")]
        if (mark.parent, fingerprint) in present or mark.parent in unknown:
            continue
        try:
            recorded = read_mark(mark.parent, fingerprint)
        except FedloraError as exc:
            problem = str(exc)
        else:
            if recorded is None or recorded[0] <= 1:
                continue  # an opened ledger without spend; nothing was lost
            problem = (
                f"the ledger of data {fingerprint[:16]}... is missing from {mark.parent}, but "
                f"its high-water mark records {recorded[0]} lines: it was deleted or moved"
            )
        missing.append(
            LedgerSummary(
                _folder_site(mark.parent)[0],
                fingerprint,
                mark.parent / LEDGER_FILE,
                "missing",
                verified=False,
                problem=problem,
            )
        )
    return missing
