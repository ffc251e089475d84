"""Hash-chained JSON-lines files: the storage format of fedlora's privacy ledgers.

Every line is one JSON object carrying ``prev`` (the ``hash`` of the line before it, or
:data:`GENESIS` for line 1) and ``hash`` (the SHA-256 of the line's canonical JSON without
``hash``, see :func:`line_hash`). A line that was edited, removed from the middle or reordered
breaks the chain at that line; lines removed from the end leave a valid, shorter chain, which
only a remembered head hash can detect.

An append that fails (a full disk, an I/O error) is undone: the file is cut back to its length
before the append and flushed, so a failed write never leaves a torn line behind.

:func:`read_chain` validates a whole file and :func:`append_chained` adds one line durably. What
the lines mean (an ``open`` line, ``round`` lines) is up to the ledger that uses them:
:mod:`fedlora.privacy.ledger` and :mod:`fedlora.privacy.server_ledger`.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedlora.errors import LedgerError

GENESIS = "0" * 64
"""The ``prev`` of a chain's first line."""


def canonical_json(payload: Mapping[str, Any]) -> str:
    """The canonical JSON of ``payload``: sorted keys, no whitespace, no NaN or infinity.

    Parameters
    ----------
    payload
        A JSON-serialisable mapping.

    Returns
    -------
    str
        One line of JSON; equal payloads always give the same text.

    Raises
    ------
    ValueError
        For a NaN or infinite float in ``payload``.
    """
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)


def line_hash(payload: Mapping[str, Any]) -> str:
    """The hash a chained line must carry: SHA-256 of its canonical JSON without ``hash``.

    Parameters
    ----------
    payload
        The line's JSON object, with or without its ``hash`` key (it is ignored).

    Returns
    -------
    str
        64 lowercase hexadecimal digits.
    """
    body = {key: value for key, value in payload.items() if key != "hash"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def utc_now() -> str:
    """The current UTC time in ISO 8601 with milliseconds, as ledger lines record it."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def finite_or_none(value: float) -> float | None:
    """``value``, or ``None`` when it is infinite or NaN (JSON has no infinity).

    Parameters
    ----------
    value
        A float such as an ε, which is infinite when nothing bounds it.

    Returns
    -------
    float or None
        ``value`` when finite, else ``None``.
    """
    return value if math.isfinite(value) else None


@contextmanager
def corrupted_line(path: Path, number: int, *, label: str) -> Iterator[None]:
    """Report a malformed line: turn a parse error inside the block into a :class:`LedgerError`.

    Parameters
    ----------
    path
        The chained file.
    number
        The 1-based number of the line being parsed.
    label
        What the file is, for the message (e.g. ``"privacy ledger"``).

    Raises
    ------
    LedgerError
        ``"{label} {path} line {number} is corrupted: ..."`` for a ``KeyError``,
        ``TypeError`` or ``ValueError`` raised inside the block.
    """
    try:
        yield
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"{label} {path} line {number} is corrupted: {exc}") from exc


def _json_object(line: str) -> dict[str, Any]:
    try:
        payload = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from exc
    if not isinstance(payload, dict):
        raise ValueError("not a JSON object")
    return payload


def read_chain(path: Path, *, label: str, unprovable: str) -> list[dict[str, Any]]:
    """Read a hash-chained JSON-lines file, validating every line and the whole chain.

    Parameters
    ----------
    path
        The file; it is only read.
    label
        What the file is, for messages (e.g. ``"privacy ledger"``).
    unprovable
        The consequence a broken chain's message ends with (e.g. ``"its privacy history is
        unprovable"``).

    Returns
    -------
    list of dict
        The lines' JSON objects in file order, ``prev`` and ``hash`` included; empty for an
        empty file. The last one's ``hash`` is the chain's head.

    Raises
    ------
    LedgerError
        When the file cannot be read; for the first line that is not a JSON object
        (``"{label} {path} line N is corrupted: ..."``); or for the first line whose ``prev``
        is not the previous line's ``hash`` or whose ``hash`` does not match its content
        (``"{label} {path} line N was altered, removed or reordered (hash chain broken);
        {unprovable}"``).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(f"cannot read {label} {path}: {exc}") from exc
    payloads: list[dict[str, Any]] = []
    previous = GENESIS
    for number, line in enumerate(lines, start=1):
        with corrupted_line(path, number, label=label):
            payload = _json_object(line)
        if payload.get("prev") != previous or payload.get("hash") != line_hash(payload):
            raise LedgerError(
                f"{label} {path} line {number} was altered, removed or reordered "
                f"(hash chain broken); {unprovable}"
            )
        previous = str(payload["hash"])
        payloads.append(payload)
    return payloads


def append_chained(path: Path, payload: Mapping[str, Any], prev_hash: str, *, label: str) -> str:
    """Append ``payload`` as the next line of a chain, flushed to disk before returning.

    Parameters
    ----------
    path
        The chained file (created when missing; its directory must exist).
    payload
        The line's content without ``prev`` and ``hash``; it is not modified.
    prev_hash
        The chain's current head: the last line's ``hash``, or :data:`GENESIS` for line 1.
    label
        What the file is, for the error message (e.g. ``"privacy ledger"``).

    Returns
    -------
    str
        The new line's ``hash``: the chain's new head.

    Raises
    ------
    LedgerError
        When the line cannot be written (``"cannot append to {label} {path}: ..."``). The
        file is then byte-identical to what it was before the call (see
        :func:`append_whole_line`), so the chain stays valid and the next append works.
    ValueError
        For a NaN or infinite float in ``payload``.
    """
    line = {**payload, "prev": prev_hash}
    line["hash"] = line_hash(line)
    try:
        append_whole_line(path, canonical_json(line))
    except OSError as exc:
        raise LedgerError(f"cannot append to {label} {path}: {exc}") from exc
    return str(line["hash"])


def append_whole_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` and fsync it, or leave the file as it was.

    The length before the append is remembered; when a write or the fsync fails (``ENOSPC``
    part-way through the line, ``EIO``), the file is truncated back to that length and flushed
    before the error is raised. Only a crash of the machine between the write and the
    truncation can leave a torn last line, which :func:`read_chain` reports.

    Raises
    ------
    OSError
        The write's own error, after the file was restored; or, when even the truncation
        failed, an ``OSError`` saying the file may end in a torn line.
    """
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        before = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, before)
                os.fsync(fd)
            except OSError as undo:
                raise OSError(
                    undo.errno or errno.EIO,
                    f"{exc}; restoring its previous {before} bytes failed too ({undo}): "
                    "it may end in a torn line",
                ) from exc
            raise
    finally:
        os.close(fd)
