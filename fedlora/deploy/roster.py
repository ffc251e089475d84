"""The roster: which registered SuperNode is which site, on the coordinator host.

Flower's SuperLink knows a site only as a node id and a public key; the site name a reply
declares is whatever the site wrote. The roster binds them at registration, when the operator
admits a site's key (``fedlora deploy register``, :func:`fedlora.deploy.commands.register_site`)::

    {"version": 1,
     "sites": [{"node-id": 6342104113413513241, "site": "hospital-a",
                "key-sha256": "SHA256:q1w2...", "registered-at": "2026-01-01T12:00:00+00:00"}]}

so the ServerApp can take a reply's site from the node it came from
(:func:`read_roster`: node id -> site name) and refuse a reply whose declared site differs.

Where it lives: ``PKI_DIR/roster.json`` on the coordinator host by default
(:func:`default_roster_path`); ``fedlora deploy superlink`` passes its path to the SuperLink
(``python -m fedlora.flower_internals.link_superlink --roster PATH``), which exports it as
``$FEDLORA_ROSTER`` (:data:`ROSTER_ENV`) to every process it starts, the ServerApp included
(:func:`roster_path_from_env`).

The file is written atomically (a flushed temporary file renamed over it) with mode 0644 under
an exclusive lock (concurrent registrations do not lose each other's entries); it is not
secret (node ids, site names, public-key fingerprints) but its integrity is what binds a reply
to a site, so :func:`load_roster` refuses a file that others may write, as well as anything
malformed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedlora.errors import ConfigError, PkiError
from fedlora.pki.layout import PUBLIC_MODE, check_site_name, write_file

__all__ = [
    "ROSTER_ENV",
    "ROSTER_FILE",
    "ROSTER_VERSION",
    "RosterEntry",
    "RosterError",
    "default_roster_path",
    "load_roster",
    "read_roster",
    "remove_roster_entry",
    "roster_path_from_env",
    "write_roster_entry",
]

ROSTER_ENV = "FEDLORA_ROSTER"
"""The environment variable holding the roster's absolute path in the SuperLink's processes."""
ROSTER_FILE = "roster.json"
"""The roster's name in the PKI directory."""
ROSTER_VERSION = 1
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_MAX_NODE_ID = 2**64 - 1


class RosterError(ConfigError):
    """The roster is missing, unreadable, malformed, writable by others or contradictory."""


@dataclass(frozen=True)
class RosterEntry:
    """One registered site.

    Attributes
    ----------
    node_id : int
        The SuperLink's node id of the site's key (``flwr supernode register`` prints it).
    site : str
        The site's name (``[site] name`` of its ``site.toml``).
    key_sha256 : str
        The ``SHA256:...`` fingerprint of the registered OpenSSH public key (``ssh-keygen -l``).
    registered_at : str
        When it was recorded (ISO 8601, UTC).
    """

    node_id: int
    site: str
    key_sha256: str
    registered_at: str

    def to_json(self) -> dict[str, Any]:
        """The entry as the roster file holds it."""
        return {
            "node-id": self.node_id,
            "site": self.site,
            "key-sha256": self.key_sha256,
            "registered-at": self.registered_at,
        }


def default_roster_path(pki_dir: Path | str) -> Path:
    """``PKI_DIR/roster.json``, absolute: the roster of the coordinator with that PKI."""
    return Path(pki_dir).expanduser().absolute() / ROSTER_FILE


def roster_path_from_env(environ: Mapping[str, str] | None = None) -> Path | None:
    """The roster the SuperLink gave its processes (``$FEDLORA_ROSTER``), or ``None``.

    ``None`` means no roster was configured: a simulation, or an ``--insecure`` SuperLink
    (no site keys, so nothing to bind a reply to).

    Raises
    ------
    RosterError
        When the variable is set but not an absolute path.
    """
    value = (os.environ if environ is None else environ).get(ROSTER_ENV)
    if not value:
        return None
    path = Path(value)
    if not path.is_absolute():
        raise RosterError(f"${ROSTER_ENV} must be an absolute path, got {value!r}")
    return path


def _check_node_id(node_id: object, where: str) -> int:
    if isinstance(node_id, bool) or not isinstance(node_id, int):
        raise RosterError(f"{where}: node-id must be an integer, got {node_id!r}")
    if not 0 < node_id <= _MAX_NODE_ID:
        raise RosterError(f"{where}: node-id must be 1..2^64-1, got {node_id}")
    return node_id


def _check_fingerprint(value: object, where: str) -> str:
    if not isinstance(value, str) or not _FINGERPRINT.fullmatch(value):
        raise RosterError(f"{where}: key-sha256 must be an OpenSSH SHA256:... fingerprint")
    return value


