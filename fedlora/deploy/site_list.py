"""``fedlora deploy sites``: which node is which site, and whether it is online.

Flower's ``flwr supernode list`` shows node ids and their status but no site names (its
``Owner`` is the operator's account, ``none`` without accounts); the roster that ``fedlora
deploy register`` writes (:mod:`fedlora.deploy.roster`) maps each node id to its enrolled site.
:func:`site_rows` joins the two; :func:`superlink_nodes` asks the SuperLink.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fedlora.deploy.flwr_cli import run_flwr
from fedlora.deploy.host import flower_executable
from fedlora.deploy.roster import RosterEntry
from fedlora.errors import ConfigError

__all__ = ["SiteRow", "format_rows", "site_rows", "superlink_nodes"]

NOT_ENROLLED = "(not enrolled)"
"""The site column of a node the SuperLink knows but the roster does not."""
UNKNOWN = "not known to the SuperLink"
"""The status of a roster entry the SuperLink does not list (another SuperLink, a restart)."""


@dataclass(frozen=True)
class SiteRow:
    """One enrolled site or SuperLink node.

    ``status`` is Flower's (``online``, ``offline``, ``registered``: never connected,
    ``unregistered``) or :data:`UNKNOWN`; ``last_seen`` when it came online (online) or went
    offline (offline), in UTC, else ``"-"``.
    """

    site: str
    node_id: int
    status: str
    last_seen: str
    key_sha256: str


def superlink_nodes(
    connection: str, *, env: Mapping[str, str] | None = None, timeout: float = 120.0
) -> list[dict[str, Any]]:
    """The SuperLink's nodes, as ``flwr supernode list CONNECTION --format json`` lists them.

    Raises
    ------
    ConfigError
        When ``flwr`` fails or answers something else than a node list (its message).
    """
    argv = [flower_executable("flwr"), "supernode", "list", connection, "--format", "json"]
    result = run_flwr(argv, what=f"flwr supernode list {connection}", env=env, timeout=timeout)
    start = result.stdout.find("{")
    try:
        answer = json.loads(result.stdout[start:]) if start >= 0 else {}
    except ValueError:
        answer = {}
    nodes = answer.get("nodes") if isinstance(answer, dict) else None
    if result.returncode != 0 or answer.get("success") is not True or not isinstance(nodes, list):
        message = answer.get("error-message") if isinstance(answer, dict) else None
        output = message or " ".join((result.stdout + result.stderr).split())[-500:]
        raise ConfigError(f"flwr supernode list {connection} failed: {output}")
    return [node for node in nodes if isinstance(node, dict)]


def site_rows(roster: Iterable[RosterEntry], nodes: Iterable[Mapping[str, Any]]) -> list[SiteRow]:
    """Join the roster (node id -> site) with the SuperLink's node list.

    Every roster entry gives a row (:data:`UNKNOWN` when the SuperLink does not list its node);
    every node the roster lacks gives one too (site :data:`NOT_ENROLLED`: its replies count for
    no site). Sorted by site name, the nodes without one last.
    """
    listed: dict[int, Mapping[str, Any]] = {}
    for node in nodes:
        try:
            listed[int(str(node.get("node-id")))] = node
        except ValueError:
            continue
    rows = []
    enrolled = set()
    for entry in roster:
        enrolled.add(entry.node_id)
        known = listed.get(entry.node_id)
        status = str(known.get("status")) if known is not None else UNKNOWN
        rows.append(SiteRow(entry.site, entry.node_id, status, _last_seen(known), entry.key_sha256))
    for node_id, node in listed.items():
        if node_id not in enrolled:
            rows.append(
                SiteRow(NOT_ENROLLED, node_id, str(node.get("status")), _last_seen(node), "-")
            )
    return sorted(rows, key=lambda row: (row.site == NOT_ENROLLED, row.site, row.node_id))


def _last_seen(node: Mapping[str, Any] | None) -> str:
    if node is None:
        return "-"
    if node.get("status") == "online":
        when = node.get("online-at")
    elif node.get("status") == "offline":
        when = node.get("offline-at")
    else:
        when = None
    return str(when) if when and when != "N/A" else "-"


def format_rows(rows: list[SiteRow]) -> list[str]:
    """The rows as aligned text lines, a header first."""
    table = [("site", "node id", "status", "since (UTC)", "key")]
    table += [(r.site, str(r.node_id), r.status, r.last_seen, r.key_sha256) for r in rows]
    widths = [max(len(row[column]) for row in table) for column in range(4)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in table
    ]
