"""What a federation PKI directory holds, and what in it needs attention.

:func:`inventory` reads the layout described in :mod:`fedlora.pki.commands` without changing
anything: the CA, the server certificate (its SANs, whether the CA in the directory issued it),
every site key, and warnings for certificates that expire soon or already did, keys that do not
belong to their certificate or public key, and private keys readable by others.
"""

from __future__ import annotations

import math
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedlora.errors import PkiError
from fedlora.pki.layout import (
    DEFAULT_WARN_DAYS,
    SECAGG_PUBLIC_SUFFIX,
    PkiLayout,
    ssh_fingerprint,
)
from fedlora.pki.secagg_roster import verify_roster


@dataclass(frozen=True)
class CertEntry:
    """One certificate in the PKI directory."""

    path: Path
    subject: str
    not_before: datetime
    not_after: datetime
    sans: tuple[str, ...]
    """``DNS:name`` and ``IP:address`` entries (empty for the CA)."""
    key_present: bool
    issued_by_ca: bool | None
    """For the server certificate: whether ``ca.pem`` verifies it (None without a CA)."""


@dataclass(frozen=True)
class SiteEntry:
    """One site's authentication key pair."""

    name: str
    public_key: Path | None
    key: Path | None
    fingerprint: str | None
    created: datetime
    """When the public key (else the private key) file was last written."""
    secagg_public_key: Path | None = None
    """Its secure-aggregation identity key (``NAME.secagg.pub``), if it has one."""


@dataclass(frozen=True)
class Inventory:
    """Everything :func:`inventory` found, with warnings (texts without a prefix)."""

    directory: Path
    ca: CertEntry | None
    server: CertEntry | None
    sites: tuple[SiteEntry, ...]
    warnings: tuple[str, ...]


def load_certificate(path: Path) -> x509.Certificate:
    """Load the PEM certificate at ``path`` or raise :class:`PkiError`."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as error:
        raise PkiError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise PkiError(f"{path} is not a PEM certificate: {error}") from None


def load_ec_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load the unencrypted PKCS8 PEM EC private key at ``path`` or raise :class:`PkiError`."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise PkiError(f"cannot read {path}: {error.strerror or error}") from None
    except (ValueError, TypeError) as error:
        raise PkiError(f"{path} is not an unencrypted PEM private key: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} is not an EC private key")
    return key


def require_ca_cert(layout: PkiLayout) -> x509.Certificate:
    """Load the CA certificate of ``layout``, or say to run ``fedlora pki init``."""
    if not layout.ca_cert.exists():
        raise PkiError(
            f"no CA certificate at {layout.ca_cert}: run `fedlora pki init --dir "
            f"{layout.directory}` first"
        )
    return load_certificate(layout.ca_cert)


def require_ca(layout: PkiLayout) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Load the CA key and certificate of ``layout``, or say to run ``fedlora pki init``."""
    cert = require_ca_cert(layout)
    if not layout.ca_key.exists():
        raise PkiError(
            f"no CA private key at {layout.ca_key}: certificates can only be issued where "
            f"the CA was created (`fedlora pki init --dir {layout.directory}`)"
        )
    key = load_ec_private_key(layout.ca_key)
    if key.public_key() != cert.public_key():
        raise PkiError(f"{layout.ca_key} does not belong to {layout.ca_cert}")
    return key, cert


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    dns = [f"DNS:{name}" for name in names.get_values_for_type(x509.DNSName)]
    ips = [f"IP:{address}" for address in names.get_values_for_type(x509.IPAddress)]
    return tuple(dns + ips)


def _entry(path: Path, cert: x509.Certificate, key: Path, issued: bool | None) -> CertEntry:
    return CertEntry(
        path=path,
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sans=_sans(cert),
        key_present=key.exists(),
        issued_by_ca=issued,
    )


def _expiry(label: str, entry: CertEntry, now: datetime, warn_days: int, advice: str) -> list[str]:
    when = f"{entry.not_after:%Y-%m-%d %H:%M} UTC"
    if entry.not_after <= now:
        return [f"{label} {entry.path} expired on {when}: {advice}"]
    if entry.not_before > now:
        return [f"{label} {entry.path} is not valid before {entry.not_before:%Y-%m-%d %H:%M} UTC"]
    if entry.not_after - now <= timedelta(days=warn_days):
        days = math.ceil((entry.not_after - now) / timedelta(days=1))
        return [f"{label} {entry.path} expires in {days} days ({when}): {advice}"]
    return []


def _key_checks(path: Path, cert: x509.Certificate) -> list[str]:
    if not path.exists():
        return []
    warnings = _mode_check(path)
    try:
        key = load_ec_private_key(path)
    except PkiError as error:
        return [*warnings, str(error)]
    if key.public_key() != cert.public_key():
        warnings.append(f"{path} does not belong to its certificate")
    return warnings


def _mode_check(path: Path) -> list[str]:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return [f"private key {path} is readable by others (mode {mode:04o}): chmod 600 {path}"]
    return []


