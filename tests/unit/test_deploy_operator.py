"""The operator's day: refusals in one line, the sites listing, quiet output (issue 17)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from flwr.superlink.grid import InMemoryGrid

from fedlora.cli.main import main as fedlora_main
from fedlora.deploy import commands as deploy
from fedlora.deploy import site_list
from fedlora.deploy.roster import RosterEntry
from fedlora.errors import ConfigError
from fedlora.pki import commands as pki
from fedlora.server.app import check_simulation_sites

KEY = "SHA256:" + "A" * 43


class _SimulationGrid(InMemoryGrid):
    """Flower's simulation grid with its nodes already registered."""

    def __init__(self, nodes: int) -> None:
        self.nodes = list(range(1, nodes + 1))

    def get_node_ids(self) -> list[int]:
        return self.nodes


def test_a_simulation_with_another_node_count_is_refused_at_once():
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        check_simulation_sites(_SimulationGrid(2), 5, timeout=120.0)

    assert time.monotonic() - started < 5  # not the 120 s node wait
    message = str(refused.value)
    assert "\n" not in message and "sites=5" in message and "2 SuperNodes" in message
    assert '--federation-config "num-supernodes=5"' in message
    check_simulation_sites(_SimulationGrid(5), 5, timeout=120.0)  # equal: goes on
    check_simulation_sites(object(), 5, timeout=120.0)  # a deployment's grid: it waits later


def test_the_superlink_database_folder_is_created_private(tmp_path):
    database = tmp_path / "srv" / "fedlora" / "superlink.db"

    argv = deploy.superlink_argv(tmp_path / "pki", insecure=True, database=database)

    assert argv[argv.index("--database") + 1] == str(database)
    for folder in (database.parent, database.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_database_folder_that_cannot_exist_is_refused_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    database = blocker / "sub" / "s.db"  # under a regular file: no folder can be made

    code = fedlora_main(
        ["deploy", "superlink", "--pki", str(tmp_path), "--database", str(database)]
    )

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"fedlora: error: --database {database}: cannot create")
    with pytest.raises(ConfigError, match="is a folder"):
        deploy.superlink_argv(tmp_path, insecure=True, database=tmp_path)


NODES = [
    {"node-id": "11", "status": "online", "online-at": "2026-12-07 08:00:00Z"},
    {"node-id": "12", "status": "offline", "offline-at": "2026-12-07 07:00:00Z"},
    {"node-id": "99", "status": "online", "online-at": "2026-12-07 08:01:00Z"},
]


def test_sites_joins_the_roster_with_the_superlinks_nodes():
    roster = [
        RosterEntry(12, "hospital-b", KEY, "t"),
        RosterEntry(11, "hospital-a", KEY, "t"),
        RosterEntry(13, "hospital-c", KEY, "t"),
    ]

    rows = site_list.site_rows(roster, NODES)

    assert [(r.site, r.node_id, r.status, r.last_seen) for r in rows] == [
        ("hospital-a", 11, "online", "2026-12-07 08:00:00Z"),
        ("hospital-b", 12, "offline", "2026-12-07 07:00:00Z"),
        ("hospital-c", 13, site_list.UNKNOWN, "-"),
        (site_list.NOT_ENROLLED, 99, "online", "2026-12-07 08:01:00Z"),
    ]


def test_deploy_sites_prints_one_row_per_site(tmp_path, monkeypatch, capsys):
    from fedlora.deploy.roster import write_roster_entry

    write_roster_entry(tmp_path / "roster.json", node_id=11, site="hospital-a", key_sha256=KEY)
    monkeypatch.setattr(site_list, "superlink_nodes", lambda connection: NODES[:1])

    assert fedlora_main(["deploy", "sites", "--pki", str(tmp_path), "--connection", "fed"]) == 0

    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["site", "node", "id"]
    assert row.split() == ["hospital-a", "11", "online", "2026-12-07", "08:00:00Z", KEY]


def test_supernode_check_prints_the_command_that_runs(tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text('{"prompt": "q", "response": "a"}\n')
    site = tmp_path / "site.toml"
    site.write_text(
        '[site]\nname = "a"\ntrain-file = "train.jsonl"\ndevice = "cpu"\n'
        '[privacy]\nbudget-epsilon = 8.0\nledger-dir = "ledger"\n'
        '[connection]\nsuperlink = "127.0.0.1:9093"\ninsecure = true\n'
    )

    code = fedlora_main(
        ["deploy", "supernode", "--site-config", str(site), "--insecure", "--check"]
    )

    command = capsys.readouterr().out.splitlines()[-1]
    assert code == 0
    assert command.endswith("--host 127.0.0.1 --port 9094 --isolation process")  # as the docs
    assert "--worker --" in command and "--free-runtime-port" in command


def test_library_warnings_a_user_cannot_act_on_are_hidden_by_the_cli(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fedlora_main(["pki", "show", "--dir", str(tmp_path)]) == 0
        warnings.warn(
            "Secure RNG turned off. This is perfectly fine for experimentation", stacklevel=1
        )
        warnings.warn("Optimal order is the largest alpha. Please consider expanding", stacklevel=1)
        warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("site data has 3 records: too few for DP", stacklevel=1)  # the user's: shown
    assert [str(w.message) for w in caught] == ["site data has 3 records: too few for DP"]


def test_a_closed_pipe_ends_the_command_without_a_traceback(tmp_path):
    pki.init_ca(tmp_path / "pki")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedlora.cli.main",
            "pki",
            "site",
            "a",
            "--dir",
            str(tmp_path / "pki"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # as `| head` does, before the command writes
    err = process.stderr.read().decode()
    process.wait(timeout=60)

    assert "BrokenPipeError" not in err and "Traceback" not in err, err
    assert process.returncode == 141
    assert (tmp_path / "pki" / "sites" / "a.key").exists()


LOGGING_PROBE = """
import logging, sys
from fedlora.quiet import configure_process_logging
configure_process_logging("T %(levelname)s %(name)s: %(message)s", verbose=sys.argv[1] == "v")
from flwr.common.logger import log
log(logging.INFO, "SuperNode ID: 7")
log(logging.INFO, "")
log(logging.DEBUG, "Runtime.AcquireTask")
logging.getLogger("httpx").info("HTTP Request: POST /v1/fleet/pull-messages")
logging.getLogger("fedlora.x").info("train message: completed")
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_a_node_logs_each_line_once_and_the_chatter_only_when_verbose(verbose):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run(
        [sys.executable, "-c", LOGGING_PROBE, "v" if verbose else "q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = (result.stdout + result.stderr).splitlines()
    expected = [
        "T INFO flwr: SuperNode ID: 7",
        "T INFO fedlora.x: train message: completed",
    ]
    if verbose:
        expected[1:1] = [
            "T INFO flwr: ",
            "T DEBUG flwr: Runtime.AcquireTask",
            "T INFO httpx: HTTP Request: POST /v1/fleet/pull-messages",
        ]
    assert lines == expected
