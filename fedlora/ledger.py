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
canonical JSON without ``hash``). A line that was edited, removed or reordered breaks the chain
and the ledger is refused with that line's number; nothing is trained on an unprovable history.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlora.errors import LedgerError
from fedlora.io import append_line
from fedlora.privacy import Release

logger = logging.getLogger(__name__)

LEDGER_FILE = "privacy-ledger.jsonl"
LEDGER_VERSION = 1
GENESIS = "0" * 64
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
    """SHA-256 of a data file's bytes: the identity of the dataset a ledger belongs to."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _line_hash(payload: Mapping[str, Any]) -> str:
    body = {key: value for key, value in payload.items() if key != "hash"}
    return hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


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
            "epsilon-prv": _finite_or_none(self.epsilon_prv),
            "epsilon-rdp": _finite_or_none(self.epsilon_rdp),
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
                "time": _now(),
            }
        )
        return ledger

    @classmethod
    def _load(cls, path: Path) -> SiteLedger:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerError(f"cannot read privacy ledger {path}: {exc}") from exc
        ledger: SiteLedger | None = None
        previous = GENESIS
        for number, line in enumerate(lines, start=1):
            where = f"privacy ledger {path} line {number}"
            try:
                payload = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LedgerError(f"{where} is corrupted: not JSON ({exc.msg})") from exc
            if not isinstance(payload, dict):
                raise LedgerError(f"{where} is corrupted: not a JSON object")
            if payload.get("prev") != previous or payload.get("hash") != _line_hash(payload):
                raise LedgerError(
                    f"{where} was altered, removed or reordered (hash chain broken); "
                    "refusing to train on an unprovable privacy history"
                )
            previous = str(payload["hash"])
            try:
                if number == 1:
                    if payload.get("kind") != "open" or payload.get("version") != LEDGER_VERSION:
                        raise ValueError("first line is not a version-1 'open' line")
                    ledger = cls(
                        path,
                        site=str(payload["site"]),
                        data_fingerprint=str(payload["data-fingerprint"]),
                        records=int(payload["records"]),
                        last_hash=previous,
                    )
                    continue
                if payload.get("kind") != "round":
                    raise ValueError(f"unknown kind {payload.get('kind')!r}")
                assert ledger is not None
                ledger.entries.append(LedgerEntry.from_json(payload))
            except (KeyError, TypeError, ValueError) as exc:
                raise LedgerError(f"{where} is corrupted: {exc}") from exc
            ledger._last_hash = previous
        if ledger is None:
            raise LedgerError(f"privacy ledger {path} is empty; it has no 'open' line")
        return ledger

    def _write(self, payload: dict[str, Any]) -> None:
        payload["prev"] = self._last_hash
        payload["hash"] = _line_hash(payload)
        try:
            append_line(self.path, _canonical(payload))
        except OSError as exc:
            raise LedgerError(f"cannot append to privacy ledger {self.path}: {exc}") from exc
        self._last_hash = payload["hash"]

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
