"""The X.509 certificates of the federation PKI: the CA's and the SuperLink's.

Every key is NIST EC P-384 and every signature ECDSA with SHA-384 (see :mod:`fedlora.pki.commands`).
Certificates are valid from :data:`BACKDATE` before issue (clock skew between machines) until
exactly ``days`` days after it.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

BACKDATE = timedelta(hours=1)


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh NIST P-384 private key."""
    return ec.generate_private_key(ec.SECP384R1())


def pkcs8_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as unencrypted PKCS8 PEM (what Flower's SuperLink and Python's ssl read)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(*, sign_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not sign_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=sign_certificates,
        crl_sign=sign_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _with_validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return builder.not_valid_before(now - BACKDATE).not_valid_after(now + timedelta(days=days))


def ca_certificate(key: ec.EllipticCurvePrivateKey, name: str, days: int) -> x509.Certificate:
    """The self-signed CA certificate of ``key``.

    Parameters
    ----------
    key : EllipticCurvePrivateKey
        The CA's private key.
    name : str
        The CA's common name.
    days : int
        Validity after issue, in days.

    Returns
    -------
    Certificate
        ``CA:true, pathlen:0`` and ``keyCertSign, cRLSign`` (both critical), with a
        SubjectKeyIdentifier.
    """
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return _with_validity(builder, days).sign(key, hashes.SHA384())


def server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    dns_names: tuple[str, ...],
    ip_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...],
    days: int,
) -> x509.Certificate:
    """The TLS server certificate of ``key``, signed by the CA.

    Parameters
    ----------
    key : EllipticCurvePrivateKey
        The server's private key.
    ca_key, ca_cert : EllipticCurvePrivateKey, Certificate
        The issuing CA.
    dns_names, ip_addresses : tuple
        The subject alternative names (at least one); the first is also the common name.
    days : int
        Validity after issue, in days.

    Returns
    -------
    Certificate
        ``CA:false`` and ``digitalSignature`` (critical), the ``serverAuth`` EKU, the SANs, and
        subject and authority key identifiers.
    """
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(address) for address in ip_addresses]
    common_name = dns_names[0] if dns_names else str(ip_addresses[0])
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    return _with_validity(builder, days).sign(ca_key, hashes.SHA384())
