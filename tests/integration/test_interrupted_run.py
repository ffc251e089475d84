"""An interrupted ``fedlora simulate`` is marked incomplete with the signal, and resumes.

Issue 17, item 8: a run stopped with SIGTERM stayed ``"running"`` in its ``status.json``.
"""

from __future__ import annotations

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
TINY = [
    "--engine", "inprocess", "--sites", "2", "--examples-per-site", "24", "--max-length", "48",
    "--batch-size", "8", "--noise-multiplier", "5.0", "--accountant", "rdp", "--quiet",
]  # fmt: skip


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedlora.cli.main", "simulate", *args]


def _rounds(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["round"] for line in lines]


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def _interrupt_after_round_1(run_dir: Path, signum: signal.Signals) -> tuple[int, str]:
    """Start a 4-round run, send ``signum`` once round 1 is checkpointed; exit code, stderr."""
    argv = _cli(*TINY, "--rounds", "4", "--out", str(run_dir.parent), "--run-id", run_dir.name)
    process = subprocess.Popen(
        argv, cwd=ROOT, env=os.environ.copy(), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, "the run ended before round 1 was checkpointed"
            assert time.monotonic() < deadline, "round 1 never finished"
            # Round 1's checkpoint (written after its metrics line): resumable from here.
            if (run_dir / "checkpoint" / "checkpoint.json").is_file():
                break
            time.sleep(0.02)
        assert _status(run_dir)["state"] == "running"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    return process.returncode, stderr


@pytest.mark.parametrize(
    ("signum", "code", "resume"),
    [(signal.SIGTERM, 143, True), (signal.SIGINT, 130, False)],
    ids=["sigterm-then-resume", "sigint"],
)
def test_a_signal_marks_the_run_incomplete_and_resume_completes_it(
    tmp_path: Path, signum: signal.Signals, code: int, resume: bool
) -> None:
    run_dir = tmp_path / "runs" / "run"

    returncode, stderr = _interrupt_after_round_1(run_dir, signum)

    assert returncode == code, stderr[-2000:]
    status = _status(run_dir)
    assert status["state"] == "incomplete"
    assert f"stopped by {signum.name}" in status["reason"]
    last = stderr.strip().splitlines()[-1]
    assert last == (
        f"fedlora: stopped by {signum.name}; run directory {run_dir} is marked incomplete; "
        f"continue it with: fedlora simulate --resume {run_dir}"
    )
    assert "Traceback" not in stderr
    if not resume:
        return

    resumed = subprocess.run(
        _cli("--resume", str(run_dir), "--engine", "inprocess", "--quiet"),
        cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip

    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _status(run_dir)["state"] == "complete"
    assert _rounds(run_dir) == [0, 1, 2, 3, 4]
