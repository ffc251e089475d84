"""The coordinator's receipts of each site's ledger: a rolled-back ledger is caught.

Every DP train reply carries the site's ledger length and head (``ledger-lines``,
``ledger-head`` in its privacy record, written to ``metrics.jsonl``). A trained round appends
a line, so a site's ledger for the same data only ever grows: a reply whose ledger has no more
lines than the site reported before means the ledger lost lines (restored from a backup, a
snapshot rolled back) and the site composed its budget over a shortened history. Its update is
rejected and the reason recorded.

This guards within one run directory (a resumed run reloads the receipts from
``metrics.jsonl``); a new run directory starts without receipts. It complements the site's own
high-water mark (:mod:`fedlora.privacy.ledger`), which whoever controls the site's disk can roll
back together with the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Receipt:
    """What a site last reported about one ledger."""

    lines: int
    head: str
    round: int


class SiteReceipts:
    """The last ledger length and head each site reported, per site and data fingerprint."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], Receipt] = {}

    @classmethod
    def from_metrics(cls, records: Iterable[Mapping[str, Any]]) -> SiteReceipts:
        """Receipts from the ``privacy`` of each round recorded in ``metrics.jsonl``."""
        receipts = cls()
        for record in records:
            for site, privacy in (record.get("privacy") or {}).items():
                receipts.check(site, privacy, int(record.get("round", 0)))
        return receipts

    def check(self, site: str, privacy: Mapping[str, Any] | None, server_round: int) -> str | None:
        """Record a reply's receipt; the reason to reject it when its ledger shrank.

        Replies without a receipt (no DP, or a site of an older version) pass unchecked.
        """
        if not privacy or "ledger-lines" not in privacy:
            return None
        key = (site, str(privacy.get("data-fingerprint", "")))
        lines, head = int(privacy["ledger-lines"]), str(privacy.get("ledger-head", ""))
        before = self._last.get(key)
        if before is not None and lines <= before.lines:
            return (
                f"its privacy ledger has {lines} lines (head {head[:12]}), but after round "
                f"{before.round} it had {before.lines} (head {before.head[:12]}): the ledger "
                "was rolled back, so its budget was checked against a shortened history"
            )
        self._last[key] = Receipt(lines, head, server_round)
        return None