def _entry(raw: object, where: str) -> RosterEntry:
    if not isinstance(raw, dict):
        raise RosterError(f"{where}: each entry must be a JSON object")
    expected = {"node-id", "site", "key-sha256", "registered-at"}
    if set(raw) != expected:
        missing = sorted(expected - set(raw))
        unknown = sorted(set(raw) - expected)
        raise RosterError(f"{where}: missing keys {missing}, unknown keys {unknown}")
    site = raw["site"]
    if not isinstance(site, str):
        raise RosterError(f"{where}: site must be a string")
    try:
        check_site_name(site)
    except PkiError as exc:
        raise RosterError(f"{where}: {exc}") from None
    registered_at = raw["registered-at"]
    if not isinstance(registered_at, str):
        raise RosterError(f"{where}: registered-at must be an ISO 8601 string")
    try:
        datetime.fromisoformat(registered_at)
    except ValueError:
        raise RosterError(f"{where}: registered-at {registered_at!r} is not ISO 8601") from None
    return RosterEntry(
        node_id=_check_node_id(raw["node-id"], where),
        site=site,
        key_sha256=_check_fingerprint(raw["key-sha256"], where),
        registered_at=registered_at,
    )


def _parse(text: str, source: Path) -> list[RosterEntry]:
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise RosterError(f"roster {source} is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or set(document) != {"version", "sites"}:
        raise RosterError(f"roster {source} must be an object with exactly version and sites")
    if document["version"] != ROSTER_VERSION:
        raise RosterError(
            f"roster {source} has version {document['version']!r}; this fedlora reads "
            f"version {ROSTER_VERSION}"
        )
    if not isinstance(document["sites"], list):
        raise RosterError(f"roster {source}: sites must be a list")
    entries = [
        _entry(raw, f"roster {source}, entry {index}")
        for index, raw in enumerate(document["sites"])
    ]
    for attribute, label in (("node_id", "node id"), ("site", "site"), ("key_sha256", "key")):
        values = [getattr(entry, attribute) for entry in entries]
        duplicates = sorted({str(value) for value in values if values.count(value) > 1})
        if duplicates:
            raise RosterError(f"roster {source} lists {label} {duplicates[0]} more than once")
    return entries


def load_roster(path: Path | str) -> list[RosterEntry]:
    """Every entry of the roster at ``path``, validated.

    Raises
    ------
    RosterError
        When the file is missing, unreadable, not a regular file, writable by group or others,
        not a version-1 roster, has an invalid entry (node id, site name, fingerprint, time,
        unknown or missing keys) or lists a node id, site or key twice.
    """
    source = Path(path)
    try:
        info = source.lstat()
    except FileNotFoundError:
        raise RosterError(
            f"roster {source} not found: register the sites with fedlora deploy register "
            "on the coordinator host (docs/deployment.md)"
        ) from None
    except OSError as exc:
        raise RosterError(f"cannot read roster {source}: {exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise RosterError(f"roster {source} is not a regular file")
    if info.st_mode & 0o022:
        raise RosterError(
            f"roster {source} has mode {stat.S_IMODE(info.st_mode):04o}: others could rebind "
            "sites to nodes; chmod go-w it and check its entries"
        )
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RosterError(f"cannot read roster {source}: {exc}") from None
    return _parse(text, source)


def read_roster(path: Path | str) -> dict[int, str]:
    """The roster at ``path`` as node id -> site name (validated as :func:`load_roster`).

    Raises
    ------
    RosterError
        As :func:`load_roster`.
    """
    return {entry.node_id: entry.site for entry in load_roster(path)}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _store(path: Path, entries: list[RosterEntry]) -> None:
    document = {"version": ROSTER_VERSION, "sites": [entry.to_json() for entry in entries]}
    write_file(path, (json.dumps(document, indent=2) + "\n").encode(), PUBLIC_MODE)


def write_roster_entry(
    path: Path | str,
    *,
    node_id: int,
    site: str,
    key_sha256: str,
    registered_at: datetime | None = None,
) -> RosterEntry:
    """Record that node ``node_id`` is ``site`` (key ``key_sha256``) in the roster at ``path``.

    An earlier entry for the same site, node id or key is replaced: the site's latest
    registration alone speaks for it (unregister the old node with ``flwr supernode
    unregister``). The file is created if missing.

    Returns
    -------
    RosterEntry
        The entry written.

    Raises
    ------
    RosterError
        For an invalid node id, site name or fingerprint, or an existing roster that fails
        :func:`load_roster`'s checks.
    """
    target = Path(path).expanduser().absolute()
    when = (registered_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    entry = _entry(
        {
            "node-id": node_id,
            "site": site,
            "key-sha256": key_sha256,
            "registered-at": when.isoformat(timespec="seconds"),
        },
        f"roster entry for {site!r}",
    )
    with _locked(target):
        entries = load_roster(target) if target.exists() else []
        kept = [
            old
            for old in entries
            if old.node_id != entry.node_id
            and old.site != entry.site
            and old.key_sha256 != entry.key_sha256
        ]
        _store(target, [*kept, entry])
    return entry


def remove_roster_entry(path: Path | str, node_id: int) -> RosterEntry | None:
    """Drop node ``node_id`` from the roster at ``path``; the entry removed, if any.

    Raises
    ------
    RosterError
        When the roster fails :func:`load_roster`'s checks.
    """
    target = Path(path).expanduser().absolute()
    with _locked(target):
        entries = load_roster(target)
        removed = [entry for entry in entries if entry.node_id == node_id]
        if removed:
            _store(target, [entry for entry in entries if entry.node_id != node_id])
    return removed[0] if removed else None
