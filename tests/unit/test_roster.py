"""The site roster: node id -> site name, written at registration, validated on read."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from fedlora.deploy import commands as deploy
from fedlora.deploy.roster import (
    ROSTER_ENV,
    RosterError,
    default_roster_path,
    load_roster,
    read_roster,
    remove_roster_entry,
    roster_path_from_env,
    write_roster_entry,
)
from fedlora.errors import ConfigError, FedloraError
from fedlora.flower_internals.link_superlink import _parse, export_roster

KEY_A = "SHA256:" + "A" * 43
KEY_B = "SHA256:" + "B" * 43
KEY_C = "SHA256:" + "C" * 43
WHEN = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def _roster(tmp_path: Path) -> Path:
    path = tmp_path / "pki" / "roster.json"
    write_roster_entry(path, node_id=11, site="site-a", key_sha256=KEY_A, registered_at=WHEN)
    write_roster_entry(path, node_id=2**64 - 1, site="site-b", key_sha256=KEY_B)
    return path


def test_entries_written_are_read_back_as_node_id_to_site(tmp_path: Path) -> None:
    path = _roster(tmp_path)

    assert read_roster(path) == {11: "site-a", 2**64 - 1: "site-b"}
    [first, _] = load_roster(path)
    assert (first.key_sha256, first.registered_at) == (KEY_A, "2026-01-01T12:00:00+00:00")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by the ServerApp, not writable
    assert not list(path.parent.glob(".roster.json.*.tmp"))  # the atomic write left nothing


def test_a_site_registered_again_replaces_its_old_node(tmp_path: Path) -> None:
    path = _roster(tmp_path)

    write_roster_entry(path, node_id=12, site="site-a", key_sha256=KEY_C)  # key rotated

    assert read_roster(path) == {2**64 - 1: "site-b", 12: "site-a"}


def test_removing_a_node_drops_only_its_entry(tmp_path: Path) -> None:
    path = _roster(tmp_path)

    removed = remove_roster_entry(path, 11)

    assert removed is not None and removed.site == "site-a"
    assert read_roster(path) == {2**64 - 1: "site-b"}
    assert remove_roster_entry(path, 11) is None


@pytest.mark.parametrize(
    ("node_id", "site", "key", "match"),
    [
        (0, "site-a", KEY_A, "node-id must be 1"),
        (True, "site-a", KEY_A, "node-id must be an integer"),
        (2**64, "site-a", KEY_A, "node-id must be 1"),
        (5, "../etc", KEY_A, "site"),
        (5, "site-a", "MD5:aa", "key-sha256"),
    ],
)
def test_a_bad_entry_is_refused_before_writing(
    tmp_path: Path, node_id: int, site: str, key: str, match: str
) -> None:
    path = tmp_path / "roster.json"

    with pytest.raises(RosterError, match=match):
        write_roster_entry(path, node_id=node_id, site=site, key_sha256=key)
    assert not path.exists()


def _entry(node_id: object = 5, site: object = "site-a", key: object = KEY_A) -> dict[str, object]:
    return {"node-id": node_id, "site": site, "key-sha256": key, "registered-at": WHEN.isoformat()}


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "exactly version and sites"),
        (json.dumps({"version": 2, "sites": []}), "version 2"),
        (json.dumps({"version": 1, "sites": {}}), "sites must be a list"),
        (json.dumps({"version": 1, "sites": [_entry(node_id="5")]}), "node-id must be an integer"),
        (json.dumps({"version": 1, "sites": [{**_entry(), "extra": 1}]}), "unknown keys"),
        (json.dumps({"version": 1, "sites": [_entry(), _entry(site="b", key=KEY_B)]}), "node id"),
        (json.dumps({"version": 1, "sites": [_entry(), _entry(node_id=6, key=KEY_B)]}), "site"),
        (json.dumps({"version": 1, "sites": [_entry(), _entry(node_id=6, site="b")]}), "key"),
    ],
)
def test_a_malformed_roster_is_a_clear_fedlora_error(
    tmp_path: Path, document: str, match: str
) -> None:
    path = tmp_path / "roster.json"
    path.write_text(document)
    path.chmod(0o644)

    with pytest.raises(RosterError, match=match) as raised:
        read_roster(path)
    assert isinstance(raised.value, FedloraError) and str(path) in str(raised.value)


def test_a_roster_others_may_write_or_a_missing_one_is_refused(tmp_path: Path) -> None:
    path = _roster(tmp_path)
    path.chmod(0o666)

    with pytest.raises(RosterError, match="mode 0666"):
        read_roster(path)
    with pytest.raises(RosterError, match="fedlora deploy register"):
        read_roster(tmp_path / "missing.json")


def test_the_serverapp_finds_the_roster_the_superlink_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ROSTER_ENV, raising=False)
    argv = deploy.superlink_argv(_pki(tmp_path), port=9100)
    args, _ = _parse(argv[3:])

    export_roster(args.roster)

    assert args.roster == default_roster_path(tmp_path / "pki") == tmp_path / "pki" / "roster.json"
    assert roster_path_from_env() == args.roster
    assert os.environ[ROSTER_ENV] == str(args.roster)
    assert roster_path_from_env({}) is None
    with pytest.raises(RosterError, match="absolute"):
        roster_path_from_env({ROSTER_ENV: "roster.json"})
    with pytest.raises(ConfigError, match="absolute"):
        export_roster(Path("roster.json"))
    insecure = deploy.superlink_argv(tmp_path, port=9100, insecure=True)
    assert "--roster" not in insecure  # no site keys, nothing to bind


def _pki(tmp_path: Path) -> Path:
    from fedlora.pki import commands as pki

    directory = tmp_path / "pki"
    pki.init_ca(directory)
    pki.issue_server_cert(directory, dns_names=["localhost"])
    pki.create_site_key(directory, "site-a")
    return directory


def test_register_site_records_the_node_id_flwr_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _pki(tmp_path)
    answers = iter(
        [
            '{\n  "success": true,\n  "node-id": 6342104113413513241\n}\n',
            '{"success": false, "error-message": "Using SuperLink: fed\\n\\nPublic key in use."}',
        ]
    )

    def fake_run(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        assert argv[-2:] == ["--format", "json"] and argv[1:3] == ["supernode", "register"]
        return subprocess.CompletedProcess(argv, 0, next(answers), "")

    monkeypatch.setattr(subprocess, "run", fake_run)

    entry = deploy.register_site("site-a", directory, "fed")

    assert read_roster(directory / "roster.json") == {6342104113413513241: "site-a"}
    assert entry.key_sha256.startswith("SHA256:")
    with pytest.raises(ConfigError, match=r"registering site-a failed.*Public key in use"):
        deploy.register_site("site-a", directory, "fed")  # flwr exits 0 even then
