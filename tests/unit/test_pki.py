"""`fedlora pki`: the CA, the SuperLink TLS certificate, site keys, and what Flower accepts."""

from __future__ import annotations

import argparse
import ipaddress
import os
import ssl
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedlora.cli.main import main
from fedlora.errors import FedloraError, PkiError
from fedlora.pki import commands as pki

DNS = "superlink.example.org"
IP = "10.0.0.5"


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["pki", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _refused(code: int, err: str, *fragments: str) -> str:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fedlora: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    pki.init_ca(directory, name="Test Federation CA", days=400)
    pki.issue_server_cert(directory, dns_names=[DNS], ip_addresses=[IP], days=90)
    return directory


def test_server_cert_chains_to_the_ca(pki_dir):
    ca, server = _cert(pki_dir / "ca.pem"), _cert(pki_dir / "server.pem")
    server.verify_directly_issued_by(ca)
    assert server.issuer == ca.subject
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)

    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = server.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest

    server_constraints = server.extensions.get_extension_for_class(x509.BasicConstraints)
    assert server_constraints.critical and not server_constraints.value.ca
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [DNS]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(IP)]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku

    for cert in (ca, server):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp384r1"


def test_validity_matches_days(pki_dir):
    now = datetime.now(timezone.utc)
    for name, days in (("ca.pem", 400), ("server.pem", 90)):
        cert = _cert(pki_dir / name)
        assert cert.not_valid_before_utc <= now
        expected = now + timedelta(days=days)
        assert abs(cert.not_valid_after_utc - expected) < timedelta(minutes=2), name


def test_python_ssl_accepts_the_files_and_completes_a_handshake(pki_dir):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki_dir / "server.pem", pki_dir / "server.key")
    for hostname in (DNS, IP):
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.load_verify_locations(pki_dir / "ca.pem")
        _handshake(client_ctx, server_ctx, hostname)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(pki_dir / "ca.pem")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(client_ctx, server_ctx, "other.example.org")


