"""`fedlora pki` issues the secure-aggregation identity keys and the CA-signed roster of them."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Context, RecordDict

from fedlora.cli.main import main
from fedlora.clients.secure_site import site_keys
from fedlora.errors import PkiError
from fedlora.pki import commands as pki
from fedlora.pki.inventory import require_ca
from fedlora.pki.layout import PkiLayout
from fedlora.pki.secagg_roster import (
    MAX_ROSTER_BYTES,
    SIGNING_CONTEXT,
    read_public_key,
    sign_roster,
    verify_roster,
)
from fedlora.secagg import SecAggError
from fedlora.secagg.crypto import Identity


def _federation(directory: Path, *sites: str) -> Path:
    pki.init_ca(directory)
    for name in sites:
        pki.create_site_key(directory, name)
    return directory


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    return _federation(tmp_path / "pki", "site-a", "site-b")


def _identity(directory: Path, site: str) -> Identity:
    return Identity.from_pem((directory / "sites" / f"{site}.secagg.key").read_bytes())


def _document(directory: Path) -> dict:
    return json.loads((directory / "secagg-roster.json").read_text())


def _signed(directory: Path, body: dict) -> str:
    """``body`` signed with the federation's CA key exactly as the roster is (a CA insider)."""
    key, _ = require_ca(PkiLayout(directory))
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    signature = key.sign(SIGNING_CONTEXT + text.encode(), ec.ECDSA(hashes.SHA384()))
    return json.dumps({**body, "signature": base64.b64encode(signature).decode()})


def test_each_site_gets_an_identity_key_and_the_ca_signed_roster_lists_them_all(pki_dir):
    keys = verify_roster(pki_dir / "secagg-roster.json", pki_dir / "ca.pem")

    assert keys == {site: _identity(pki_dir, site).public for site in ("site-a", "site-b")}
    assert keys["site-a"] == read_public_key(pki_dir / "sites" / "site-a.secagg.pub")
    document = _document(pki_dir)
    assert document["format"] == "fedlora-secagg-roster" and document["version"] == 1
    cert = x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes())
    assert document["ca-sha256"] == cert.fingerprint(hashes.SHA256()).hex()
    # Re-indenting the file changes no signed byte: the signature covers the canonical JSON.
    (pki_dir / "secagg-roster.json").write_text(json.dumps(document, indent=7))
    assert verify_roster(pki_dir / "secagg-roster.json", pki_dir / "ca.pem") == keys


def test_identity_keys_are_private_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        directory = _federation(tmp_path / "pki", "site-a")
    finally:
        os.umask(old)
    mode = stat.S_IMODE
    assert mode((directory / "sites" / "site-a.secagg.key").stat().st_mode) == 0o600
    assert mode((directory / "sites" / "site-a.key").stat().st_mode) == 0o600
    assert mode((directory / "sites" / "site-a.secagg.pub").stat().st_mode) == 0o644
    assert mode((directory / "secagg-roster.json").stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        # the coordinator's own key put in for site-b
        (lambda d: d["sites"].update({"site-b": Identity().public.hex()}), "not signed by"),
        (lambda d: d["sites"].update({"impostor": Identity().public.hex()}), "not signed by"),
        (lambda d: d["sites"].pop("site-b"), "not signed by"),
        (lambda d: d.update({"issued": "2030-01-01T00:00:00Z"}), "not signed by"),
        (lambda d: d.update({"signature": "not base64!"}), "not signed by"),
        (lambda d: d.update({"ca-sha256": "00" * 32}), "issued for another federation CA"),
        (lambda d: d.update({"version": 2}), "version 1"),
        (lambda d: d.pop("signature"), "must hold exactly"),
    ],
)
def test_an_altered_roster_is_refused_in_one_line_naming_the_file(pki_dir, tamper, message):
    document = _document(pki_dir)
    tamper(document)
    roster = pki_dir / "secagg-roster.json"
    roster.write_text(json.dumps(document))

    with pytest.raises(PkiError, match=message) as refused:
        verify_roster(roster, pki_dir / "ca.pem")
    assert str(roster) in str(refused.value) and "\n" not in str(refused.value)


