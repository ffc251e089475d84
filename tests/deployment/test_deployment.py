"""A real deployment on 127.0.0.1: TLS SuperLink, registered SuperNodes, `flwr run`, refusals.

"Another host" is played by :func:`tests.relay.relay`: its connections reach the SuperLink
from 127.0.0.2, with TLS end to end, as a remote client holding only ``ca.pem`` would.

The federation is a :class:`fedlora.deploy.loopback.LocalDeployment`: every process is started in
its own session and stopped by its process group when the module fixture ends, also when a test
fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedlora.cli.main import main as fedlora_main
from fedlora.deploy import commands as deploy
from fedlora.deploy.loopback import LocalDeployment, SiteData, wait_for
from fedlora.deploy.roster import ROSTER_ENV, read_roster
from fedlora.flower_internals.tuning import HELD_PULL_S
from fedlora.pki import commands as pki
from fedlora.privacy.ledger import read_ledger
from fedlora.privacy.ledger_storage import LEDGER_FILE
from fedlora.testing import write_sft_file
from tests.relay import relay

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parents[2]
SITES = ("site-a", "site-b")
CONNECTION = "fed"
RUN_TIMEOUT = 360


def _tls_handshake(port: int, cafile: Path | None, hostname: str = "127.0.0.1") -> str:
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        return str(tls.version())


def _nodes(federation: LocalDeployment) -> list[dict[str, object]]:
    result = subprocess.run(
        [deploy.flower_executable("flwr"), "supernode", "list", CONNECTION, "--format", "json"],
        env=federation.env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return list(json.loads(result.stdout)["nodes"])


def _held_pulls(log: str) -> int:
    """Empty pulls that took ``HELD_PULL_S`` or more: no other fleet request between two."""
    import datetime
    import itertools

    fleet_requests = [
        (line.split(" INFO ")[0], "/fleet/pull-messages" in line)
        for line in log.splitlines()
        if "HTTP Request: POST" in line and "/v1/fleet/" in line and "heartbeat" not in line
    ]
    held = 0
    for (before, was_pull), (after, is_pull) in itertools.pairwise(fleet_requests):
        if was_pull and is_pull:
            gap = datetime.datetime.fromisoformat(after) - datetime.datetime.fromisoformat(before)
            held += gap.total_seconds() >= HELD_PULL_S
    return held


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    data = tmp_path_factory.mktemp("site-data")
    sites = {
        name: SiteData(
            train_file=write_sft_file(data / name / "train.jsonl", name, 24),
            test_file=write_sft_file(data / name / "test.jsonl", name, count=8),
            budget_epsilon=50.0,
            device="cpu",
            # site-a through the Python API, site-b through the CLI an operator would use.
            start_with="cli" if name == "site-b" else "python",
        )
        for name in SITES
    }
    with LocalDeployment(
        tmp_path_factory.mktemp("deployment"), sites, app_dir=ROOT, connection=CONNECTION
    ) as deployment:
        pki.create_site_key(deployment.pki_dir, "rogue")  # a key the SuperLink never admitted
        yield deployment


def test_unregistered_site_key_is_refused(federation: LocalDeployment) -> None:
    # --cold: plain flower-supernode, so that command line meets a real SuperLink too
    rogue = deploy.supernode_argv(
        federation.site_configs["site-a"], runtime_port=deploy.free_port(), warm=False
    )
    key = rogue.index("--auth-supernode-private-key") + 1
    rogue[key] = str(federation.pki_dir / "sites" / "rogue.key")

    with relay(federation.port) as port:  # from another host: the Fleet API answers it
        rogue[rogue.index("--superlink") + 1] = f"127.0.0.1:{port}"
        process = federation.start_process("rogue", rogue)
        process.wait(timeout=90)

    assert process.returncode != 0
    assert "Failed to activate SuperNode" in federation.log("rogue")
    assert "No SuperNode found with the given public key" in federation.log("superlink")
    assert "refused POST /v1/fleet" not in federation.log("superlink")
    assert len(_nodes(federation)) == len(SITES)


def _https_post(port: int, path: str, cafile: Path) -> int:
    """The HTTP status of an empty POST to ``path`` over TLS verified with ``cafile``."""
    context = ssl.create_default_context(cafile=str(cafile))
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_only_the_operator_administers_the_federation(federation: LocalDeployment) -> None:
    rogue_key = federation.pki_dir / "sites" / "rogue.pub"
    ca = federation.pki_dir / "ca.pem"
    with relay(federation.port) as port:
        # an attacker with only the public ca.pem, from another host: the flwr CLI ...
        deploy.write_connection(
            "attacker", f"127.0.0.1:{port}", pki_dir=ca.parent, home=federation.home
        )
        register = subprocess.run(
            [deploy.flower_executable("flwr"), "supernode", "register", str(rogue_key), "attacker"],
            env=federation.env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        # ... and the routes behind flwr run / stop / ls and a ServerApp's Runtime API
        refused = {
            path: _https_post(port, path, ca)
            for path in ("/v1/control/start-run", "/v1/control/stop-run", "/v1/runtime/get-nodes")
        }

    assert register.returncode != 0
    output = register.stdout + register.stderr
    assert "fedlora: the SuperLink's Control and Runtime APIs" in output, output
    assert set(refused.values()) == {403}, refused
    log = federation.log("superlink")
    assert re.search(r"refused POST /v1/control/register-node from 127\.0\.0\.2:\d+", log)
    assert re.search(r"refused POST /v1/control/start-run from 127\.0\.0\.2:\d+", log)
    # nothing reached Flower's RegisterNode but the operator's registration of the sites; the
    # roster binds each node id it created to its site (as the site's own node reports it)
    created = {int(node_id) for node_id in re.findall(r"Created node_id=(\d+)", log)}
    roster = read_roster(federation.roster)
    assert len(created) == len(SITES) and set(roster) == created
    for name in SITES:
        [node_id] = re.findall(r"SuperNode ID: (\d+)", federation.log(name))[:1]
        assert roster[int(node_id)] == name
    # and the ServerApp's processes (Flower's SuperExec starts them) are told where it is
    assert f"{ROSTER_ENV}={federation.roster}" in _superexec_environment(federation)


def _superexec_environment(federation: LocalDeployment) -> list[str]:
    """The environment of the SuperLink's ``flower-superexec`` (it starts the ServerApps)."""
    proc = Path("/proc")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if not any(arg.endswith("flower-superexec") for arg in args[:2]):
                continue
            parent = args[args.index("--parent-pid") + 1]
            parent_args = (proc / parent / "cmdline").read_bytes().decode(errors="replace")
            if str(federation.pki_dir) in parent_args:
                return (entry / "environ").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError, IndexError):
            continue
    raise AssertionError("no flower-superexec of this SuperLink found")


