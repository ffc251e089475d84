"""The server privacy ledger: the append-only, hash-chained record of central-DP releases.

:class:`~fedlora.strategies.central_dp.CentralDP` appends one line per aggregated round, fsynced,
before the aggregate is released; the federation keeps the file at
``runs/<run-id>/privacy/server-ledger.jsonl`` (:data:`SERVER_LEDGER_FILE`).

File format, one JSON object a line:

* line 1, ``"kind": "open"``: version, ``"scope": "server"``, mode, sites, sampled sites per
  round, δ and the creation time;
* then one ``"kind": "round"`` line per aggregated round (:class:`ServerLedgerEntry`).

Every line carries ``prev`` and ``hash`` exactly like the site ledger of
:mod:`fedlora.privacy.ledger` (see :mod:`fedlora.privacy.hashchain`); an edited, removed or
reordered line is refused naming its line number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlora.errors import LedgerError
from fedlora.privacy.accounting import Release
from fedlora.privacy.hashchain import (
    GENESIS,
    append_chained,
    corrupted_line,
    finite_or_none,
    read_chain,
    utc_now,
)

SERVER_LEDGER_FILE = "server-ledger.jsonl"
SERVER_LEDGER_VERSION = 1
_HEADER_FIELDS = ("mode", "sites", "sampled", "delta")
_LABEL = "server privacy ledger"


@dataclass(frozen=True)
class ServerLedgerEntry:
    """One aggregated round as the server ledger records it.

    ``noise_multiplier`` is the accounted sigma; ``update_noise_multiplier`` the sigma_u actually
    applied to the aggregate (equal to sigma in fixed mode). ``clipped_count`` is the *noisy*
    count of clipped updates (the released value; ``None`` in fixed mode, where no count is
    released).
    """

    round: int
    mode: str
    noise_multiplier: float
    update_noise_multiplier: float
    clip_norm: float
    next_clip_norm: float
    clipped_count: float | None
    clipped_count_stddev: float | None
    updates: int
    sampled: int
    sample_rate: float
    delta: float
    epsilon_prv: float
    epsilon_rdp: float
    time: str

    @property
    def release(self) -> Release:
        """The Gaussian release this round made (one step at client level)."""
        return Release(self.noise_multiplier, self.sample_rate, 1)

    def to_json(self) -> dict[str, Any]:
        """The entry's fields under the ledger's kebab-case keys (infinite ε as null)."""
        return {
            "round": self.round,
            "mode": self.mode,
            "noise-multiplier": self.noise_multiplier,
            "update-noise-multiplier": self.update_noise_multiplier,
            "clip-norm": self.clip_norm,
            "next-clip-norm": self.next_clip_norm,
            "clipped-count": self.clipped_count,
            "clipped-count-stddev": self.clipped_count_stddev,
            "updates": self.updates,
            "sampled": self.sampled,
            "sample-rate": self.sample_rate,
            "delta": self.delta,
            "epsilon-prv": finite_or_none(self.epsilon_prv),
            "epsilon-rdp": finite_or_none(self.epsilon_rdp),
            "time": self.time,
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> ServerLedgerEntry:
        """Parse a ``round`` line (``KeyError`` / ``TypeError`` / ``ValueError`` if malformed)."""

        def eps(key: str) -> float:
            value = payload[key]
            return math.inf if value is None else float(value)

        def optional(key: str) -> float | None:
            value = payload[key]
            return None if value is None else float(value)

        return cls(
            round=int(payload["round"]),
            mode=str(payload["mode"]),
            noise_multiplier=float(payload["noise-multiplier"]),
            update_noise_multiplier=float(payload["update-noise-multiplier"]),
            clip_norm=float(payload["clip-norm"]),
            next_clip_norm=float(payload["next-clip-norm"]),
            clipped_count=optional("clipped-count"),
            clipped_count_stddev=optional("clipped-count-stddev"),
            updates=int(payload["updates"]),
            sampled=int(payload["sampled"]),
            sample_rate=float(payload["sample-rate"]),
            delta=float(payload["delta"]),
            epsilon_prv=eps("epsilon-prv"),
            epsilon_rdp=eps("epsilon-rdp"),
            time=str(payload["time"]),
        )


class ServerPrivacyLedger:
    """The server's append-only, hash-chained record of its client-level releases.

    Line 1 is ``"kind": "open"`` (version, mode, sites, sampled sites per round, δ, time); then one
    ``"kind": "round"`` line per aggregated round (:class:`ServerLedgerEntry`). Every line carries
    ``prev`` and ``hash`` as in :mod:`fedlora.privacy.ledger`; an edited, removed or reordered line
    is refused naming its line number. Use :meth:`open` or :func:`read_server_ledger`.
    """

    def __init__(self, path: Path, header: Mapping[str, Any], last_hash: str) -> None:
        self.path = path
        self.header = dict(header)
        self.entries: list[ServerLedgerEntry] = []
        self._last_hash = last_hash

    @classmethod
    def open(
        cls, path: Path, *, mode: str, sites: int, sampled: int, delta: float
    ) -> ServerPrivacyLedger:
        """Load the ledger at ``path`` (validating every line), or start one there.

        An existing ledger is continued, never reset: its rounds count toward ε.

        Parameters
        ----------
        path
            The ledger file; its directory is created when missing.
        mode, sites, sampled, delta
            The central-DP set-up the rounds are accounted under.

        Raises
        ------
        LedgerError
            For a corrupted or altered line (naming it), an unwritable path, or an existing
            ledger of another set-up.
        """
        header = {"mode": mode, "sites": sites, "sampled": sampled, "delta": delta}
        if path.exists():
            ledger = cls._load(path)
            recorded = {key: ledger.header.get(key) for key in _HEADER_FIELDS}
            if recorded != header:
                raise LedgerError(
                    f"server privacy ledger {path} was written for {recorded}, not {header}; "
                    "use a new run directory"
                )
            return ledger
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create ledger directory {path.parent}: {exc}") from exc
        ledger = cls(path, header, GENESIS)
        ledger._write(
            {
                "kind": "open",
                "version": SERVER_LEDGER_VERSION,
                "scope": "server",
                **header,
                "time": utc_now(),
            }
        )
        return ledger

    @classmethod
    def _load(cls, path: Path) -> ServerPrivacyLedger:
        lines = read_chain(path, label=_LABEL, unprovable="its privacy history is unprovable")
        if not lines:
            raise LedgerError(f"{_LABEL} {path} is empty; it has no 'open' line")
        first, *rounds = lines
        with corrupted_line(path, 1, label=_LABEL):
            if (
                first.get("kind") != "open"
                or first.get("version") != SERVER_LEDGER_VERSION
                or first.get("scope") != "server"
            ):
                raise ValueError("first line is not a version-1 server 'open' line")
            header = {key: first[key] for key in _HEADER_FIELDS}
        ledger = cls(path, header, str(lines[-1]["hash"]))
        for number, payload in enumerate(rounds, start=2):
            with corrupted_line(path, number, label=_LABEL):
                if payload.get("kind") != "round":
                    raise ValueError(f"unknown kind {payload.get('kind')!r}")
                ledger.entries.append(ServerLedgerEntry.from_json(payload))
        return ledger

    def _write(self, payload: dict[str, Any]) -> None:
        self._last_hash = append_chained(self.path, payload, self._last_hash, label=_LABEL)

    def releases(self) -> list[Release]:
        """Every recorded release, in order."""
        return [entry.release for entry in self.entries]

    def append(self, entry: ServerLedgerEntry) -> None:
        """Record an aggregated round durably (fsynced) before the aggregate is released."""
        self._write({"kind": "round", **entry.to_json()})
        self.entries.append(entry)


def read_server_ledger(path: Path) -> ServerPrivacyLedger:
    """Load and validate a server ledger (a file, or a directory holding one) unchanged.

    Raises
    ------
    LedgerError
        When it is missing, corrupted or altered (naming the line).
    """
    if path.is_dir():
        path = path / SERVER_LEDGER_FILE
    if not path.exists():
        raise LedgerError(f"no server privacy ledger at {path}")
    return ServerPrivacyLedger._load(path)
