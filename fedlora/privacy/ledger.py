"""The site privacy ledger: a durable, append-only, hash-chained record of a dataset's spend.

One ledger belongs to one site's training data (keyed by the SHA-256 of the data file), not to
one run: every run that trains on the data appends to it, so a new federation cannot reset a
site's spend. It lives on the site's own disk and is the source of truth for its accounting;
a restarted node reloads it.

File format (``privacy-ledger.jsonl``), one JSON object a line:

* line 1, ``"kind": "open"``: site, data fingerprint, records, the ledger's δ, creation time;
* then one ``"kind": "round"`` line per trained round: run id, round, steps, q, σ, C, δ, the
  accountant, ε after the round by PRV and RDP (over the whole ledger) and the time.

Every line carries ``prev`` (the previous line's hash) and ``hash`` (SHA-256 of its own
canonical JSON without ``hash``), as :mod:`fedlora.privacy.hashchain` writes and checks them. A line
that was edited, removed or reordered breaks the chain and the ledger is refused with that
line's number; nothing is trained on an unprovable history.

Three more guards (issue 14):

* **δ is fixed when the ledger opens.** The ``open`` line records it (version 2); a version-1
  ledger takes the δ of its first round line. Lifetime ε is always composed at that δ, and an
  entry at another δ is never appended: recomputing the history at a larger δ would refund
  spent budget.
* **One writer at a time.** :meth:`SiteLedger.locked` holds an exclusive ``flock`` on
  ``privacy-ledger.lock`` beside the ledger from the moment it is read, through the budget
  check and the training, to the append; a second process waits up to ``wait`` seconds and
  is then refused. Every append also re-reads the file under the lock and refuses to write
  on a view that is no longer the file's head, so two writers can never fork the chain.
* **A high-water mark.** After every write the ledger's line count and head hash are copied to
  ``privacy-ledger.high-water-<fingerprint>.json`` beside it. A ledger shorter than its mark
  (lines removed from its end, or the whole file deleted) is refused. Whoever controls the
  site's disk can remove both; the coordinator's receipts (``server/site_receipts.py``) catch
  a rollback within one run directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlora.errors import LedgerError
from fedlora.io import atomic_write_json
from fedlora.privacy.accounting import Release
from fedlora.privacy.hashchain import GENESIS as GENESIS  # re-exported: part of the ledger's format
from fedlora.privacy.hashchain import (
    append_chained,
    corrupted_line,
    finite_or_none,
    read_chain,
    utc_now,
)

logger = logging.getLogger(__name__)

LEDGER_FILE = "privacy-ledger.jsonl"
LOCK_FILE = "privacy-ledger.lock"
LEDGER_VERSION = 2
"""Version 2 records the ledger's δ in its ``open`` line; version 1 ledgers stay readable."""
READABLE_VERSIONS = (1, 2)
LOCK_WAIT_S = 120.0
"""How long a run waits for another run that holds the same ledger before it is refused."""
LEDGERS_ENV = "FEDLORA_HOME"
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