def test_supernode_without_root_certificates_cannot_connect(federation: LocalDeployment) -> None:
    argv = deploy.supernode_argv(federation.site_configs["site-a"], runtime_port=deploy.free_port())
    at = argv.index("--root-certificates")
    del argv[at : at + 2]

    process = federation.start_process("no-root-cert", argv)
    process.wait(timeout=90)

    assert process.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in federation.log("no-root-cert")


def test_tls_verifies_only_with_the_federation_ca_and_right_name(
    federation: LocalDeployment,
) -> None:
    assert _tls_handshake(federation.port, federation.pki_dir / "ca.pem").startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError, match="local issuer"):
        _tls_handshake(federation.port, None)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _tls_handshake(federation.port, federation.pki_dir / "ca.pem", hostname="wrong.example")


def _plaintext_status(port: int) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/control/list-nodes", data=b"{}", method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_plaintext_is_refused_by_the_tls_superlink(federation: LocalDeployment) -> None:
    # The same request gets an HTTP answer from an --insecure SuperLink: the check can fail.
    port = deploy.free_port()
    insecure = federation.start_process(
        "insecure-superlink", deploy.superlink_argv(federation.pki_dir, port=port, insecure=True)
    )
    try:
        wait_for(
            lambda: "Uvicorn running" in federation.log("insecure-superlink"),
            60,
            "the insecure SuperLink",
        )
        assert _plaintext_status(port) >= 200
    finally:
        os.killpg(insecure.pid, signal.SIGTERM)

    with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
        _plaintext_status(federation.port)


