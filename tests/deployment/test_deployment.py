"""A real deployment on 127.0.0.1: TLS SuperLink, registered SuperNodes, `flwr run`, refusals.

Every process is started in its own session and stopped by its process group in the module
fixture's teardown, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedlora import deploy, pki
from fedlora.cli import main as fedlora_main
from fedlora.ledger import LEDGER_FILE, read_ledger
from fedlora.site_config import SiteConfig, load_site_config

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parents[2]
SITES = ("site-a", "site-b")
CONNECTION = "fed"
RUN_TIMEOUT = 360


@dataclass
class Processes:
    """Processes this test started, each the leader of its own session."""

    env: dict[str, str]
    logs: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        process = subprocess.Popen(
            argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.started.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self, marker: Path) -> None:
        groups = [process.pid for process in self.started]
        for pgid in groups:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for pgid in groups:
            _signal_group(pgid, signal.SIGKILL)
        for process in self.started:
            if process.poll() is None:
                process.wait(timeout=10)
        # Whatever Flower detached from our process groups but still names our tmp folder
        # (e.g. a SuperLink that `flwr` spawned): stop it by PID too.
        for pid in _pids_naming(marker):
            _signal_pid(pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _pids_naming(marker: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(marker) in cmdline:
            pids.append(int(entry.name))
    return pids


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _tls_handshake(port: int, cafile: Path | None, hostname: str = "127.0.0.1") -> str:
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        return str(tls.version())


def _write_sft(path: Path, site: str, count: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"prompt": f"Question {index} at {site}?", "response": f"Answer {index} from {site}."}
        for index in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _write_site(folder: Path, name: str, port: int, pki_dir: Path) -> Path:
    """A site.toml with paths relative to its folder, as an operator would write it."""
    _write_sft(folder / "data" / "train.jsonl", name)
    _write_sft(folder / "data" / "test.jsonl", name, count=8)
    config = folder / "site.toml"
    config.write_text(
        f"""[site]
name = "{name}"
train-file = "data/train.jsonl"
test-file = "data/test.jsonl"
device = "cpu"

[privacy]
budget-epsilon = 50.0
ledger-dir = "ledger"