def default_ledger_root() -> Path:
    """Where simulated sites keep their ledgers unless ``ledger-root`` says otherwise.

    One per-user data directory, whatever the run's output folder: ``$FEDLORA_HOME/ledgers``
    when ``FEDLORA_HOME`` is set, else ``$XDG_DATA_HOME/fedlora/ledgers``, else
    ``~/.local/share/fedlora/ledgers``. Ledgers are keyed by site and data fingerprint below
    it, so the same data keeps its lifetime spend across runs wherever their outputs go.
    """
    home = os.environ.get(LEDGERS_ENV)
    if home:
        return Path(home).expanduser() / "ledgers"
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "fedlora" / "ledgers"


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

    Use :meth:`locked` (or :meth:`open` for a short read-and-append); the constructor takes
    already-validated contents.
    """

    def __init__(
        self,
        path: Path,
        *,
        site: str,
        data_fingerprint: str,
        records: int,
        last_hash: str,
        delta: float | None = None,
    ) -> None:
        self.path = path
        self.site = site
        self.data_fingerprint = data_fingerprint
        self.records = records
        self.delta = delta
        """The ledger's δ, fixed when it opened (``None`` only before a version-1 ledger's
        first round, or a new ledger opened without one: its first round fixes it)."""
        self.entries: list[LedgerEntry] = []
        self._last_hash = last_hash
        self._lines = 0
        self._held = False

    @classmethod
    @contextlib.contextmanager
    def locked(
        cls,
        directory: Path,
        *,
        site: str,
        data_fingerprint: str,
        records: int,
        delta: float | None = None,
        start_new: bool = False,
        wait: float = LOCK_WAIT_S,
        holder: str = "",
    ) -> Iterator[SiteLedger]:
        """Hold the ledger exclusively while it is read, checked, trained on and appended.

        The lock (``flock`` on ``privacy-ledger.lock`` in ``directory``) is taken before the
        ledger is read, so the view the caller decides on is the file's current content, and
        released when the block ends (or the process dies). Arguments as for :meth:`open`.

        Parameters
        ----------
        wait
            Seconds to wait for another process holding the lock.
        holder
            Who holds it (e.g. the run id), written into the lock file for the message another
            process gets.

        Raises
        ------
        LedgerError
            When the lock is still held by another process after ``wait`` seconds, naming
            that process; and as :meth:`open`.
        """
        with ledger_lock(directory, wait=wait, holder=holder):
            ledger = cls._open_held(
                directory,
                site=site,
                data_fingerprint=data_fingerprint,
                records=records,
                delta=delta,
                start_new=start_new,
            )
            ledger._held = True
            try:
                yield ledger
            finally:
                ledger._held = False

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        site: str,
        data_fingerprint: str,
        records: int,
        delta: float | None = None,
        start_new: bool = False,
    ) -> SiteLedger:
        """Load the ledger in ``directory`` (validating every line), or start one.

        The lock is held while the ledger is read (and created or retired), then released; a
        later :meth:`append` takes it again. A budget decision made on the returned ledger is
        atomic with its append only inside :meth:`locked`.

        Parameters
        ----------
        directory
            The site's ledger directory (created when missing).
        site, data_fingerprint, records
            The site and the dataset about to be trained.
        delta
            The δ a *new* ledger is fixed at (recorded in its ``open`` line). An existing
            ledger keeps its own; a version-1 ledger without rounds adopts this one.
        start_new
            When the existing ledger belongs to other data, retire it (renamed, never
            deleted or overwritten) and continue this data's own retired ledger when there is
            one, else start a new one, instead of refusing.

        Raises
        ------
        LedgerError
            For a corrupted or altered line (naming it), a ledger shorter than its high-water
            mark, or a ledger of other data without ``start_new``.
        """
        with ledger_lock(directory, wait=LOCK_WAIT_S):
            return cls._open_held(
                directory,
                site=site,
                data_fingerprint=data_fingerprint,
                records=records,
                delta=delta,
                start_new=start_new,
            )

    @classmethod
    def _open_held(
        cls,
        directory: Path,
        *,
        site: str,
        data_fingerprint: str,
        records: int,
        delta: float | None,
        start_new: bool,
    ) -> SiteLedger:
        path = directory / LEDGER_FILE
        if path.exists():
            ledger = cls._load(path)
            if ledger.data_fingerprint == data_fingerprint:
                return ledger._adopt(delta)
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
                return cls._load(path)._adopt(delta)
        mark = _read_mark(directory, data_fingerprint)
        if mark is not None and mark[0] > 1:  # it had recorded spend
            raise LedgerError(
                f"the privacy ledger of data {data_fingerprint[:16]}... is missing from "
                f"{directory}, but its high-water mark records {mark[0]} lines: it was deleted "
                "or moved; restore it (e.g. from a backup) rather than start its spend from zero"
            )
        ledger = cls(
            path,
            site=site,
            data_fingerprint=data_fingerprint,
            records=records,
            last_hash=GENESIS,
            delta=delta,
        )
        opening: dict[str, Any] = {
            "kind": "open",
            "version": LEDGER_VERSION,
            "site": site,
            "data-fingerprint": data_fingerprint,
            "records": records,
            "time": utc_now(),
        }
        if delta is not None:
            opening["delta"] = delta
        ledger._write(opening)
        return ledger

    def _adopt(self, delta: float | None) -> SiteLedger:
        """Give a version-1 ledger without rounds the δ its first round will fix."""
        if self.delta is None:
            self.delta = delta
        return self

    @classmethod
    def _load(cls, path: Path) -> SiteLedger:
        lines = read_chain(
            path, label=_LABEL, unprovable="refusing to train on an unprovable privacy history"
        )
        if not lines:
            raise LedgerError(f"{_LABEL} {path} is empty; it has no 'open' line")
        first, *rounds = lines
        with corrupted_line(path, 1, label=_LABEL):
            if first.get("kind") != "open" or first.get("version") not in READABLE_VERSIONS:
                raise ValueError("first line is not a version-1 or version-2 'open' line")
            fixed = first.get("delta")
            ledger = cls(
                path,
                site=str(first["site"]),
                data_fingerprint=str(first["data-fingerprint"]),
                records=int(first["records"]),
                last_hash=str(lines[-1]["hash"]),
                delta=None if fixed is None else float(fixed),
            )
        for number, payload in enumerate(rounds, start=2):
            with corrupted_line(path, number, label=_LABEL):
                if payload.get("kind") != "round":
                    raise ValueError(f"unknown kind {payload.get('kind')!r}")
                ledger.entries.append(LedgerEntry.from_json(payload))
        if ledger.delta is None and ledger.entries:
            ledger.delta = ledger.entries[0].delta  # version 1: the first round fixed it
        ledger._lines = len(lines)
        ledger._check_mark(lines)
        return ledger

    def _check_mark(self, lines: list[dict[str, Any]]) -> None:
        """Refuse a ledger shorter than, or diverging from, its high-water mark."""
        mark = _read_mark(self.path.parent, self.data_fingerprint)
        if mark is None:
            return
        count, head = mark
        if len(lines) < count:
            raise LedgerError(
                f"{_LABEL} {self.path} has {len(lines)} lines but its high-water mark records "
                f"{count}: lines were removed from its end (a rolled-back or restored file); "
                "refusing to train on a history that lost spend"
            )
        if str(lines[count - 1]["hash"]) != head:
            raise LedgerError(
                f"{_LABEL} {self.path} line {count} is not the line its high-water mark "
                "records: the history was rewritten; refusing to train on it"
            )

    def _write(self, payload: dict[str, Any]) -> None:
        self._last_hash = append_chained(self.path, payload, self._last_hash, label=_LABEL)
        self._lines += 1
        _write_mark(self.path.parent, self.data_fingerprint, self._lines, self._last_hash)

    @property
    def head(self) -> str:
        """Hash of the last line: identifies exactly the history recorded so far."""
        return self._last_hash

    @property
    def lines(self) -> int:
        """Lines in the ledger (its ``open`` line and one per round)."""
        return self._lines

    def releases(self, run_id: str | None = None) -> list[Release]:
        """Every recorded release, or only those of ``run_id``."""
        return [e.release for e in self.entries if run_id is None or e.run_id == run_id]

    def rounds_of(self, run_id: str) -> list[int]:
        """The rounds of ``run_id`` this ledger has recorded."""
        return [e.round for e in self.entries if e.run_id == run_id]

    def append(self, entry: LedgerEntry) -> None:
        """Record a trained round durably (fsynced) before its update leaves the site.

        Under the ledger's lock (taken here unless :meth:`locked` holds it), the file is read
        again first: an append on a view that is no longer the file's content (another
        process appended since) is refused, so the chain never forks.

        Raises
        ------
        LedgerError
            For an entry at another δ than the ledger's, a stale view, or a failed write (the
            file is then unchanged and the round must not be released).
        """
        if self.delta is not None and entry.delta != self.delta:
            raise LedgerError(
                f"{_LABEL} {self.path} is fixed at delta {self.delta!r}; refusing an entry at "
                f"delta {entry.delta!r}"
            )
        with contextlib.ExitStack() as stack:
            if not self._held:
                stack.enter_context(ledger_lock(self.path.parent, wait=LOCK_WAIT_S))
            self._check_current()
            self._write({"kind": "round", **entry.to_json()})
        self.entries.append(entry)
        if self.delta is None:
            self.delta = entry.delta

    def _check_current(self) -> None:
        current = read_chain(
            self.path, label=_LABEL, unprovable="refusing to append to an unprovable history"
        )
        if len(current) != self._lines or str(current[-1]["hash"]) != self._last_hash:
            raise LedgerError(
                f"{_LABEL} {self.path} changed since it was read ({len(current)} lines, "
                f"{self._lines} when read): another run appended to it; refusing to record on "
                "a stale view (the round is not released)"
            )


@contextlib.contextmanager
def ledger_lock(directory: Path, *, wait: float, holder: str = "") -> Iterator[None]:
    """Hold the exclusive lock of the ledger in ``directory`` (creating the directory).

    ``flock`` on ``privacy-ledger.lock``: released when the block ends or the process dies,
    never left behind by a crash. Another holder in this process also blocks (each call opens
    its own file description).

    Raises
    ------
    LedgerError
        When the directory cannot be created, or the lock is still held after ``wait`` seconds.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise LedgerError(f"cannot create ledger directory {directory}: {exc}") from exc
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    other = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
                    raise LedgerError(
                        f"{_LABEL} in {directory} is in use by another run "
                        f"({other or 'unknown holder'}) and stayed locked for {wait:g} s; "
                        "not training now (two runs on one ledger would overspend its budget)"
                    ) from None
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} {holder}".strip().encode("utf-8"), 0)
        yield
    finally:
        os.close(fd)


def _mark_path(directory: Path, fingerprint: str) -> Path:
    return directory / f"privacy-ledger.high-water-{fingerprint}.json"


def _read_mark(directory: Path, fingerprint: str) -> tuple[int, str] | None:
    """``(lines, head)`` of the ledger of ``fingerprint`` after its last write, if recorded."""
    path = _mark_path(directory, fingerprint)
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return int(payload["lines"]), str(payload["head"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LedgerError(f"high-water mark {path} is unreadable: {exc}") from exc


def _write_mark(directory: Path, fingerprint: str, lines: int, head: str) -> None:
    try:
        atomic_write_json(
            _mark_path(directory, fingerprint),
            {"data-fingerprint": fingerprint, "lines": lines, "head": head},
        )
    except OSError as exc:
        # The ledger line is durable; a mark one line behind still guards all earlier lines.
        logger.warning("could not update the ledger's high-water mark: %s", exc)


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
