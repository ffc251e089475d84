"""Checks that a ``site.toml``'s files and address are usable, before the node connects.

Each check resolves a path against the folder holding the TOML file and raises
:class:`~fedlora.errors.ConfigError` with a one-line message naming the file (``where``) and the
key: data files readable, the ledger directory writable, the root certificate parsable, the
authentication key private and of a kind Flower accepts
(:func:`fedlora.deploy.site_config.load_site_config` calls them).
"""

from __future__ import annotations

import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedlora.errors import ConfigError, PkiError

__all__ = [
    "auth_key_file",
    "readable_file",
    "resolve_path",
    "root_certificates_file",
    "secagg_files",
    "superlink_address",
    "writable_directory",
]


def resolve_path(base: Path, value: str) -> Path:
    """``value`` as an absolute path, relative ones against ``base`` (the TOML file's folder)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).absolute()


def readable_file(base: Path, value: str, where: str, what: str) -> Path:
    """The file ``value`` names, after reading its first byte.

    Raises
    ------
    ConfigError
        Naming ``where`` (the TOML file) and ``what`` (its key) when the file is missing, not
        a file or unreadable.
    """
    path = resolve_path(base, value)
    if not path.exists():
        raise ConfigError(f"{where}: {what} {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"{where}: {what} {path} is not a file")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ConfigError(f"{where}: {what} {path} is not readable: {exc.strerror}") from None
    return path


def writable_directory(base: Path, value: str, where: str) -> Path:
    """The ledger directory ``value`` names, created if needed and written to once.

    Raises
    ------
    ConfigError
        When it cannot be created or written.
    """
    path = resolve_path(base, value)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{where}: [privacy] ledger-dir {path} cannot be created: {exc.strerror}"
        ) from None
    # A real write, not os.access: root passes os.access checks on read-only mounts too.
    try:
        with tempfile.TemporaryFile(dir=path, prefix=".fedlora-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{where}: [privacy] ledger-dir {path} is not writable: {exc.strerror}"
        ) from None
    return path


def superlink_address(address: str, where: str) -> str:
    """``address`` stripped, once it is ``HOST:PORT`` (``[v6]:PORT``) with a valid port.

    Raises
    ------
    ConfigError
        For a URL, a missing host or port, or a port outside 1-65535.
    """
    host, separator, port = address.strip().rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not separator or not bare or "/" in address or not port.isdigit():
        raise ConfigError(
            f"{where}: [connection] superlink must be HOST:PORT without a URL prefix, "
            f"got {address!r}"
        )
    if not 1 <= int(port) <= 65535:
        raise ConfigError(f"{where}: [connection] superlink port must be 1-65535, got {port}")
    return address.strip()


def root_certificates_file(base: Path, value: str, where: str) -> Path:
    """The root certificate file ``value`` names, once it parses as PEM certificates.

    Raises
    ------
    ConfigError
        When it is unreadable or not a PEM certificate.
    """
    from cryptography import x509

    path = readable_file(base, value, where, "[connection] root-certificates")
    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError:
        raise ConfigError(
            f"{where}: [connection] root-certificates {path} is not a PEM certificate "
            "(use the federation's ca.pem)"
        ) from None
    return path


def auth_key_file(base: Path, value: str, where: str) -> Path:
    """The site's authentication key file, once it is private (0600) and a NIST EC OpenSSH key.

    Raises
    ------
    ConfigError
        When others may read it, or it is not an unencrypted OpenSSH NIST EC private key.
    """
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    path = readable_file(base, value, where, "[connection] auth-private-key")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{where}: [connection] auth-private-key {path} has mode {mode:04o}; it must be "
            f"0600 (chmod 600 {path})"
        )
    try:
        key = load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{where}: [connection] auth-private-key {path} is not an unencrypted OpenSSH "
            "private key (make it with fedlora pki site NAME)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(
            f"{where}: [connection] auth-private-key {path} is not a NIST EC key; Flower "
            "accepts only those (make it with fedlora pki site NAME)"
        )
    return path


def _private_mode(path: Path, where: str, what: str) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{where}: [connection] {what} {path} has mode {mode:04o}; it must be 0600 "
            f"(chmod 600 {path})"
        )


def secagg_files(
    base: Path,
    connection: Mapping[str, Any],
    root_certificates: Path | None,
    site: str,
    where: str,
) -> tuple[Path, Path] | None:
    """The site's secure-aggregation identity key and roster, once they belong together.

    ``[connection] secagg-identity-key`` must be a private (0600) Ed25519 PEM key and
    ``secagg-roster`` a roster that the federation CA (``root-certificates``) signed and that
    lists ``site`` with that key (:func:`fedlora.pki.secagg_roster.verify_roster`).

    Returns
    -------
    tuple of Path, or None
        (key, roster); ``None`` when neither is given.

    Raises
    ------
    ConfigError
        When only one is given, there is no CA to check the roster with (``insecure``), or a
        check fails.
    """
    from fedlora.pki.secagg_roster import verify_roster
    from fedlora.secagg import SecAggError
    from fedlora.secagg.crypto import Identity

    given = [key for key in ("secagg-identity-key", "secagg-roster") if key in connection]
    if not given:
        return None
    if len(given) == 1:
        raise ConfigError(
            f"{where}: [connection] give both secagg-identity-key and secagg-roster, or neither"
        )
    if root_certificates is None:
        raise ConfigError(
            f"{where}: [connection] secagg-roster needs root-certificates: the federation's "
            "ca.pem, which signed it"
        )
    key_path = readable_file(
        base, connection["secagg-identity-key"], where, "[connection] secagg-identity-key"
    )
    _private_mode(key_path, where, "secagg-identity-key")
    try:
        identity = Identity.from_pem(key_path.read_bytes())
    except SecAggError:
        raise ConfigError(
            f"{where}: [connection] secagg-identity-key {key_path} is not an unencrypted "
            "Ed25519 PEM key (fedlora pki site NAME makes it)"
        ) from None
    roster_path = readable_file(
        base, connection["secagg-roster"], where, "[connection] secagg-roster"
    )
    try:
        keys = verify_roster(roster_path, root_certificates)
    except PkiError as error:
        raise ConfigError(f"{where}: [connection] {error}") from None
    if keys.get(site) != identity.public:
        raise ConfigError(
            f"{where}: [connection] secagg-roster {roster_path} does not list site {site!r} "
            f"with the key in {key_path}: ask the operator for the current roster"
        )
    return key_path, roster_path
