"""Two SuperNodes started at the same moment on one host: two Runtime API ports, quiet logs.

Each node is the command ``fedlora deploy supernode`` runs (warm, its Runtime API port left to
it), pointed at a SuperLink port nobody listens on: the Runtime API binds at start-up, before
the node connects, which is where two nodes used to take the same port.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from fedlora.deploy import commands as deploy
from fedlora.deploy.host import free_stable_port
from fedlora.deploy.site_config import load_site_config
from fedlora.flower_internals.node_ports import claim_runtime_port

_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


def _site_toml(tmp_path: Path, superlink_port: int) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"prompt": "q", "response": "a"}\n')
    path = tmp_path / "site.toml"
    path.write_text(
        '[site]\nname = "site-a"\ntrain-file = "data/train.jsonl"\ndevice = "cpu"\n'
        '[privacy]\nbudget-epsilon = 8.0\nledger-dir = "ledger"\n'
        f'[connection]\nsuperlink = "127.0.0.1:{superlink_port}"\ninsecure = true\n'
    )
    return path


def _ports(logs: list[Path]) -> list[int]:
    found = [_LISTENING.findall(log.read_text(errors="replace")) for log in logs]
    return [int(ports[0]) for ports in found if ports]


def test_two_supernodes_started_together_take_two_ports(tmp_path: Path) -> None:
    config = load_site_config(_site_toml(tmp_path, deploy.free_port()), allow_insecure=True)
    argv = deploy.supernode_argv(config)  # what fedlora deploy supernode runs: port not given
    # 9094 may be another test's; not an OS-picked port, which any outgoing connection could
    # take before the node binds it
    preferred = free_stable_port(start=20000)
    argv[argv.index("--port") + 1] = str(preferred)
    logs = [tmp_path / f"node-{index}.log" for index in range(2)]
    processes = []
    for log in logs:
        with log.open("wb") as out:
            processes.append(
                subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"},
                    start_new_session=True,
                )
            )
    try:
        deadline = time.monotonic() + 120
        while len(_ports(logs)) < 2 and time.monotonic() < deadline:
            if any(process.poll() is not None for process in processes):
                break
            time.sleep(0.2)
        texts = [log.read_text(errors="replace") for log in logs]
        assert all(process.poll() is None for process in processes), texts
        ports = _ports(logs)
        assert len(ports) == 2 and preferred in ports and len(set(ports)) == 2, texts
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    for text in texts:
        assert "failed to start" not in text and "Traceback" not in text
        # quiet by default: Flower's lines once, no DEBUG lines, no line per request
        assert text.count("Starting Flower SuperNode") == 1, text
        assert " DEBUG " not in text and "HTTP Request" not in text, text
        assert "alembic" not in text, text


def test_a_free_preferred_port_is_kept_and_a_taken_one_replaced() -> None:
    free = deploy.free_port()
    args = ["--superlink", "h:1", "--host", "127.0.0.1", "--port", str(free)]
    assert claim_runtime_port(args, None) == args
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        claimed = claim_runtime_port(["--port", str(port)], None)
    assert claimed[0] == "--port" and int(claimed[1]) != port


def test_a_given_port_that_is_taken_stops_the_node_in_one_line(tmp_path: Path) -> None:
    config = load_site_config(_site_toml(tmp_path, deploy.free_port()), allow_insecure=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = deploy.supernode_argv(config, runtime_port=port)  # --runtime-port N
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )

    assert "--free-runtime-port" not in argv
    assert result.returncode == 2, result.stderr
    refusal = [line for line in result.stderr.splitlines() if line.startswith("fedlora: error:")]
    assert refusal == [
        f"fedlora: error: the SuperNode's Runtime API cannot listen on 127.0.0.1:{port} (taken "
        "by another process?): choose a free port with fedlora deploy supernode --runtime-port N"
    ]
    assert "Traceback" not in result.stderr + result.stdout


def test_a_stable_free_port_lies_below_the_ephemeral_range_and_skips_taken_ones() -> None:
    from fedlora.deploy.host import ephemeral_low

    first = free_stable_port(start=21000)
    assert 21000 <= first < ephemeral_low()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", first))
        assert free_stable_port(start=first) > first