def test_a_roster_of_another_federation_is_refused(pki_dir, tmp_path):
    other = _federation(tmp_path / "other", "site-a", "site-b")
    with pytest.raises(PkiError, match="issued for another federation CA"):
        verify_roster(other / "secagg-roster.json", pki_dir / "ca.pem")
    # ... also when it claims this federation's CA: the other CA's signature does not verify.
    document = _document(other)
    document["ca-sha256"] = _document(pki_dir)["ca-sha256"]
    (other / "secagg-roster.json").write_text(json.dumps(document))
    with pytest.raises(PkiError, match="not signed by the federation CA"):
        verify_roster(other / "secagg-roster.json", pki_dir / "ca.pem")


def test_a_roster_signed_by_the_coordinators_server_key_is_refused(pki_dir, tmp_path):
    # A site that bundled server.pem into its root-certificates trusts it for TLS; the
    # coordinator holds server.key, so a roster it signs must still not pass.
    pki.issue_server_cert(pki_dir, dns_names=["localhost"])
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((pki_dir / "ca.pem").read_bytes() + (pki_dir / "server.pem").read_bytes())
    server_key = serialization.load_pem_private_key(
        (pki_dir / "server.key").read_bytes(), password=None
    )
    server_cert = x509.load_pem_x509_certificate((pki_dir / "server.pem").read_bytes())
    assert isinstance(server_key, ec.EllipticCurvePrivateKey)
    forged = tmp_path / "forged.json"
    forged.write_bytes(sign_roster(server_key, server_cert, {"site-a": Identity().public}))
    assert verify_roster(pki_dir / "secagg-roster.json", bundle)  # the CA's roster passes

    with pytest.raises(PkiError, match="that is not a CA"):
        verify_roster(forged, bundle)


def test_a_new_ca_leaves_the_old_roster_flagged_until_it_is_reissued(pki_dir, capsys):
    assert main(["pki", "init", "--force", "--dir", str(pki_dir)]) == 0
    assert "secure-aggregation roster (fedlora pki roster)" in capsys.readouterr().err
    warnings = pki.inventory(pki_dir).warnings
    assert any("issued for another federation CA" in warning for warning in warnings)

    pki.issue_secagg_roster(pki_dir)

    assert not pki.inventory(pki_dir).warnings
    assert set(verify_roster(pki_dir / "secagg-roster.json", pki_dir / "ca.pem")) == {
        "site-a", "site-b"
    }  # fmt: skip


def test_a_site_named_twice_is_refused_even_in_a_signed_roster(pki_dir):
    roster = pki_dir / "secagg-roster.json"
    text = roster.read_text()
    # JSON parsers keep the last of two equal names: a second entry could replace a key.
    duplicate = text.replace('"sites": {', f'"sites": {{\n    "site-b": "{"ab" * 32}",', 1)
    roster.write_text(duplicate)
    with pytest.raises(PkiError, match="names 'site-b' twice"):
        verify_roster(roster, pki_dir / "ca.pem")


@pytest.mark.parametrize(
    ("sites", "message"),
    [
        ({"site-a": "ab" * 31}, "key of site 'site-a' is not 64 hex digits"),
        ({"site-a": "zz" * 32}, "key of site 'site-a' is not 64 hex digits"),
        ({"site-a": 7}, "key of site 'site-a' is not 64 hex digits"),
        ({"../site-a": "ab" * 32}, "invalid site name '../site-a'"),
        ({"a": "ab" * 32, "b": "ab" * 32}, "sites 'a' and 'b' have the same key"),
        ({}, "lists no site"),
    ],
)
def test_a_ca_signed_roster_with_bad_entries_is_still_refused(pki_dir, sites, message):
    body = _document(pki_dir)
    del body["signature"]
    roster = pki_dir / "secagg-roster.json"
    roster.write_text(_signed(pki_dir, {**body, "sites": sites}))
    with pytest.raises(PkiError, match=message):
        verify_roster(roster, pki_dir / "ca.pem")


