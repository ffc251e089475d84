"""The federation PKI: a CA, the SuperLink's TLS certificate and the sites' SuperNode keys.

``fedlora pki`` (and this module's API) creates every key and certificate a real Flower deployment
needs, in one directory (``--dir``, default ``./pki``)::

    pki/
      ca.key              CA private key (PKCS8 PEM, 0600)          -> stays with the operator
      ca.pem              self-signed CA certificate (PEM)          -> SuperLink and every site
      server.key          SuperLink TLS private key (PKCS8 PEM, 0600)
      server.pem          SuperLink TLS certificate, signed by ca.key (DNS/IP SANs, serverAuth)
      sites/<NAME>.key    SuperNode authentication private key (OpenSSH PEM, 0600) -> site only
      sites/<NAME>.pub    its public key, one OpenSSH line ``ecdsa-sha2-nistp384 AAAA... NAME``
      sites/<NAME>.secagg.key  secure-aggregation identity key (Ed25519, PKCS8 PEM, 0600) -> site
      sites/<NAME>.secagg.pub  its public key (PEM)
      secagg-roster.json  every site's identity key, signed by ca.key (0644) -> every site

Site keys and the roster: :mod:`fedlora.pki.sites` and :mod:`fedlora.pki.secagg_roster`.

Algorithms: every key but the secure-aggregation identity keys (Ed25519, what the sites sign
their advertisements with) is NIST EC P-384 and every signature ECDSA with SHA-384. Flower's
SuperNode authentication only accepts NIST EC curves, so using the same curve for the CA and
the TLS keys keeps one algorithm to audit; P-384 is also faster and smaller than RSA-3072 at
the same strength. The CA has ``basicConstraints CA:true, pathlen:0`` and ``keyUsage
keyCertSign, cRLSign`` (both critical) and a SubjectKeyIdentifier; the server certificate has
``CA:false``, ``digitalSignature``, the ``serverAuth`` EKU, its SANs, and both key
identifiers. Certificates are valid from one hour before issue (clock skew) until exactly
``days`` days after it.

How Flower uses the files (checked against the ``flwr`` command line of the releases in
:mod:`fedlora.flower_internals.versions`):

* SuperLink: ``fedlora deploy superlink --pki DIR`` (Flower's SuperLink with ``--ssl-ca-certfile
  ca.pem --ssl-certfile server.pem --ssl-keyfile server.key --enable-supernode-auth``, its
  Control API kept to its own host: :mod:`fedlora.flower_internals.link_operator`)
* register a site (operator, against the SuperLink's Control API): ``fedlora deploy register
  NAME --pki DIR --connection CONNECTION`` (``flwr supernode register sites/<NAME>.pub
  CONNECTION --name <NAME>``, and the node id into the roster)
* SuperNode: ``fedlora deploy supernode --site-config site.toml``, whose ``[connection]``
  names ``ca.pem`` and ``sites/<NAME>.key`` (Flower's ``--root-certificates`` and
  ``--auth-supernode-private-key``)

The site private key is in the OpenSSH format (``-----BEGIN OPENSSH PRIVATE KEY-----``)
because ``flower-supernode`` reads it with ``load_ssh_private_key``, which refuses PKCS8.

Private keys are created 0600 and never printed or logged. Nothing existing is overwritten
unless ``force`` is given. A site key needs only ``ca.pem`` in the directory, so a site can
make its own key pair and send only the ``.pub`` file to the operator.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from fedlora.errors import PkiError
from fedlora.pki.inventory import Inventory, inventory, require_ca
from fedlora.pki.layout import (
    DEFAULT_CA_DAYS,
    DEFAULT_CA_NAME,
    DEFAULT_DIR,
    DEFAULT_SERVER_DAYS,
    KEY_MODE,
    PUBLIC_MODE,
    PkiLayout,
    check_days,
    check_dns_name,
    check_ip_address,
    make_directory,
    refuse_existing,
    write_file,
)
from fedlora.pki.secagg_roster import SecaggRoster
from fedlora.pki.sites import (
    RemovedSite,
    SiteKey,
    create_secagg_key,
    create_site_key,
    issue_secagg_roster,
    register_command,
    remove_site,
    site_connection_toml,
    supernode_command,
)
from fedlora.pki.x509 import ca_certificate, new_key, pkcs8_pem, server_certificate

__all__ = [
    "DEFAULT_CA_DAYS",
    "DEFAULT_CA_NAME",
    "DEFAULT_DIR",
    "DEFAULT_SERVER_DAYS",
    "CaFiles",
    "Inventory",
    "PkiLayout",
    "RemovedSite",
    "SecaggRoster",
    "ServerFiles",
    "SiteKey",
    "create_secagg_key",
    "create_site_key",
    "init_ca",
    "inventory",
    "issue_secagg_roster",
    "issue_server_cert",
    "register_command",
    "remove_site",
    "site_connection_toml",
    "superlink_command",
    "supernode_command",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaFiles:
    """The federation CA that :func:`init_ca` made."""

    key: Path
    cert: Path
    subject: str
    not_after: datetime
    replaced: bool
    """Whether an earlier CA was overwritten (``force``): every site and server cert broke."""


@dataclass(frozen=True)
class ServerFiles:
    """The SuperLink TLS files that :func:`issue_server_cert` made."""

    key: Path
    cert: Path
    ca_cert: Path
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_after: datetime


def init_ca(
    directory: Path | str = DEFAULT_DIR,
    *,
    name: str = DEFAULT_CA_NAME,
    days: int = DEFAULT_CA_DAYS,
    force: bool = False,
) -> CaFiles:
    """Create the federation CA: ``ca.key`` (0600) and the self-signed ``ca.pem``.

    Parameters
    ----------
    directory : Path or str
        The PKI directory; created owner-only if missing.
    name : str
        The CA's common name (1 to 64 characters).
    days : int
        Validity of the CA certificate in days.
    force : bool
        Replace an existing CA. Every certificate and site configuration that trusts the old
        CA stops working.

    Returns
    -------
    CaFiles
        Paths, subject and expiry of the new CA.

    Raises
    ------
    PkiError
        If a CA exists and ``force`` is false, or ``name`` or ``days`` is invalid.
    """
    layout = PkiLayout(Path(directory))
    if not 1 <= len(name.strip()) <= 64:
        raise PkiError(f"CA name must be 1 to 64 characters, got {len(name.strip())}")
    check_days(days, "CA")
    existed = layout.ca_key.exists() or layout.ca_cert.exists()
    refuse_existing(
        (layout.ca_key, layout.ca_cert),
        force,
        "re-creating the CA silently breaks every deployed site and the server certificate "
        "(they trust the old CA)",
    )
    key = new_key()
    cert = ca_certificate(key, name.strip(), days)
    make_directory(layout.directory)
    write_file(layout.ca_key, pkcs8_pem(key), KEY_MODE)
    write_file(layout.ca_cert, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    if existed:
        logger.warning("replaced the federation CA in %s", layout.directory)
    logger.info("wrote %s and %s", layout.ca_key, layout.ca_cert)
    return CaFiles(
        key=layout.ca_key,
        cert=layout.ca_cert,
        subject=cert.subject.rfc4514_string(),
        not_after=cert.not_valid_after_utc,
        replaced=existed,
    )


def issue_server_cert(
    directory: Path | str = DEFAULT_DIR,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    days: int = DEFAULT_SERVER_DAYS,
    force: bool = False,
) -> ServerFiles:
    """Issue the SuperLink's TLS key and certificate, signed by the CA in ``directory``.

    Parameters
    ----------
    directory : Path or str
        The PKI directory holding ``ca.key`` and ``ca.pem``.
    dns_names, ip_addresses : sequence of str
        The names and addresses sites connect to (subject alternative names; at least one).
    days : int
        Validity in days; the certificate may not outlive the CA.
    force : bool
        Replace an existing ``server.key``/``server.pem``.

    Returns
    -------
    ServerFiles
        Paths, SANs and expiry of the new certificate.

    Raises
    ------
    PkiError
        If there is no CA, no SAN, an invalid SAN or validity, or existing server files and
        ``force`` is false.
    """
    layout = PkiLayout(Path(directory))
    dns = tuple(dict.fromkeys(check_dns_name(name) for name in dns_names))
    ips = tuple(dict.fromkeys(check_ip_address(address) for address in ip_addresses))
    if not dns and not ips:
        raise PkiError(
            "the server certificate needs at least one --dns NAME or --ip ADDR "
            "(the address sites use to reach the SuperLink)"
        )
    check_days(days, "server certificate")
    ca_key, ca_cert = require_ca(layout)
    now = datetime.now(timezone.utc)
    if now + timedelta(days=days) > ca_cert.not_valid_after_utc:
        left = (ca_cert.not_valid_after_utc - now).days
        raise PkiError(
            f"a server certificate valid for {days} days would outlive the CA (expires "
            f"{ca_cert.not_valid_after_utc:%Y-%m-%d}): use --days {left} or less, or renew the CA"
            if left >= 1
            else f"the CA in {layout.directory} expires within a day: renew it first"
        )
    refuse_existing(
        (layout.server_key, layout.server_cert),
        force,
        "the SuperLink may be using it",
    )
    key = new_key()
    cert = server_certificate(key, ca_key, ca_cert, dns, ips, days)
    write_file(layout.server_key, pkcs8_pem(key), KEY_MODE)
    write_file(layout.server_cert, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    logger.info("wrote %s and %s", layout.server_key, layout.server_cert)
    return ServerFiles(
        key=layout.server_key,
        cert=layout.server_cert,
        ca_cert=layout.ca_cert,
        dns_names=dns,
        ip_addresses=tuple(str(address) for address in ips),
        not_after=cert.not_valid_after_utc,
    )


def superlink_command(directory: Path | str = DEFAULT_DIR) -> str:
    """The command that starts the SuperLink with the TLS files in ``directory``.

    ``fedlora deploy superlink``: Flower's SuperLink with these files and SuperNode
    authentication, its Control API kept to its own host (plain ``flower-superlink`` with the
    same TLS flags would serve it to anyone holding ``ca.pem``).
    """
    return shlex.join(["fedlora", "deploy", "superlink", "--pki", str(Path(directory).absolute())])
