"""The sites' keys: SuperNode authentication, secure-aggregation identity, the signed roster.

Each enrolled site gets two key pairs in ``sites/`` (:mod:`fedlora.pki.commands` shows the
layout): its SuperNode authentication key (``NAME.key`` / ``NAME.pub``, NIST P-384, OpenSSH,
what Flower's SuperNode authentication accepts) and its secure-aggregation identity key
(``NAME.secagg.key`` / ``NAME.secagg.pub``, Ed25519, PEM), with which it signs what it
advertises in a secure round. Where the CA key is, every change of the sites (one created,
one's key replaced, one removed) re-issues ``secagg-roster.json``, the CA-signed list of every
site's identity key (:mod:`fedlora.pki.secagg_roster`), which each site must be given again.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from fedlora.errors import PkiError
from fedlora.pki.inventory import require_ca, require_ca_cert
from fedlora.pki.layout import (
    KEY_MODE,
    PUBLIC_MODE,
    PkiLayout,
    check_site_name,
    make_directory,
    refuse_existing,
    ssh_fingerprint,
    write_file,
)
from fedlora.pki.secagg_roster import SecaggRoster, identity_key_pair, issue_roster
from fedlora.pki.x509 import new_key

__all__ = [
    "RemovedSite",
    "SiteKey",
    "create_secagg_key",
    "create_site_key",
    "issue_secagg_roster",
    "register_command",
    "remove_site",
    "site_connection_toml",
    "supernode_command",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteKey:
    """A site's key pairs that :func:`create_site_key` made."""

    name: str
    key: Path
    public_key: Path
    ca_cert: Path
    openssh: str
    """The public key line, ``ecdsa-sha2-nistp384 AAAA... NAME``."""
    fingerprint: str
    """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
    secagg_key: Path
    secagg_public_key: Path
    roster: Path | None
    """The re-issued ``secagg-roster.json``; ``None`` where the CA key is not (a site's own
    machine): the operator issues it (``fedlora pki roster``)."""


@dataclass(frozen=True)
class RemovedSite:
    """What :func:`remove_site` deleted and the roster it left."""

    name: str
    files: tuple[Path, ...]
    roster: SecaggRoster | None
    """The re-issued roster; ``None`` when no site is left in it (the file is deleted)."""


def create_site_key(directory: Path | str, name: str, *, force: bool = False) -> SiteKey:
    """Create site ``name``'s authentication (P-384) and identity (Ed25519) key pairs.

    Where ``ca.key`` is in ``directory`` the secure-aggregation roster is re-issued with the
    new site.

    Parameters
    ----------
    directory : Path or str
        The PKI directory; it needs ``ca.pem`` (from ``fedlora pki init`` or copied there).
    name : str
        The site's name: 1 to 63 letters, digits, ``-`` or ``_``.
    force : bool
        Replace the site's existing keys (it must then be registered again, and every site
        given the new roster).

    Returns
    -------
    SiteKey
        The paths, the OpenSSH public key line and its fingerprint, the roster.

    Raises
    ------
    PkiError
        If the name is invalid, there is no CA certificate, or a key of the site exists and
        ``force`` is false.
    """
    layout = PkiLayout(Path(directory))
    check_site_name(name)
    require_ca_cert(layout)
    key_path, public_path = layout.site_key(name), layout.site_public_key(name)
    refuse_existing(
        (key_path, public_path, layout.secagg_key(name), layout.secagg_public_key(name)),
        force,
        f"a new key for site {name!r} must be registered again with Flower",
    )
    key = new_key()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    openssh = f"{public.decode('ascii')} {name}"
    make_directory(layout.sites)
    write_file(key_path, private, KEY_MODE)
    write_file(public_path, (openssh + "\n").encode("ascii"), PUBLIC_MODE)
    logger.info("wrote %s and %s", key_path, public_path)
    roster = create_secagg_key(directory, name, force=True)
    return SiteKey(
        name=name,
        key=key_path,
        public_key=public_path,
        ca_cert=layout.ca_cert,
        openssh=openssh,
        fingerprint=ssh_fingerprint(openssh),
        secagg_key=layout.secagg_key(name),
        secagg_public_key=layout.secagg_public_key(name),
        roster=roster,
    )


def create_secagg_key(directory: Path | str, name: str, *, force: bool = False) -> Path | None:
    """Create site ``name``'s secure-aggregation identity key pair (Ed25519).

    For a site enrolled before ``fedlora pki`` issued these keys (``fedlora pki site NAME
    --secagg-only``). Re-issues the roster where ``ca.key`` is.

    Returns
    -------
    Path or None
        The re-issued roster, or ``None`` without the CA key here.

    Raises
    ------
    PkiError
        For an invalid name, no CA certificate, or an existing key without ``force``.
    """
    layout = PkiLayout(Path(directory))
    check_site_name(name)
    require_ca_cert(layout)
    key_path, public_path = layout.secagg_key(name), layout.secagg_public_key(name)
    refuse_existing(
        (key_path, public_path),
        force,
        "every site knows it from the secure-aggregation roster",
    )
    private, public = identity_key_pair()
    make_directory(layout.sites)
    write_file(key_path, private, KEY_MODE)
    write_file(public_path, public, PUBLIC_MODE)
    logger.info("wrote %s and %s", key_path, public_path)
    if not layout.ca_key.exists():
        return None
    return issue_secagg_roster(directory).path


def issue_secagg_roster(directory: Path | str) -> SecaggRoster:
    """Sign ``secagg-roster.json`` listing every ``sites/NAME.secagg.pub`` (needs ``ca.key``).

    Raises
    ------
    PkiError
        Without the CA key, with no site identity key, or with a malformed one.
    """
    layout = PkiLayout(Path(directory))
    ca_key, ca_cert = require_ca(layout)
    roster = issue_roster(layout, ca_key, ca_cert)
    logger.info("wrote %s (%d sites)", roster.path, len(roster.sites))
    return roster


def remove_site(directory: Path | str, name: str) -> RemovedSite:
    """Delete site ``name``'s keys and re-issue the roster without it (needs ``ca.key``).

    Flower still admits the site's node key until it is unregistered (``flwr supernode
    unregister``); the sites refuse its secure-aggregation key once they have the new roster.

    Raises
    ------
    PkiError
        For an invalid name, no CA key, or no key of that site.
    """
    layout = PkiLayout(Path(directory))
    check_site_name(name)
    require_ca(layout)
    paths = (
        layout.site_key(name),
        layout.site_public_key(name),
        layout.secagg_key(name),
        layout.secagg_public_key(name),
    )
    removed = tuple(path for path in paths if path.exists())
    if not removed:
        raise PkiError(f"no site {name!r} in {layout.sites}")
    for path in removed:
        path.unlink()
    logger.info("removed site %s (%d files)", name, len(removed))
    if any(layout.sites.glob("*.secagg.pub")):
        return RemovedSite(name, removed, issue_secagg_roster(directory))
    layout.secagg_roster.unlink(missing_ok=True)
    return RemovedSite(name, removed, None)


def register_command(site: SiteKey, connection: str | None = None) -> str:
    """The ``fedlora deploy register`` command that admits ``site``'s public key.

    It runs ``flwr supernode register`` and records the node id in the roster
    (docs/deployment.md, step 4).

    Parameters
    ----------
    site : SiteKey
        The site's key pair.
    connection : str, optional
        The SuperLink connection name in the Flower configuration (``[superlink.<name>]`` in
        ``$FLWR_HOME/config.toml``, written by ``fedlora deploy connection``); a placeholder
        without it.
    """
    pki_dir = site.public_key.absolute().parent.parent
    return shlex.join(
        [
            "fedlora",
            "deploy",
            "register",
            site.name,
            "--pki",
            str(pki_dir),
            "--connection",
            connection or "CONNECTION",
        ]
    )


def site_connection_toml(site: SiteKey, superlink: str | None = None) -> list[str]:
    """The ``[connection]`` lines of ``site``'s ``site.toml`` (docs/deployment.md, step 5).

    Parameters
    ----------
    site : SiteKey
        The site's key pairs.
    superlink : str, optional
        The SuperLink Fleet API address ``HOST:PORT``; a placeholder without it.
    """
    roster = site.ca_cert.absolute().parent / PkiLayout(Path()).secagg_roster.name
    return [
        "[connection]",
        f"superlink = {json.dumps(superlink or 'SUPERLINK_HOST:9093')}",
        f"root-certificates = {json.dumps(str(site.ca_cert.absolute()))}",
        f"auth-private-key = {json.dumps(str(site.key.absolute()))}",
        f"secagg-identity-key = {json.dumps(str(site.secagg_key.absolute()))}",
        f"secagg-roster = {json.dumps(str(roster))}",
    ]


def supernode_command(site_config: str = "site.toml") -> str:
    """The command that starts a site's SuperNode from its ``site.toml``."""
    return shlex.join(["fedlora", "deploy", "supernode", "--site-config", site_config])
