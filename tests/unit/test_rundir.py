import json
from pathlib import Path

import pytest

from fedlora.config import RunConfig
from fedlora.errors import FedloraError, RunDirError
from fedlora.server.federation import run_federation
from fedlora.server.rundir import RunDirectory


class _EmptyGrid:
    """A grid on which no site ever connects."""

    def get_node_ids(self):
        return []


def test_new_run_is_marked_running(tmp_path: Path):
    run_dir = RunDirectory.create(tmp_path, "r1")
    assert run_dir.state() == "running"


def test_existing_run_directory_is_refused(tmp_path: Path):
    RunDirectory.create(tmp_path, "r1")
    with pytest.raises(RunDirError, match="already exists"):
        RunDirectory.create(tmp_path, "r1")


def test_missing_status_counts_as_incomplete(tmp_path: Path):
    (tmp_path / "r1").mkdir()
    assert RunDirectory(tmp_path / "r1").state() == "incomplete"


def test_aborted_run_is_marked_incomplete_with_the_reason(tmp_path: Path):
    config = RunConfig(sites=2, node_wait_timeout=0.3)

    with pytest.raises(FedloraError, match="only 0 of 2 sites connected"):
        run_federation(_EmptyGrid(), config, out=tmp_path, run_id="aborted")

    run_dir = RunDirectory(tmp_path / "aborted")
    status = json.loads((run_dir.path / "status.json").read_text())
    assert run_dir.state() == "incomplete"
    assert "only 0 of 2 sites connected" in status["reason"]
    assert not run_dir.adapter_path(None).exists()
    assert json.loads(run_dir.config_path.read_text())["base-fingerprint"].startswith("sha256:")


def test_unloadable_model_leaves_no_run_directory(tmp_path: Path):
    with pytest.raises(FedloraError):
        run_federation(
            _EmptyGrid(), RunConfig(model="tiny-mamba", sites=1), out=tmp_path, run_id="never"
        )
    assert not (tmp_path / "never").exists()


def test_a_rounds_line_is_replaced_once_its_evaluation_arrives(tmp_path: Path):
    run = RunDirectory.create(tmp_path, "run")
    run.append_metrics({"round": 0, "eval": {"loss": 2.0}})
    run.append_metrics({"round": 1, "eval": None})

    run.replace_last_metrics({"round": 1, "eval": {"loss": 1.5}})

    assert run.read_metrics() == [
        {"round": 0, "eval": {"loss": 2.0}},
        {"round": 1, "eval": {"loss": 1.5}},
    ]


def test_replacing_another_rounds_line_is_refused(tmp_path: Path):
    run = RunDirectory.create(tmp_path, "run")
    run.append_metrics({"round": 1, "eval": None})

    with pytest.raises(RunDirError, match="not round 2's"):
        run.replace_last_metrics({"round": 2, "eval": {"loss": 1.5}})
    assert run.read_metrics() == [{"round": 1, "eval": None}]
