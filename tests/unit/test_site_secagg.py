"""site.toml names the site's secure-aggregation key and the CA-signed roster, checked at start."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from fedlora.deploy.loopback_site import SiteData, write_site_toml
from fedlora.deploy.site_config import load_site_config
from fedlora.errors import ConfigError
from fedlora.pki import commands as pki
from fedlora.secagg.crypto import Identity


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    pki.init_ca(directory)
    pki.create_site_key(directory, "site-a")
    pki.create_site_key(directory, "site-b")
    return directory


def _site(folder: Path, pki_dir: Path, secagg: str, *, tls: bool = True) -> Path:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "train.jsonl").write_text('{"prompt": "q", "response": "a"}\n')
    connection = 'superlink = "127.0.0.1:9093"\n' + (
        f'root-certificates = "{pki_dir / "ca.pem"}"\n'
        f'auth-private-key = "{pki_dir / "sites" / "site-a.key"}"\n'
        if tls
        else "insecure = true\n"
    )
    path = folder / "site.toml"
    path.write_text(
        '[site]\nname = "site-a"\ntrain-file = "data/train.jsonl"\n\n'
        '[privacy]\nbudget-epsilon = 8.0\nledger-dir = "ledger"\n\n'
        f"[connection]\n{connection}{secagg}"
    )
    return path


def _secagg(key: Path, roster: Path) -> str:
    return f'secagg-identity-key = "{key}"\nsecagg-roster = "{roster}"\n'


def test_the_node_config_carries_the_key_the_roster_and_the_ca_that_signed_it(tmp_path, pki_dir):
    key, roster = pki_dir / "sites" / "site-a.secagg.key", pki_dir / "secagg-roster.json"

    config = load_site_config(_site(tmp_path, pki_dir, _secagg(key, roster)))

    assert (config.secagg_identity_key, config.secagg_roster) == (key, roster)
    node = parse_config_args([config.to_node_config()])
    assert node["secagg-identity-key"] == str(key)
    assert node["secagg-roster"] == str(roster)
    assert node["secagg-ca"] == str(pki_dir / "ca.pem")
    # without them (an existing site.toml) the node config names none of the three
    plain = parse_config_args([load_site_config(_site(tmp_path, pki_dir, "")).to_node_config()])
    assert not {"secagg-identity-key", "secagg-roster", "secagg-ca"} & set(plain)


def _copy(source: Path, target: Path, mode: int = 0o600) -> Path:
    shutil.copyfile(source, target)
    target.chmod(mode)
    return target


def test_bad_secure_aggregation_files_are_refused_at_node_start(tmp_path, pki_dir):
    key, roster = pki_dir / "sites" / "site-a.secagg.key", pki_dir / "secagg-roster.json"
    other = tmp_path / "other-federation"
    pki.init_ca(other)
    pki.create_site_key(other, "site-a")
    forged = tmp_path / "forged.json"
    forged.write_text(roster.read_text().replace('"site-b"', '"site-c"'))
    cases = [
        (f'secagg-roster = "{roster}"\n', "give both secagg-identity-key and secagg-roster"),
        (_secagg(_copy(key, tmp_path / "open.key", 0o644), roster), "mode 0644; it must be 0600"),
        (_secagg(pki_dir / "sites" / "site-a.key", roster), "not an unencrypted Ed25519"),
        (_secagg(key, tmp_path / "absent.json"), "secagg-roster .* does not exist"),
        (_secagg(key, other / "secagg-roster.json"), "issued for another federation CA"),
        (_secagg(key, forged), "not signed by the federation CA"),
        # site-b's key (0600 copy) is on the roster, but not as site-a's
        (_secagg(_copy(pki_dir / "sites" / "site-b.secagg.key", tmp_path / "b.key"), roster),
         "does not list site 'site-a' with the key"),
    ]  # fmt: skip
    for number, (secagg, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=message) as refused:
            load_site_config(_site(tmp_path / str(number), pki_dir, secagg))
        assert "\n" not in str(refused.value) and "site.toml" in str(refused.value)


def test_a_roster_needs_the_federation_ca_so_not_an_insecure_node(tmp_path, pki_dir):
    key, roster = pki_dir / "sites" / "site-a.secagg.key", pki_dir / "secagg-roster.json"
    with pytest.raises(ConfigError, match="secagg-roster needs root-certificates"):
        load_site_config(
            _site(tmp_path, pki_dir, _secagg(key, roster), tls=False), allow_insecure=True
        )


def test_a_loopback_site_is_written_with_its_pki_issued_key_and_roster(tmp_path, pki_dir):
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "q", "response": "a"}\n')
    path = write_site_toml(
        tmp_path / "site-a",
        "site-a",
        SiteData(train, allow_no_dp=True),
        superlink="127.0.0.1:9",
        pki_dir=pki_dir,
    )

    config = load_site_config(path)

    assert config.secagg_identity_key == pki_dir / "sites" / "site-a.secagg.key"
    assert config.secagg_roster == pki_dir / "secagg-roster.json"
    assert config.allow_no_dp is True
    plain = write_site_toml(
        tmp_path / "site-b", "site-b", SiteData(train), superlink="127.0.0.1:9", pki_dir=pki_dir
    )
    assert load_site_config(plain).allow_no_dp is None  # DP stays required unless opted out
    assert Identity.from_pem(config.secagg_identity_key.read_bytes())
