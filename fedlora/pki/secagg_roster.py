"""The secure-aggregation roster: every enrolled site's Ed25519 key, signed by the federation CA.

Secure aggregation (docs/security.md, section 4) is safe against a coordinator that invents
sites only if every site knows which signing keys belong to the federation. ``fedlora pki``
gives each site an Ed25519 identity key (``sites/NAME.secagg.key``, PKCS8 PEM, 0600, beside
its node key; the public half in ``sites/NAME.secagg.pub``) and lists every site's public key
in ``secagg-roster.json``, signed with the CA key::

    {"format": "fedlora-secagg-roster", "version": 1,
     "ca-sha256": "<SHA-256 of the CA certificate, DER, hex>",
     "issued": "2026-12-07T14:00:00Z",
     "sites": {"hospital-a": "<64 hex digits: raw Ed25519 public key>", ...},
     "signature": "<base64 DER ECDSA/SHA-384 signature>"}

The signature covers :data:`SIGNING_CONTEXT` followed by the canonical JSON of every other
member (sorted keys, no spaces, ASCII), so it cannot be mistaken for any other CA signature
(a certificate's is over DER) and the file may be re-indented without breaking it. The CA key
already signs what the federation trusts (the server certificate); the roster is its
allow-list of sites, as a CRL is its deny-list.

A site checks the file with :func:`verify_roster` against the ``ca.pem`` it already has
before it trusts one key of it; every refusal is one line naming the file: not signed by that
CA, altered after signing, issued for another federation's CA, a site named twice, an invalid
site name, a key of the wrong length, two sites with one key, or a file too large to be one.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedlora.errors import PkiError
from fedlora.pki.layout import (
    PUBLIC_MODE,
    SECAGG_PUBLIC_SUFFIX,
    PkiLayout,
    check_site_name,
    write_file,
)
from fedlora.secagg.crypto import Identity, key_from_hex

__all__ = [
    "MAX_ROSTER_BYTES",
    "ROSTER_FORMAT",
    "SIGNING_CONTEXT",
    "SecaggRoster",
    "ca_fingerprint",
    "identity_key_pair",
    "issue_roster",
    "read_public_key",
    "sign_roster",
    "verify_roster",
]

ROSTER_FORMAT = "fedlora-secagg-roster"
ROSTER_VERSION = 1
SIGNING_CONTEXT = b"fedlora secure-aggregation roster v1\n"
MAX_ROSTER_BYTES = 4 * 1024 * 1024
"""Larger files are refused unread: some 40,000 sites, far beyond any federation."""
_MEMBERS = {"format", "version", "ca-sha256", "issued", "sites", "signature"}


@dataclass(frozen=True)
class SecaggRoster:
    """A roster :func:`issue_roster` wrote."""

    path: Path
    sites: tuple[str, ...]
    ca_sha256: str


def identity_key_pair() -> tuple[bytes, bytes]:
    """A fresh Ed25519 identity key: (private PKCS8 PEM, public SubjectPublicKeyInfo PEM)."""
    identity = Identity()
    public = Ed25519PublicKey.from_public_bytes(identity.public).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return identity.to_pem(), public


def read_public_key(path: Path) -> bytes:
    """The raw 32-byte Ed25519 public key in the PEM file ``path``.

    Raises
    ------
    PkiError
        When the file cannot be read or is not an Ed25519 public key.
    """
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as error:
        raise PkiError(f"cannot read {path}: {error.strerror or error}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PkiError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PkiError(f"{path} is not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ca_fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 of ``cert``'s DER encoding, hex: which CA a roster was signed for."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _canonical(body: Mapping[str, Any]) -> bytes:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return SIGNING_CONTEXT + text.encode("ascii")


def sign_roster(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    sites: Mapping[str, bytes],
    *,
    issued: datetime | None = None,
) -> bytes:
    """The signed roster document listing ``sites`` (name -> raw Ed25519 public key).

    Raises
    ------
    PkiError
        When ``sites`` is empty, a name is invalid, a key is not 32 bytes, or two sites share
        a key.
    """
    checked = _checked_sites({name: key.hex() for name, key in sites.items()}, "the roster")
    when = (issued or datetime.now(timezone.utc)).astimezone(timezone.utc)
    body: dict[str, Any] = {
        "format": ROSTER_FORMAT,
        "version": ROSTER_VERSION,
        "ca-sha256": ca_fingerprint(ca_cert),
        "issued": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sites": {name: checked[name].hex() for name in sorted(checked)},
    }
    signature = ca_key.sign(_canonical(body), ec.ECDSA(hashes.SHA384()))
    document = {**body, "signature": base64.b64encode(signature).decode("ascii")}
    return (json.dumps(document, indent=2) + "\n").encode("ascii")


def issue_roster(
    layout: PkiLayout, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> SecaggRoster:
    """Sign and write ``secagg-roster.json`` from every ``sites/NAME.secagg.pub`` (0644).

    Raises
    ------
    PkiError
        When no site has a secure-aggregation key, a public key file is unreadable or not
        Ed25519, a file's name is not a valid site name, or two sites share a key.
    """
    sites: dict[str, bytes] = {}
    for path in sorted(layout.sites.glob(f"*{SECAGG_PUBLIC_SUFFIX}")):
        name = path.name[: -len(SECAGG_PUBLIC_SUFFIX)]
        try:
            check_site_name(name)
        except PkiError as error:
            raise PkiError(f"{path}: {error}") from None
        sites[name] = read_public_key(path)
    if not sites:
        raise PkiError(
            f"no site in {layout.sites} has a secure-aggregation key: create one with "
            f"`fedlora pki site NAME --dir {layout.directory}`"
        )
    write_file(layout.secagg_roster, sign_roster(ca_key, ca_cert, sites), PUBLIC_MODE)
    return SecaggRoster(layout.secagg_roster, tuple(sorted(sites)), ca_fingerprint(ca_cert))


def verify_roster(path: Path | str, ca_certificates: Path | str) -> dict[str, bytes]:
    """The sites' keys of the roster at ``path``, once the CA in ``ca_certificates`` signed it.

    Parameters
    ----------
    path : Path or str
        The roster (``secagg-roster.json``).
    ca_certificates : Path or str
        The federation's ``ca.pem`` (a PEM file; the certificate whose SHA-256 the roster
        names is the one that must have signed it).

    Returns
    -------
    dict[str, bytes]
        Site name -> raw Ed25519 public key.

    Raises
    ------
    PkiError
        One line naming ``path``: unreadable, too large, malformed, a site named twice, a bad
        name or key, two sites with one key, issued for another CA, or a signature that does
        not verify.
    """
    source = Path(path)
    body = _read_document(source)
    signature_text = body.pop("signature")
    where = f"secure-aggregation roster {source}"
    if (
        body["format"] != ROSTER_FORMAT
        or type(body["version"]) is not int
        or body["version"] != ROSTER_VERSION
    ):
        raise PkiError(f"{where} is not a {ROSTER_FORMAT} version {ROSTER_VERSION} file")
    if not all(isinstance(body[key], str) for key in ("ca-sha256", "issued")):
        raise PkiError(f"{where}: ca-sha256 and issued must be strings")
    if not isinstance(body["sites"], dict):
        raise PkiError(f"{where}: sites must be an object of site name -> key")
    ca = _issuing_ca(Path(ca_certificates), body["ca-sha256"], where)
    try:
        signature = base64.b64decode(str(signature_text), validate=True)
        public = ca.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise PkiError(f"{where}: the federation CA's key is not an EC key")
        public.verify(signature, _canonical(body), ec.ECDSA(hashes.SHA384()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise PkiError(
            f"{where} is not signed by the federation CA {ca_certificates} (altered or forged): "
            "ask the operator for the roster `fedlora pki roster` issues"
        ) from None
    return _checked_sites(body["sites"], where)


def _read_document(source: Path) -> dict[str, Any]:
    where = f"secure-aggregation roster {source}"
    try:
        with source.open("rb") as handle:
            raw = handle.read(MAX_ROSTER_BYTES + 1)
    except OSError as error:
        raise PkiError(f"cannot read {where}: {error.strerror or error}") from None
    if len(raw) > MAX_ROSTER_BYTES:
        raise PkiError(f"{where} is larger than {MAX_ROSTER_BYTES} bytes: not a roster")

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise PkiError(f"{where} names {key!r} twice")
            seen[key] = value
        return seen

    try:
        document = json.loads(raw.decode("utf-8"), object_pairs_hook=unique)
    except ValueError as error:  # UnicodeDecodeError is one
        raise PkiError(f"{where} is not JSON: {error}") from None
    if not isinstance(document, dict) or set(document) != _MEMBERS:
        raise PkiError(f"{where} must hold exactly: {', '.join(sorted(_MEMBERS))}")
    return document


def _issuing_ca(ca_path: Path, fingerprint: str, where: str) -> x509.Certificate:
    try:
        certificates = x509.load_pem_x509_certificates(ca_path.read_bytes())
    except OSError as error:
        raise PkiError(f"cannot read the CA certificate {ca_path}: {error.strerror}") from None
    except ValueError:
        raise PkiError(f"{ca_path} is not a PEM certificate") from None
    for cert in certificates:
        if ca_fingerprint(cert) == fingerprint.lower():
            if not _is_ca(cert):
                # e.g. server.pem bundled into root-certificates: its key is on the coordinator
                raise PkiError(f"{where} names a certificate in {ca_path} that is not a CA")
            return cert
    raise PkiError(
        f"{where} was issued for another federation CA (SHA-256 {fingerprint[:16]}...), "
        f"not the one in {ca_path}"
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _checked_sites(sites: Mapping[str, object], where: str) -> dict[str, bytes]:
    if not sites:
        raise PkiError(f"{where} lists no site")
    keys: dict[str, bytes] = {}
    owners: dict[bytes, str] = {}
    for name, value in sites.items():
        try:
            check_site_name(name)
        except PkiError as error:
            raise PkiError(f"{where}: {error}") from None
        key = key_from_hex(value)
        if key is None:
            raise PkiError(f"{where}: the key of site {name!r} is not 64 hex digits")
        if key in owners:
            raise PkiError(f"{where}: sites {owners[key]!r} and {name!r} have the same key")
        owners[key] = name
        keys[name] = key
    return keys