def test_the_ca_refuses_to_sign_a_key_twice_or_a_short_key(pki_dir):
    key, cert = require_ca(PkiLayout(pki_dir))
    with pytest.raises(PkiError, match="have the same key"):
        sign_roster(key, cert, {"a": b"\x01" * 32, "b": b"\x01" * 32})
    with pytest.raises(PkiError, match="not 64 hex digits"):
        sign_roster(key, cert, {"a": b"\x01" * 31})


def test_a_huge_or_non_json_roster_is_refused_unparsed(pki_dir):
    roster = pki_dir / "secagg-roster.json"
    roster.write_bytes(b" " * (MAX_ROSTER_BYTES + 1))
    with pytest.raises(PkiError, match="larger than"):
        verify_roster(roster, pki_dir / "ca.pem")
    roster.write_bytes(b"\xff\xfe")
    with pytest.raises(PkiError, match="is not JSON"):
        verify_roster(roster, pki_dir / "ca.pem")


def test_removing_a_site_reissues_the_roster_without_it(pki_dir):
    old = pki_dir.parent / "old-roster.json"
    shutil.copyfile(pki_dir / "secagg-roster.json", old)
    pki.create_site_key(pki_dir, "site-c")
    assert set(verify_roster(pki_dir / "secagg-roster.json", pki_dir / "ca.pem")) == {
        "site-a", "site-b", "site-c"
    }  # fmt: skip

    removed = pki.remove_site(pki_dir, "site-b")

    assert not list((pki_dir / "sites").glob("site-b.*"))
    assert {path.name for path in removed.files} == {
        "site-b.key", "site-b.pub", "site-b.secagg.key", "site-b.secagg.pub"
    }  # fmt: skip
    assert removed.roster is not None and removed.roster.sites == ("site-a", "site-c")
    keys = verify_roster(pki_dir / "secagg-roster.json", pki_dir / "ca.pem")
    assert set(keys) == {"site-a", "site-c"}
    assert "site-c" not in verify_roster(old, pki_dir / "ca.pem")
    pki.remove_site(pki_dir, "site-a")
    assert pki.remove_site(pki_dir, "site-c").roster is None
    assert not (pki_dir / "secagg-roster.json").exists()  # an empty roster is no roster
    with pytest.raises(PkiError, match="no site 'site-c'"):
        pki.remove_site(pki_dir, "site-c")
    with pytest.raises(PkiError, match="invalid site name"):
        pki.remove_site(pki_dir, "..")


def test_a_site_making_its_own_keys_gets_into_the_roster_the_operator_issues(pki_dir, tmp_path):
    site_dir = tmp_path / "site-machine"
    site_dir.mkdir()
    shutil.copyfile(pki_dir / "ca.pem", site_dir / "ca.pem")
    own = pki.create_site_key(site_dir, "site-c")
    assert own.roster is None and not (site_dir / "secagg-roster.json").exists()
    shutil.copyfile(own.secagg_public_key, pki_dir / "sites" / "site-c.secagg.pub")

    issued = pki.issue_secagg_roster(pki_dir)

    assert issued.sites == ("site-a", "site-b", "site-c")
    keys = verify_roster(issued.path, site_dir / "ca.pem")
    assert keys["site-c"] == Identity.from_pem(own.secagg_key.read_bytes()).public


def _context(directory: Path, site: str, ca: bool = True) -> Context:
    node = {
        "secagg-identity-key": str(directory / "sites" / f"{site}.secagg.key"),
        "secagg-roster": str(directory / "secagg-roster.json"),
    }
    if ca:
        node["secagg-ca"] = str(directory / "ca.pem")
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})


def test_a_site_trusts_the_roster_only_once_the_ca_signature_verifies(pki_dir):
    identity, roster = site_keys(_context(pki_dir, "site-a"), "site-a")
    assert identity.public == _identity(pki_dir, "site-a").public
    assert roster.authenticated and set(roster.keys or {}) == {"site-a", "site-b"}

    document = _document(pki_dir)
    document["sites"]["site-b"] = Identity().public.hex()  # the coordinator's own key
    (pki_dir / "secagg-roster.json").write_text(json.dumps(document))
    with pytest.raises(SecAggError, match="not signed by the federation CA") as refused:
        site_keys(_context(pki_dir, "site-a"), "site-a")
    assert str(pki_dir / "secagg-roster.json") in str(refused.value)
    # Without secagg-ca the signed file is not the plain JSON a roster without a CA must be.
    with pytest.raises(SecAggError):
        site_keys(_context(pki_dir, "site-a", ca=False), "site-a")