[connection]
superlink = "127.0.0.1:{port}"
root-certificates = "{pki_dir / "ca.pem"}"
auth-private-key = "{pki_dir / "sites" / f"{name}.key"}"
""",
        encoding="utf-8",
    )
    return config


@dataclass
class Federation:
    tmp: Path
    pki: Path
    port: int
    env: dict[str, str]
    processes: Processes
    sites: dict[str, SiteConfig]


def _nodes(federation: Federation) -> list[dict[str, object]]:
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


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    tmp = tmp_path_factory.mktemp("deployment")
    pki_dir = tmp / "pki"
    pki.init_ca(pki_dir)
    pki.issue_server_cert(pki_dir, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    for name in (*SITES, "rogue"):
        pki.create_site_key(pki_dir, name)
    home = tmp / "flwr-home"
    home.mkdir()
    env = deploy.flower_environment({**os.environ, "FLWR_HOME": str(home)})
    logs = tmp / "logs"
    logs.mkdir()
    processes = Processes(env=env, logs=logs)
    port = deploy.free_port()
    try:
        processes.start("superlink", deploy.superlink_argv(pki_dir, port=port))
        _wait_for(
            lambda: _handshake_works(port, pki_dir / "ca.pem"), 60, "the SuperLink to serve TLS"
        )
        deploy.write_connection(CONNECTION, f"127.0.0.1:{port}", pki_dir=pki_dir, home=home)
        for name in SITES:
            result = subprocess.run(
                deploy.register_argv(name, pki_dir, CONNECTION),
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            assert result.returncode == 0, result.stdout + result.stderr
        sites = {
            name: load_site_config(_write_site(tmp / name, name, port, pki_dir)) for name in SITES
        }
        # site-a through the Python API, site-b through the CLI an operator would use.
        processes.start(
            "site-a", deploy.supernode_argv(sites["site-a"], runtime_port=deploy.free_port())
        )
        processes.start(
            "site-b",
            [
                sys.executable,
                "-m",
                "fedlora.cli",
                "deploy",
                "supernode",
                "--site-config",
                str(sites["site-b"].source),
                "--runtime-port",
                str(deploy.free_port()),
            ],
        )
        federation = Federation(tmp, pki_dir, port, env, processes, sites)
        _wait_for(
            lambda: all("SuperNode ID:" in processes.log(name) for name in SITES),
            90,
            "both SuperNodes to activate",
        )
        yield federation
    finally:
        processes.stop_all(tmp)


def _handshake_works(port: int, cafile: Path) -> bool:
    try:
        _tls_handshake(port, cafile)
    except OSError:
        return False
    return True


def test_unregistered_site_key_is_refused(federation: Federation) -> None:
    rogue = deploy.supernode_argv(federation.sites["site-a"], runtime_port=deploy.free_port())
    key = rogue.index("--auth-supernode-private-key") + 1
    rogue[key] = str(federation.pki / "sites" / "rogue.key")

    process = federation.processes.start("rogue", rogue)
    process.wait(timeout=90)

    assert process.returncode != 0
    assert "Failed to activate SuperNode" in federation.processes.log("rogue")
    assert "No SuperNode found with the given public key" in federation.processes.log("superlink")
    assert len(_nodes(federation)) == len(SITES)


def test_supernode_without_root_certificates_cannot_connect(federation: Federation) -> None:
    argv = deploy.supernode_argv(federation.sites["site-a"], runtime_port=deploy.free_port())
    at = argv.index("--root-certificates")
    del argv[at : at + 2]

    process = federation.processes.start("no-root-cert", argv)
    process.wait(timeout=90)

    assert process.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in federation.processes.log("no-root-cert")


def test_tls_verifies_only_with_the_federation_ca_and_right_name(federation: Federation) -> None:
    assert _tls_handshake(federation.port, federation.pki / "ca.pem").startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError, match="local issuer"):
        _tls_handshake(federation.port, None)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _tls_handshake(federation.port, federation.pki / "ca.pem", hostname="wrong.example")


def _plaintext_status(port: int) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/control/list-nodes", data=b"{}", method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_plaintext_is_refused_by_the_tls_superlink(federation: Federation) -> None:
    # The same request gets an HTTP answer from an --insecure SuperLink: the check can fail.
    port = deploy.free_port()
    insecure = federation.processes.start(
        "insecure-superlink", deploy.superlink_argv(federation.pki, port=port, insecure=True)
    )
    try:
        _wait_for(
            lambda: "Uvicorn running" in federation.processes.log("insecure-superlink"),
            60,
            "the insecure SuperLink",
        )
        assert _plaintext_status(port) >= 200
    finally:
        os.killpg(insecure.pid, signal.SIGTERM)

    with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
        _plaintext_status(federation.port)


def test_flwr_run_trains_both_sites_with_dp(federation: Federation) -> None:
    out = federation.tmp / "server-runs"
    run_config = (
        "rounds=2 sites=2 model='tiny-llama' task='sft' examples-per-site=24 "
        f"out='{out}' noise-multiplier=1.0 accountant='rdp' max-length=48 batch-size=8"
    )
    process = federation.processes.start(
        "flwr-run", deploy.submit_argv(CONNECTION, app_dir=ROOT, run_config=run_config)
    )
    process.wait(timeout=RUN_TIMEOUT)
    log = federation.processes.log("flwr-run")
    assert process.returncode == 0, log[-4000:]

    [run_dir] = [path for path in out.iterdir() if path.is_dir() and not path.name.startswith(".")]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    final = run_dir / "adapters" / "final"
    assert (final / "adapter_model.safetensors").exists()
    from peft import PeftModel

    from fedlora.models import load_base_model

    model = PeftModel.from_pretrained(load_base_model("tiny-llama", task="sft").model, final)
    assert any("lora_" in name for name, _ in model.named_parameters())

    for name, site in federation.sites.items():
        ledger = read_ledger(site.ledger_dir / LEDGER_FILE)
        assert ledger.site == name
        assert [entry.round for entry in ledger.entries] == [1, 2]
        assert ledger.entries[-1].noise_multiplier == 1.0

    fetched = federation.tmp / "operator-runs"
    assert fedlora_main(["deploy", "fetch", "--run-dir", str(run_dir), "--to", str(fetched)]) == 0
    copy = fetched / run_dir.name
    assert (copy / "adapters" / "final" / "adapter_model.safetensors").exists()
    report = json.loads((copy / "report" / "privacy_report.json").read_text())
    assert report["dp"] is True and report["state"] == "complete"
    assert set(report["ledgers"]) == set(SITES)