def _site(layout: PkiLayout, name: str) -> tuple[SiteEntry, list[str]]:
    public_path, key_path = layout.site_public_key(name), layout.site_key(name)
    warnings: list[str] = []
    public: ec.EllipticCurvePublicKey | None = None
    fingerprint = None
    if public_path.exists():
        text = public_path.read_text(encoding="ascii", errors="replace").strip()
        try:
            loaded = serialization.load_ssh_public_key(text.encode("ascii", errors="replace"))
        except (ValueError, UnsupportedAlgorithm) as error:
            warnings.append(f"{public_path} is not an OpenSSH public key: {error}")
        else:
            if isinstance(loaded, ec.EllipticCurvePublicKey) and loaded.curve.name == "secp384r1":
                public = loaded
            else:
                warnings.append(f"{public_path} is not a NIST P-384 key")
            fingerprint = ssh_fingerprint(text)
    else:
        warnings.append(f"site {name!r} has a private key but no public key {public_path}")
    if key_path.exists():
        warnings += _mode_check(key_path)
        try:
            private = serialization.load_ssh_private_key(key_path.read_bytes(), password=None)
        except (ValueError, UnsupportedAlgorithm) as error:
            warnings.append(f"{key_path} is not an OpenSSH private key: {error}")
        else:
            if public is not None and private.public_key() != public:
                warnings.append(f"{key_path} does not belong to {public_path}")
    existing = public_path if public_path.exists() else key_path
    created = datetime.fromtimestamp(existing.stat().st_mtime, tz=timezone.utc)
    secagg = layout.secagg_public_key(name)
    entry = SiteEntry(
        name=name,
        public_key=public_path if public_path.exists() else None,
        key=key_path if key_path.exists() else None,
        fingerprint=fingerprint,
        created=created,
        secagg_public_key=secagg if secagg.exists() else None,
    )
    return entry, warnings


def inventory(
    directory: Path | str,
    *,
    warn_days: int = DEFAULT_WARN_DAYS,
    now: datetime | None = None,
) -> Inventory:
    """List the CA, server certificate and site keys in ``directory``, with warnings.

    Parameters
    ----------
    directory : Path or str
        The PKI directory.
    warn_days : int
        Warn for certificates that expire within this many days (>= 0).
    now : datetime, optional
        The time to judge expiry at (default: now, UTC).

    Returns
    -------
    Inventory
        What exists and the warnings, for certificates expiring within ``warn_days`` or
        expired, a server certificate the CA did not issue, mismatched or unreadable files,
        and private keys readable by others.

    Raises
    ------
    PkiError
        If ``directory`` does not exist or ``warn_days`` is negative.
    """
    layout = PkiLayout(Path(directory))
    if warn_days < 0:
        raise PkiError(f"--warn-days must be >= 0, got {warn_days}")
    if not layout.directory.is_dir():
        raise PkiError(
            f"no PKI directory at {layout.directory}: run `fedlora pki init --dir "
            f"{layout.directory}` first"
        )
    now = now or datetime.now(timezone.utc)
    warnings: list[str] = []
    ca_cert: x509.Certificate | None = None
    ca = server = None
    if layout.ca_cert.exists():
        try:
            ca_cert = load_certificate(layout.ca_cert)
        except PkiError as error:
            warnings.append(str(error))
        else:
            ca = _entry(layout.ca_cert, ca_cert, layout.ca_key, None)
            warnings += _expiry(
                "CA certificate",
                ca,
                now,
                warn_days,
                "create a new CA, reissue the server certificate, redistribute ca.pem to "
                "every site (see docs/pki.md)",
            )
            warnings += _key_checks(layout.ca_key, ca_cert)
    else:
        warnings.append(
            f"no CA certificate {layout.ca_cert}: run `fedlora pki init --dir {layout.directory}`"
        )
    if layout.server_cert.exists():
        try:
            server_cert = load_certificate(layout.server_cert)
        except PkiError as error:
            warnings.append(str(error))
        else:
            issued = None if ca_cert is None else _issued_by(server_cert, ca_cert)
            server = _entry(layout.server_cert, server_cert, layout.server_key, issued)
            if issued is False:
                warnings.append(
                    f"server certificate {layout.server_cert} was not issued by the CA in "
                    f"{layout.ca_cert}: reissue it with `fedlora pki server --force`"
                )
            warnings += _expiry(
                "server certificate",
                server,
                now,
                warn_days,
                "reissue it with `fedlora pki server --force` and restart the SuperLink",
            )
            warnings += _key_checks(layout.server_key, server_cert)
    names = sorted(
        (
            {path.stem for path in layout.sites.glob("*.pub")}
            | {path.stem for path in layout.sites.glob("*.key")}
        )
        - {path.stem for path in layout.sites.glob("*.secagg.*")}
    )
    sites = []
    for name in names:
        site, site_warnings = _site(layout, name)
        sites.append(site)
        warnings += site_warnings
    warnings += _secagg_checks(layout, ca_cert)
    return Inventory(layout.directory, ca, server, tuple(sites), tuple(warnings))


def _secagg_checks(layout: PkiLayout, ca_cert: x509.Certificate | None) -> list[str]:
    """Readable identity keys, and a roster that is not signed by the CA or out of date."""
    warnings = [w for path in layout.sites.glob("*.secagg.key") for w in _mode_check(path)]
    keys = {
        path.name.removesuffix(SECAGG_PUBLIC_SUFFIX) for path in layout.sites.glob("*.secagg.pub")
    }
    reissue = (
        f"re-issue it with `fedlora pki roster --dir {layout.directory}` and give it to every site"
    )
    if not layout.secagg_roster.exists():
        if keys:
            warnings.append(f"no secure-aggregation roster {layout.secagg_roster}: {reissue}")
        return warnings
    if ca_cert is None:
        return warnings
    try:
        listed = verify_roster(layout.secagg_roster, layout.ca_cert)
    except PkiError as error:
        return [*warnings, str(error)]
    if set(listed) != keys:
        warnings.append(
            f"{layout.secagg_roster} is out of date (lists {', '.join(sorted(listed))}; "
            f"sites/ holds {', '.join(sorted(keys)) or 'none'}): {reissue}"
        )
    return warnings


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
