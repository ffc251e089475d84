"""Where a site's privacy ledgers live on disk, and the files that guard them.

The ledger itself (:mod:`fedlora.privacy.ledger`) is one hash-chained file; beside it stand
the lock that keeps one writer at a time (``privacy-ledger.lock``), the high-water mark that
refuses a ledger rolled back from its end (``privacy-ledger.high-water-<fingerprint>.json``)
and the retired ledgers of other data (``privacy-ledger.retired-<fingerprint>.jsonl``, never
deleted or overwritten). This module names those files and reads and writes all but the
ledger; it also says where simulated sites keep their ledgers and what identifies a dataset.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from fedlora.errors import LedgerError
from fedlora.io import atomic_write_json, user_data_root

logger = logging.getLogger(__name__)

LEDGER_FILE = "privacy-ledger.jsonl"
LOCK_FILE = "privacy-ledger.lock"
LOCK_WAIT_S = 120.0
"""How long a run waits for another run that holds the same ledger before it is refused."""
_LABEL = "privacy ledger"


def default_ledger_root() -> Path:
    """Where simulated sites keep their ledgers unless ``ledger-root`` says otherwise.

    One per-user data directory, whatever the run's output folder: ``$FEDLORA_HOME/ledgers``
    when ``FEDLORA_HOME`` is set, else ``$XDG_DATA_HOME/fedlora/ledgers``, else
    ``~/.local/share/fedlora/ledgers``. Ledgers are keyed by site and data fingerprint below
    it, so the same data keeps its lifetime spend across runs wherever their outputs go.
    """
    return user_data_root() / "ledgers"


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


def mark_path(directory: Path, fingerprint: str) -> Path:
    """The high-water mark of the ledger of data ``fingerprint`` in ``directory``."""
    return directory / f"privacy-ledger.high-water-{fingerprint}.json"


def read_mark(directory: Path, fingerprint: str) -> tuple[int, str] | None:
    """``(lines, head)`` of the ledger of ``fingerprint`` after its last write, if recorded."""
    path = mark_path(directory, fingerprint)
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return int(payload["lines"]), str(payload["head"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LedgerError(f"high-water mark {path} is unreadable: {exc}") from exc


def write_mark(directory: Path, fingerprint: str, lines: int, head: str) -> None:
    """Record the ledger's line count and head after a write (a failure is logged, not raised)."""
    try:
        atomic_write_json(
            mark_path(directory, fingerprint),
            {"data-fingerprint": fingerprint, "lines": lines, "head": head},
        )
    except OSError as exc:
        # The ledger line is durable; a mark one line behind still guards all earlier lines.
        logger.warning("could not update the ledger's high-water mark: %s", exc)


def retired_path(directory: Path, fingerprint: str) -> Path:
    """Where the ledger of data ``fingerprint`` lies once retired."""
    return directory / f"privacy-ledger.retired-{fingerprint}.jsonl"


def move_without_overwriting(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; a ledger file is never overwritten.

    Raises
    ------
    LedgerError
        When ``target`` exists.
    """
    if target.exists():
        raise LedgerError(f"cannot move {source} to {target}: it exists and is never overwritten")
    source.rename(target)