def _handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, hostname: str) -> None:
    """Run a TLS handshake in memory (no sockets), checking the chain and the hostname."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    ends = (("client", client, c_out, s_in), ("server", server, s_out, c_in))
    for _ in range(20):
        for name, end, out, peer_in in ends:
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_key_modes_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        directory = tmp_path / "pki"
        pki.init_ca(directory)
        pki.issue_server_cert(directory, dns_names=[DNS])
        pki.create_site_key(directory, "hospital-a")
    finally:
        os.umask(old)
    for name in ("ca.key", "server.key", "sites/hospital-a.key"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    for name in ("ca.pem", "server.pem", "sites/hospital-a.pub"):
        assert stat.S_IMODE((directory / name).stat().st_mode) & 0o022 == 0, name
    assert not [p for p in directory.rglob(".*.tmp")]


@pytest.mark.parametrize(
    ("argv", "path"),
    [
        (["init"], "ca.key"),
        (["server", "--dns", DNS], "server.key"),
        (["site", "hospital-a"], "sites/hospital-a.key"),
    ],
)
def test_refuses_to_overwrite_without_force(tmp_path, capsys, argv, path):
    directory = tmp_path / "pki"
    pki.init_ca(directory)
    pki.issue_server_cert(directory, dns_names=[DNS])
    pki.create_site_key(directory, "hospital-a")
    before = (directory / path).read_bytes()

    code, _, err = _cli(capsys, *argv, "--dir", str(directory))
    line = _refused(code, err, str(directory / path), "--force")
    if argv[0] == "init":
        assert "breaks every deployed site" in line
    assert (directory / path).read_bytes() == before

    code, _, err = _cli(capsys, *argv, "--dir", str(directory), "--force")
    assert code == 0, err
    assert (directory / path).read_bytes() != before
    assert stat.S_IMODE((directory / path).stat().st_mode) == 0o600
    if argv[0] == "init":
        assert "warning: the federation CA was replaced" in err


def test_site_key_is_what_flower_accepts(pki_dir, capsys):
    code, out, err = _cli(
        capsys, "site", "hospital-a", "--dir", str(pki_dir), "--connection", "prod"
    )
    assert code == 0, err
    public_path, key_path = pki_dir / "sites/hospital-a.pub", pki_dir / "sites/hospital-a.key"

    text = public_path.read_text()
    assert text.startswith("ecdsa-sha2-nistp384 AAAA") and text.strip().endswith(" hospital-a")
    public = serialization.load_ssh_public_key(text.encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp384r1"

    # The loaders `flwr supernode register` and `flower-supernode` use themselves.
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    assert try_load_public_key(public_path)
    loaded = _try_setup_client_authentication(
        argparse.Namespace(auth_supernode_private_key=str(key_path), auth_supernode_public_key=None)
    )
    assert loaded is not None and loaded[1] == public

    # the commands docs/deployment.md uses, and the site.toml lines that name the files
    assert f"fedlora deploy register hospital-a --pki {pki_dir.absolute()} --connection prod" in out
    assert f'root-certificates = "{(pki_dir / "ca.pem").absolute()}"' in out
    assert f'auth-private-key = "{key_path.absolute()}"' in out
    assert "fedlora deploy supernode --site-config site.toml" in out
    assert "flower-supernode" not in out and "flwr supernode" not in out
    private_text = key_path.read_text()
    body = "".join(private_text.strip().splitlines()[1:-1])
    assert private_text not in out and body[:40] not in out and "PRIVATE KEY" not in out


def test_no_private_key_material_is_printed(tmp_path, capsys):
    directory = str(tmp_path / "pki")
    assert _cli(capsys, "init", "--dir", directory)[0] == 0
    code, out, _ = _cli(capsys, "server", "--dir", directory, "--dns", DNS, "--ip", IP)
    assert code == 0
    assert "fedlora deploy superlink --pki" in out  # never plain flower-superlink
    for name in ("ca.key", "server.key"):
        body = (tmp_path / "pki" / name).read_text().strip().splitlines()[1]
        assert body not in out
    assert "PRIVATE KEY" not in out


def test_show_lists_everything_and_warns_for_expiry(tmp_path, capsys):
    directory = tmp_path / "pki"
    pki.init_ca(directory)
    pki.create_site_key(directory, "bank-1")
    code, out, err = _cli(capsys, "server", "--dir", str(directory), "--dns", DNS, "--days", "5")
    assert code == 0, err

    code, out, err = _cli(capsys, "show", "--dir", str(directory))
    assert code == 0, err
    assert "CA: " in out and "ca.pem" in out
    assert f"DNS:{DNS}" in out and "issued by the CA" in out
    assert "site bank-1" in out and "SHA256:" in out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "server.pem expires in 5 days" in warnings[0]

    code, out, _ = _cli(capsys, "show", "--dir", str(directory), "--warn-days", "3")
    assert code == 0 and "warning:" not in out


def test_show_warns_for_expired_and_foreign_server_cert(pki_dir, capsys):
    later = datetime.now(timezone.utc) + timedelta(days=100)
    found = pki.inventory(pki_dir, now=later)
    assert any("server.pem expired on" in warning for warning in found.warnings)

    pki.init_ca(pki_dir, force=True)
    code, out, _ = _cli(capsys, "show", "--dir", str(pki_dir))
    assert code == 0
    assert "NOT issued by the CA" in out
    assert any(
        line.startswith("warning:") and "was not issued by the CA" in line
        for line in out.splitlines()
    )


def test_show_warns_for_a_readable_private_key(pki_dir, capsys):
    (pki_dir / "server.key").chmod(0o644)
    code, out, _ = _cli(capsys, "show", "--dir", str(pki_dir))
    assert code == 0
    assert any(line.startswith("warning: private key") for line in out.splitlines())


def test_show_without_a_directory(tmp_path, capsys):
    code, _, err = _cli(capsys, "show", "--dir", str(tmp_path / "absent"))
    _refused(code, err, "fedlora pki init")


@pytest.mark.parametrize("name", ["bad name", "", "-lead", "a" * 64, "x/y", "..", "é"])
def test_invalid_site_name(pki_dir, capsys, name):
    code, _, err = _cli(capsys, "site", "--dir", str(pki_dir), "--", name)
    _refused(code, err, "invalid site name")
    assert not (pki_dir / "sites").exists()


def test_valid_site_name_limits(pki_dir):
    for name in ("a", "A_1-b", "x" * 63):
        site = pki.create_site_key(pki_dir, name)
        assert site.public_key.name == f"{name}.pub"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["server"], "at least one --dns NAME or --ip ADDR"),
        (["server", "--ip", "999.1.1.1"], "invalid IP address '999.1.1.1'"),
        (["server", "--ip", "superlink"], "invalid IP address 'superlink'"),
        (["server", "--dns", "10.0.0.1"], "give it with --ip"),
        (["server", "--dns", "bad_name.org"], "invalid DNS name"),
        (["server", "--dns", DNS, "--days", "0"], "1 to 36500 days"),
        (["server", "--dns", DNS, "--days", "5000"], "would outlive the CA"),
        (["init", "--force", "--days", "-1"], "1 to 36500 days"),
        (["show", "--warn-days", "-1"], "--warn-days must be >= 0"),
    ],
)
def test_bad_input(pki_dir, capsys, argv, message):
    before = (pki_dir / "server.pem").read_bytes()
    code, _, err = _cli(capsys, *argv, "--dir", str(pki_dir))
    _refused(code, err, message)
    assert (pki_dir / "server.pem").read_bytes() == before


@pytest.mark.parametrize("argv", [["server", "--dns", DNS], ["site", "hospital-a"]])
def test_commands_before_init(tmp_path, capsys, argv):
    directory = tmp_path / "pki"
    code, _, err = _cli(capsys, *argv, "--dir", str(directory))
    _refused(code, err, "run `fedlora pki init", str(directory))
    assert not directory.exists()


def test_site_key_needs_only_the_ca_certificate(pki_dir, tmp_path):
    site_dir = tmp_path / "site-machine"
    site_dir.mkdir()
    (site_dir / "ca.pem").write_bytes((pki_dir / "ca.pem").read_bytes())
    site = pki.create_site_key(site_dir, "hospital-b")
    assert site.key.exists() and site.fingerprint.startswith("SHA256:")
    with pytest.raises(PkiError, match="certificates can only be issued where the CA was created"):
        pki.issue_server_cert(site_dir, dns_names=[DNS])


def test_pki_error_is_a_fedlora_error():
    assert issubclass(PkiError, FedloraError)
    assert PkiError.error_code == 109
