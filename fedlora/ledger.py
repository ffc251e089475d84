"""The site privacy ledger: a durable, append-only, hash-chained record of a dataset's spend.

One ledger belongs to one site's training data (keyed by the SHA-256 of the data file), not to
one run: every run that trains on the data appends to it, so a new federation cannot reset a
site's spend. It lives on the site's own disk and is the source of truth for its accounting;
a restarted node reloads it.

File format (``privacy-ledger.jsonl``), one JSON object a line:

* line 1, ``"kind": "open"``: site, data fingerprint, records, creation time;
* then one ``"kind": "round"`` line per trained round: run id, round, steps, q, σ, C, δ, the
  accountant, ε after the round by PRV and RDP (over the whole ledger) and the time.

Every line carries ``prev`` (the previous line's hash) and ``hash`` (SHA-256 of its own
canonical JSON without ``hash``), as :mod:`fedlora.hashchain` writes and checks them. A line
that was edited, removed or reordered breaks the chain and the ledger is refused with that
line's number; nothing is trained on an unprovable history.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlora.errors import LedgerError
from fedlora.hashchain import GENESIS as GENESIS  # re-exported: part of the ledger's format
from fedlora.hashchain import (
    append_chained,
    corrupted_line,
    finite_or_none,
    read_chain,
    utc_now,
)
from fedlora.privacy import Release

logger = logging.getLogger(__name__)

LEDGER_FILE = "privacy-ledger.jsonl"
LEDGER_VERSION = 1
_LABEL = "privacy ledger"
ROUND_FIELDS = (
    "run-id",
    "round",
    "steps",
    "sample-rate",
    "noise-multiplier",
    "max-grad-norm",
    "delta",
    "accountant",
    "epsilon-prv",
    "epsilon-rdp",
)


def data_fingerprint(path: Path) -> str:
    """SHA-256 of a data file's bytes: the identity of the dataset a ledger belongs to.

    Every DP round asks for it; the file is hashed again only when its size or modification
    time changed (as the site's dataset cache does), not once per round.
    """
    stat = path.stat()
    return _file_digest(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_digest(path: Path, _size: int, _mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class LedgerEntry:
    """One trained round as the ledger records it."""

    run_id: str
    round: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str
    epsilon_prv: float
    epsilon_rdp: float
    time: str

    @property
    def release(self) -> Release:
        """The DP-SGD release this round made."""
        return Release(self.noise_multiplier, self.sample_rate, self.steps)

    def to_json(self) -> dict[str, Any]:
        """The entry's fields under the ledger's kebab-case keys."""
        return {
            "run-id": self.run_id,
            "round": self.round,
            "steps": self.steps,
            "sample-rate": self.sample_rate,
            "noise-multiplier": self.noise_multiplier,
            "max-grad-norm": self.max_grad_norm,
            "delta": self.delta,
            "accountant": self.accountant,
            "epsilon-prv": finite_or_none(self.epsilon_prv),
            "epsilon-rdp": finite_or_none(self.epsilon_rdp),
            "time": self.time,
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> LedgerEntry:
        """Parse a ``round`` line (``KeyError`` / ``TypeError`` / ``ValueError`` if malformed)."""

        def eps(key: str) -> float:
            value = payload[key]
            return math.inf if value is None else float(value)

        return cls(
            run_id=str(payload["run-id"]),
            round=int(payload["round"]),
            steps=int(payload["steps"]),
            sample_rate=float(payload["sample-rate"]),
            noise_multiplier=float(payload["noise-multiplier"]),
            max_grad_norm=float(payload["max-grad-norm"]),
            delta=float(payload["delta"]),
            accountant=str(payload["accountant"]),
            epsilon_prv=eps("epsilon-prv"),
            epsilon_rdp=eps("epsilon-rdp"),
            time=str(payload["time"]),
        )


class SiteLedger:
    """A site's privacy ledger, validated on open and appended one round at a time.

    Use :meth:`open`; the constructor takes already-validated contents.
    """

    def __init__(
        self, path: Path, *, site: str, data_fingerprint: str, records: int, last_hash: str
    ) -> None:
        self.path = path
        self.site = site
        self.data_fingerprint = data_fingerprint
        self.records = records
        self.entries: list[LedgerEntry] = []
        self._last_hash = last_hash

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        site: str,
        data_fingerprint: str,
        records: int,
        start_new: bool = False,
    ) -> SiteLedger:
        """Load the ledger in ``directory`` (validating every line), or start one.

        Parameters
        ----------
        directory
            The site's ledger directory (created when missing).
        site, data_fingerprint, records
            The site and the dataset about to be trained.
        start_new
            When the existing ledger belongs to other data, retire it (renamed, never
            deleted or overwritten) and continue this data's own retired ledger when there is
            one, else start a new one, instead of refusing.

        Raises
        ------
        LedgerError
            For a corrupted or altered line (naming it), or a ledger of other data without
            ``start_new``.
        """
        path = directory / LEDGER_FILE
        if path.exists():
            ledger = cls._load(path)
            if ledger.data_fingerprint == data_fingerprint:
                return ledger
            if not start_new:
                raise LedgerError(
                    f"privacy ledger {path} belongs to data {ledger.data_fingerprint[:16]}..., "
                    f"not to the data about to be trained ({data_fingerprint[:16]}...); "
                    "set new-ledger to retire it and start a new one"
                )
            _move_without_overwriting(path, _retired_path(directory, ledger.data_fingerprint))
            logger.warning("retired the privacy ledger of data %s", ledger.data_fingerprint[:16])
            earlier = _retired_path(directory, data_fingerprint)
            if earlier.exists():
                # Data seen before keeps its history: a new ledger must never reset its spend.
                _move_without_overwriting(earlier, path)
                logger.warning("reactivated the earlier privacy ledger of this data")
                return cls._load(path)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create ledger directory {directory}: {exc}") from exc
        ledger = cls(
            path, site=site, data_fingerprint=data_fingerprint, records=records, last_hash=GENESIS
        )
        ledger._write(
            {
                "kind": "open",
                "version": LEDGER_VERSION,
                "site": site,
                "data-fingerprint": data_fingerprint,
                "records": records,
                "time": utc_now(),
            }
        )
        return ledger

    @classmethod
    def _load(cls, path: Path) -> SiteLedger:
        lines = read_chain(
            path, label=_LABEL, unprovable="refusing to train on an unprovable privacy history"
        )
        if not lines:
            raise LedgerError(f"{_LABEL} {path} is empty; it has no 'open' line")
        first, *rounds = lines
        with corrupted_line(path, 1, label=_LABEL):
            if first.get("kind") != "open" or first.get("version") != LEDGER_VERSION:
                raise ValueError("first line is not a version-1 'open' line")
            ledger = cls(
                path,
                site=str(first["site"]),
                data_fingerprint=str(first["data-fingerprint"]),
                records=int(first["records"]),
                last_hash=str(lines[-1]["hash"]),
            )
        for number, payload in enumerate(rounds, start=2):
            with corrupted_line(path, number, label=_LABEL):
                if payload.get("kind") != "round":
                    raise ValueError(f"unknown kind {payload.get('kind')!r}")
                ledger.entries.append(LedgerEntry.from_json(payload))
        return ledger

    def _write(self, payload: dict[str, Any]) -> None:
        self._last_hash = append_chained(self.path, payload, self._last_hash, label=_LABEL)

    @property
    def head(self) -> str:
        """Hash of the last line: identifies exactly the history recorded so far."""
        return self._last_hash

    def releases(self, run_id: str | None = None) -> list[Release]:
        """Every recorded release, or only those of ``run_id``."""
        return [e.release for e in self.entries if run_id is None or e.run_id == run_id]

    def rounds_of(self, run_id: str) -> list[int]:
        """The rounds of ``run_id`` this ledger has recorded."""
        return [e.round for e in self.entries if e.run_id == run_id]

    def append(self, entry: LedgerEntry) -> None:
        """Record a trained round durably (fsynced) before its update leaves the site."""
        self._write({"kind": "round", **entry.to_json()})
        self.entries.append(entry)


def _retired_path(directory: Path, fingerprint: str) -> Path:
    return directory / f"privacy-ledger.retired-{fingerprint}.jsonl"


def _move_without_overwriting(source: Path, target: Path) -> None:
    if target.exists():
        raise LedgerError(f"cannot move {source} to {target}: it exists and is never overwritten")
    source.rename(target)


def read_ledger(path: Path) -> SiteLedger:
    """Load and validate a ledger file (for reports and tests) without changing it."""
    if path.is_dir():
        path = path / LEDGER_FILE
    if not path.exists():
        raise LedgerError(f"no privacy ledger at {path}")
    return SiteLedger._load(path)
