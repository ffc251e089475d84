"""The app also runs under Flower's own tooling: ``flwr run .`` with a local simulation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _pids_using(flwr_home: Path) -> list[int]:
    """Processes whose command line names this test's FLWR_HOME (the detached SuperLink)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(flwr_home) in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


def _stop(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def test_flwr_run_local_simulation(tmp_path):
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    out = tmp_path / "runs"
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [
        str(Path(sys.executable).parent / "flwr"),
        "run",
        str(ROOT),
        "local",
        "--federation-config",
        "num-supernodes=2",
        "--run-config",
        f"rounds=1 sites=2 examples-per-site=30 batch-size=8 out='{out}'",
        "--stream",
    ]
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=400, stdin=subprocess.DEVNULL
        )
    finally:
        _stop(_pids_using(flwr_home))

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [run_dir] = list(out.glob("2*"))
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [0, 1]
    assert len(metrics[1]["sites"]) == 2
    assert (run_dir / "adapters" / "final" / "adapter_model.safetensors").exists()
    # DP is on by default under flwr run too, and the ServerApp writes the privacy report
    assert set(metrics[1]["privacy"]) == set(metrics[1]["sites"])
    report = json.loads((run_dir / "report" / "privacy_report.json").read_text())
    assert report["dp"] is True and report["state"] == "complete"
