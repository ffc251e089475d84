"""The loopback deployment's parts that need no Flower: its App folder and its process group."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fedlora.deploy.flwr_cli import flower_app_dir
from fedlora.deploy.processes import LoopbackError, ProcessGroup
from fedlora.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_the_default_flower_app_is_this_checkout() -> None:
    assert flower_app_dir() == ROOT


def test_a_folder_without_a_flower_app_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a Flower App"):
        flower_app_dir(tmp_path)


def test_a_process_that_fails_is_reported_with_the_end_of_its_log(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path)
    argv = _python("print('bad run config'); raise SystemExit(3)")

    with pytest.raises(LoopbackError, match=r"flwr run exited with 3(.|\n)*bad run config"):
        group.run_to_end("run", argv, env=os.environ, cwd=None, timeout=60, what="flwr run")


def test_a_process_that_overruns_is_killed(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path)

    with pytest.raises(LoopbackError, match="flwr run did not end within 0s"):
        group.run_to_end(
            "run",
            _python("import time; time.sleep(60)"),
            env=os.environ,
            cwd=None,
            timeout=0.3,
            what="flwr run",
        )


def test_a_restarted_process_counts_once_its_log_shows_the_marker_anew(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path)
    group.run_to_end(
        "node",
        _python("print('SuperNode ID: 1')"),
        env=os.environ,
        cwd=None,
        timeout=60,
        what="node",
    )
    argv = _python("print('SuperNode ID: 2', flush=True); import time; time.sleep(60)")

    process = group.restart_until(
        "node",
        lambda: group.start("node", argv, env=os.environ),
        "SuperNode ID:",
        timeout=60,
        what="site node",
    )

    assert process.poll() is None
    assert group.log("node").count("SuperNode ID:") == 2
    group.stop(tmp_path)
    assert process.poll() is not None