def test_flwr_run_trains_both_sites_with_dp(federation: LocalDeployment) -> None:
    out = federation.root / "server-runs"
    # submit() raises LoopbackError with the end of flwr run's log when it exits non-zero.
    submitted = federation.submit(
        {
            "rounds": 2,
            "sites": 2,
            "model": "tiny-llama",
            "task": "sft",
            "examples-per-site": 24,
            "noise-multiplier": 1.0,
            "accountant": "rdp",
            "max-length": 48,
            "batch-size": 8,
        },
        out=out,
        timeout=RUN_TIMEOUT,
    )

    [run_dir] = [path for path in out.iterdir() if path.is_dir() and not path.name.startswith(".")]
    assert run_dir == submitted
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    final = run_dir / "adapters" / "final"
    assert (final / "adapter_model.safetensors").exists()
    from peft import PeftModel

    from fedlora.models import load_base_model

    model = PeftModel.from_pretrained(load_base_model("tiny-llama", task="sft").model, final)
    assert any("lora_" in name for name, _ in model.named_parameters())

    for name, site in federation.site_configs.items():
        ledger = read_ledger(site.ledger_dir / LEDGER_FILE)
        assert ledger.site == name
        assert [entry.round for entry in ledger.entries] == [1, 2]
        assert ledger.entries[-1].noise_multiplier == 1.0

    # each site ran every message in its one warm worker, a thread of the node's process
    for name in SITES:
        log = federation.log(name)
        assert "warm worker ready: in the SuperNode's process, woken by its node" in log
        assert ", woken by the node" in log  # a task's creation woke the waiting worker
        assert "runtime/pull-task-input" not in log  # no loopback HTTP between node and worker
        # round-0 evaluation, 2 trains (round 2's carries round 1's evaluation), last evaluation
        assert log.count(": completed in ") == 4
        # the SuperLink held its empty pulls (its default: 1 s); a node answered at once
        # (Flower's SuperLink) pulls again within its 0.2 s poll interval
        assert _held_pulls(log) >= 3, "no pull of this node was held by the SuperLink"
    assert "empty pulls held up to 1.00 s" in federation.log("superlink")

    fetched = federation.root / "operator-runs"
    assert fedlora_main(["deploy", "fetch", "--run-dir", str(run_dir), "--to", str(fetched)]) == 0
    copy = fetched / run_dir.name
    assert (copy / "adapters" / "final" / "adapter_model.safetensors").exists()
    report = json.loads((copy / "report" / "privacy_report.json").read_text())
    assert report["dp"] is True and report["state"] == "complete"
    assert set(report["ledgers"]) == set(SITES)

    # the operator measures the fetched run on held-out data a site shared for it
    held_out = federation.sites["site-a"].test_file
    assert held_out is not None
    assert (
        fedlora_main(["evaluate", str(copy), "--data", str(held_out), "--max-new-tokens", "4"]) == 0
    )
    evaluation = json.loads((copy / "evaluation.json").read_text())
    assert [row["adapter"] for row in evaluation["adapters"]] == [
        "initial",
        "round-001",
        "round-002",
        "final",
    ]
    assert all(row["num-examples"] == 8 and row["loss"] > 0 for row in evaluation["adapters"])
    assert fedlora_main(["generate", str(copy), "How are you?", "--max-new-tokens", "4"]) == 0


# After the run above: these runs add to the sites' ledgers.


def test_deploy_submit_follows_the_run_from_any_folder(
    federation: LocalDeployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(federation.home))
    monkeypatch.chdir(tmp_path)  # the operator's own folder: no checkout, no --app
    out = federation.root / "submitted-runs"
    run_config = (
        "rounds=1 sites=2 model='tiny-llama' task='sft' examples-per-site=24 "
        f"noise-multiplier=1.0 accountant='rdp' max-length=48 batch-size=8 out='{out}'"
    )

    code = fedlora_main(
        ["deploy", "submit", "--connection", CONNECTION, "--run-config", run_config]
    )

    shown = capsys.readouterr().out
    assert code == 0, shown
    [run_dir] = [path for path in out.iterdir() if path.is_dir()]
    [flower_run] = re.findall(r"^Flower run (\d+) started$", shown, re.MULTILINE)
    assert re.search(
        # DP sites report no training loss (it is computed on their private data)
        r"^round 1/1: 2 of 2 sites trained, 0 declined, 0 failed; "
        r"eval loss \d+\.\d{4}; ε site-a [\d.]+ of 50, site-b [\d.]+ of 50$",
        shown,
        re.MULTILINE,
    ), shown
    assert shown.splitlines()[-2:] == [
        f"run directory: {run_dir} (on the SuperLink host)",
        f"next: fedlora deploy fetch --run-dir {run_dir} --to runs",
    ]
    assert (
        "Runtime.AcquireTask" not in shown and "INFO :" not in shown
    )  # Flower's, unless --verbose
    config = json.loads((run_dir / "config.json").read_text())
    assert config["flower-run-id"] == int(flower_run)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"


def test_submit_with_more_sites_than_nodes_fails_in_one_line(
    federation: LocalDeployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(federation.home))
    monkeypatch.chdir(tmp_path)
    run_config = f"rounds=1 sites=3 node-wait-timeout=3.0 out='{federation.root / 'too-many'}'"

    code = fedlora_main(
        ["deploy", "submit", "--connection", CONNECTION, "--run-config", run_config]
    )

    shown = capsys.readouterr().out
    assert code == 2, shown
    assert "fedlora: error: only 2 of 3 sites connected within 3 s" in shown.splitlines()
    assert "Traceback" not in shown and "next: fedlora deploy fetch" not in shown


def test_deploy_sites_names_each_node_and_whether_it_is_online(
    federation: LocalDeployment, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(federation.home))

    code = fedlora_main(
        ["deploy", "sites", "--pki", str(federation.pki_dir), "--connection", CONNECTION]
    )

    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert code == 0
    roster = read_roster(federation.roster)
    assert {(row[0], int(row[1]), row[2]) for row in rows} == {
        (site, node_id, "online") for node_id, site in roster.items()
    }
