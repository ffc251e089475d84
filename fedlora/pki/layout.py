"""Layout of the federation PKI directory: paths, defaults, input checks and safe writes.

:mod:`fedlora.pki.commands` documents the layout. This module imports no cryptography, so the CLI
can build its parser from these defaults cheaply; it holds the paths, the owner-only atomic writes
of key files and the input checks shared by :mod:`fedlora.pki.commands` and
:mod:`fedlora.pki.inventory`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from fedlora.errors import PkiError

DEFAULT_DIR = "pki"
DEFAULT_CA_NAME = "fedlora federation CA"
DEFAULT_CA_DAYS = 1825
DEFAULT_SERVER_DAYS = 365
DEFAULT_WARN_DAYS = 30
CA_KEY = "ca.key"
CA_CERT = "ca.pem"
SERVER_KEY = "server.key"
SERVER_CERT = "server.pem"
SITES_DIR = "sites"
SECAGG_ROSTER = "secagg-roster.json"
SECAGG_KEY_SUFFIX = ".secagg.key"
SECAGG_PUBLIC_SUFFIX = ".secagg.pub"
KEY_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700

_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True)
class PkiLayout:
    """The paths of every PKI file under one directory.

    Parameters
    ----------
    directory : Path
        The PKI directory (``--dir``).
    """

    directory: Path

    @property
    def ca_key(self) -> Path:
        """The CA private key (PKCS8 PEM, 0600)."""
        return self.directory / CA_KEY

    @property
    def ca_cert(self) -> Path:
        """The self-signed CA certificate (PEM)."""
        return self.directory / CA_CERT

    @property
    def server_key(self) -> Path:
        """The SuperLink TLS private key (PKCS8 PEM, 0600)."""
        return self.directory / SERVER_KEY

    @property
    def server_cert(self) -> Path:
        """The SuperLink TLS certificate (PEM), signed by the CA."""
        return self.directory / SERVER_CERT

    @property
    def sites(self) -> Path:
        """The folder of the SuperNode authentication keys."""
        return self.directory / SITES_DIR

    def site_key(self, name: str) -> Path:
        """The private authentication key of site ``name`` (OpenSSH PEM, 0600)."""
        return self.sites / f"{name}.key"

    def site_public_key(self, name: str) -> Path:
        """The public authentication key of site ``name`` (one OpenSSH line)."""
        return self.sites / f"{name}.pub"

    def secagg_key(self, name: str) -> Path:
        """The secure-aggregation identity key of site ``name`` (Ed25519, PKCS8 PEM, 0600)."""
        return self.sites / f"{name}{SECAGG_KEY_SUFFIX}"

    def secagg_public_key(self, name: str) -> Path:
        """Its public key (Ed25519, SubjectPublicKeyInfo PEM): what the roster lists."""
        return self.sites / f"{name}{SECAGG_PUBLIC_SUFFIX}"

    @property
    def secagg_roster(self) -> Path:
        """The CA-signed roster of every site's secure-aggregation key (to every site)."""
        return self.directory / SECAGG_ROSTER


def check_site_name(name: str) -> str:
    """Return ``name`` if it is a valid site name, else raise :class:`PkiError`.

    Parameters
    ----------
    name : str
        1 to 63 letters, digits, ``-`` or ``_``, starting with a letter or digit.

    Returns
    -------
    str
        The name, unchanged.
    """
    if not _SITE_NAME.fullmatch(name):
        raise PkiError(
            f"invalid site name {name!r}: use 1-63 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


def check_days(days: int, what: str) -> int:
    """Return ``days`` if it is a usable validity in days (1 to 36500), else raise."""
    if not 1 <= days <= 36500:
        raise PkiError(f"{what} validity must be 1 to 36500 days, got {days}")
    return days


def check_dns_name(name: str) -> str:
    """Return the lower-cased DNS name ``name`` or raise :class:`PkiError` if it is not one."""
    candidate = name.strip().rstrip(".").lower()
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        pass
    else:
        raise PkiError(f"{name!r} is an IP address: give it with --ip, not --dns")
    labels = candidate.split(".")
    if len(candidate) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise PkiError(f"invalid DNS name {name!r} (letters, digits, '-' and dots; no wildcards)")
    return candidate


def check_ip_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse the IPv4 or IPv6 address ``address`` or raise :class:`PkiError`."""
    try:
        return ipaddress.ip_address(address.strip())
    except ValueError:
        raise PkiError(f"invalid IP address {address!r}") from None


def make_directory(path: Path) -> None:
    """Create ``path`` (and its parents) owner-only if it does not exist yet."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically with exactly ``mode``.

    The temporary file is created 0600 (``os.open`` with ``O_EXCL``), so a private key is
    never readable by others, not even for a moment; it is flushed, set to ``mode`` and
    renamed over ``path``, and the directory is flushed.

    Parameters
    ----------
    path : Path
        The file to (re)place.
    data : bytes
        Its complete content.
    mode : int
        Its permission bits, e.g. :data:`KEY_MODE` or :data:`PUBLIC_MODE`.
    """
    make_directory(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, KEY_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def refuse_existing(paths: tuple[Path, ...], force: bool, consequence: str) -> None:
    """Raise :class:`PkiError` naming the first of ``paths`` that exists, unless ``force``."""
    if force:
        return
    for path in paths:
        if path.exists():
            raise PkiError(f"{path} already exists: {consequence}; use --force to replace it")


def ssh_fingerprint(openssh: str) -> str:
    """The ``SHA256:...`` fingerprint of an OpenSSH public key line, as ``ssh-keygen -l``."""
    blob = base64.b64decode(openssh.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def superlink_tls_flags(layout: PkiLayout) -> list[str]:
    """The ``flower-superlink`` flags for TLS (all three ``--ssl-*`` files) and site auth."""
    return [
        "--ssl-ca-certfile",
        str(layout.ca_cert),
        "--ssl-certfile",
        str(layout.server_cert),
        "--ssl-keyfile",
        str(layout.server_key),
        "--enable-supernode-auth",
    ]
