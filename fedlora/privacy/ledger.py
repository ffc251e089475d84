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
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedlora.errors import LedgerError
from fedlora.privacy.accounting import Release
from fedlora.privacy.hashchain import GENESIS as GENESIS  # re-exported: part of the ledger's format
from fedlora.privacy.hashchain import (
    append_chained,
    corrupted_line,
    read_chain,
    utc_now,
)
from fedlora.privacy.ledger_entry import ROUND_FIELDS as ROUND_FIELDS  # part of the format
from fedlora.privacy.ledger_entry import LedgerEntry
from fedlora.privacy.ledger_storage import (
    LEDGER_FILE,
    LOCK_WAIT_S,
    ledger_lock,
    move_without_overwriting,
    read_mark,
    retired_path,
    write_mark,
)

logger = logging.getLogger(__name__)

LEDGER_VERSION = 2
"""Version 2 records the ledger's δ in its ``open`` line; version 1 ledgers stay readable."""
READABLE_VERSIONS = (1, 2)
_LABEL = "privacy ledger"


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
            move_without_overwriting(path, retired_path(directory, ledger.data_fingerprint))
            logger.warning("retired the privacy ledger of data %s", ledger.data_fingerprint[:16])
            earlier = retired_path(directory, data_fingerprint)
            if earlier.exists():
                # Data seen before keeps its history: a new ledger must never reset its spend.
                move_without_overwriting(earlier, path)
                logger.warning("reactivated the earlier privacy ledger of this data")
                return cls._load(path)._adopt(delta)
        mark = read_mark(directory, data_fingerprint)
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
        mark = read_mark(self.path.parent, self.data_fingerprint)
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
        write_mark(self.path.parent, self.data_fingerprint, self._lines, self._last_hash)

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


def read_ledger(path: Path) -> SiteLedger:
    """Load and validate a ledger file (for reports and tests) without changing it."""
    if path.is_dir():
        path = path / LEDGER_FILE
    if not path.exists():
        raise LedgerError(f"no privacy ledger at {path}")
    return SiteLedger._load(path)