def test_a_site_names_the_identity_key_file_it_cannot_use(pki_dir):
    context = _context(pki_dir, "site-a")
    node_key = str(pki_dir / "sites" / "site-a.key")  # the P-384 node key, not Ed25519
    context.node_config["secagg-identity-key"] = node_key
    with pytest.raises(SecAggError, match=f"secagg-identity-key {node_key}: "):
        site_keys(context, "site-a")


def test_a_removed_site_is_refused_by_the_sites_given_the_new_roster(pki_dir):
    removed_identity = _identity(pki_dir, "site-b")
    pki.remove_site(pki_dir, "site-b")
    _, roster = site_keys(_context(pki_dir, "site-a"), "site-a")
    assert roster.keys is not None and removed_identity.public not in roster.keys.values()
    assert "site-b" not in roster.keys


def test_cli_issues_and_removes_and_show_warns_for_a_stale_or_forged_roster(tmp_path, capsys):
    directory = str(tmp_path / "pki")
    assert main(["pki", "init", "--dir", directory]) == 0
    assert main(["pki", "site", "site-a", "--dir", directory]) == 0
    out = capsys.readouterr().out
    assert f'secagg-identity-key = "{tmp_path / "pki" / "sites" / "site-a.secagg.key"}"' in out
    assert f'secagg-roster = "{tmp_path / "pki" / "secagg-roster.json"}"' in out
    assert "roster re-issued" in out and "PRIVATE KEY" not in out
    private = (tmp_path / "pki" / "sites" / "site-a.secagg.key").read_text().splitlines()[1]
    assert private not in out

    # A site's own public key copied in without re-issuing: show says the roster is stale.
    other = _federation(tmp_path / "elsewhere", "site-b")
    shutil.copyfile(
        other / "sites" / "site-b.secagg.pub", tmp_path / "pki" / "sites" / "site-b.secagg.pub"
    )
    assert main(["pki", "show", "--dir", directory]) == 0
    out = capsys.readouterr().out
    assert "secagg key" in out
    assert any("is out of date" in line for line in out.splitlines() if "warning:" in line)
    assert main(["pki", "roster", "--dir", directory]) == 0
    capsys.readouterr()
    assert main(["pki", "show", "--dir", directory]) == 0
    assert "warning:" not in capsys.readouterr().out

    roster = tmp_path / "pki" / "secagg-roster.json"
    roster.write_text(roster.read_text().replace('"site-a"', '"site-x"'))
    assert main(["pki", "show", "--dir", directory]) == 0
    assert "warning: secure-aggregation roster" in capsys.readouterr().out

    assert main(["pki", "remove", "site-b", "--dir", directory]) == 0
    out = capsys.readouterr().out
    assert "removed site site-b" in out and "flwr supernode unregister" in out
    assert set(verify_roster(roster, tmp_path / "pki" / "ca.pem")) == {"site-a"}


def test_an_older_site_gets_its_identity_key_with_secagg_only(pki_dir, capsys):
    for suffix in (".secagg.key", ".secagg.pub"):
        (pki_dir / "sites" / f"site-b{suffix}").unlink()
    pki.issue_secagg_roster(pki_dir)
    node_key = (pki_dir / "sites" / "site-b.key").read_bytes()

    assert main(["pki", "site", "site-b", "--secagg-only", "--dir", str(pki_dir)]) == 0

    assert (pki_dir / "sites" / "site-b.key").read_bytes() == node_key  # unchanged
    keys = verify_roster(pki_dir / "secagg-roster.json", pki_dir / "ca.pem")
    assert keys["site-b"] == _identity(pki_dir, "site-b").public
    assert main(["pki", "site", "site-b", "--secagg-only", "--dir", str(pki_dir)]) == 2
    assert "site-b.secagg.key already exists" in capsys.readouterr().err
