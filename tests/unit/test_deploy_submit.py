"""``fedlora deploy submit``: the installed app from any folder, the run followed round by round."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from fedlora.cli.main import main as fedlora_main
from fedlora.deploy import submit
from fedlora.deploy.run_lines import round_line
from fedlora.server.app import record_flower_run
from fedlora.server.rundir import RunDirectory

RECORD = {
    "round": 2,
    "sites": {},
    "train": {"num-examples": 48, "num-sites": 2, "train-loss": 2.30114},
    "eval": {"num-examples": 16, "num-sites": 2, "loss": 2.10327},
    "errors": [{"site": "site-c", "phase": "train", "reason": "no reply within 30 s"}],
    "privacy": {
        "site-a": {"epsilon": 1.2345, "budget-epsilon": 50.0},
        "site-b": {"epsilon": 0.98765, "budget-epsilon": 8.0},
    },
    "refused": {"site-d": {"status": "budget-exhausted"}},
}


def test_a_round_is_one_line_with_sites_losses_and_epsilon_per_site():
    assert round_line(RECORD, rounds=3, sites=4) == (
        "round 2/3: 2 of 4 sites trained, 1 declined, 1 failed; train loss 2.3011; "
        "eval loss 2.1033; ε site-a 1.23 of 50, site-b 0.988 of 8; declined: site-d; "
        "failed: site-c"
    )
    before = {"round": 0, "eval": {"loss": 2.5}, "privacy": {}, "errors": []}
    assert round_line(before, rounds=3, sites=2) == "round 0 (before training): eval loss 2.5000"


def test_the_installed_app_is_a_flower_app_the_warm_nodes_accept(tmp_path, monkeypatch):
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.config_utils import load_and_validate
    from flwr.supercore.fab import Fab

    from fedlora.flower_internals.node_worker import check_fab

    monkeypatch.chdir(tmp_path)  # no checkout here: the app comes from the installed package
    with submit.installed_app() as folder:
        config, warnings = load_and_validate(folder / "pyproject.toml")
        fab = build_fab_from_disk(folder)
    assert config is not None, warnings
    assert config["tool"]["flwr"]["app"]["components"]["serverapp"] == "fedlora.server.app:app"
    check_fab(Fab(hash_str="0" * 64, content=fab, verifications={}))  # raises if foreign
    assert not folder.exists()


FAKE_FLWR = textwrap.dedent(
    """
    import sys, pathlib
    app = pathlib.Path(sys.argv[sys.argv.index("run") + 1])
    assert "[tool.flwr.app]" in (app / "pyproject.toml").read_text()
    print("Loading project configuration...")
    print("Successfully started run 7351")
    print("INFO :      Starting logstream for run_id `7351`")
    print("fedlora: run directory: /srv/runs/20260101-000000-abc123")
    print("fedlora: 2 sites connected; 1 rounds")
    print("DEBUG :     Runtime.AcquireTask")
    print("fedlora: round 1/1: 2 of 2 sites trained, 0 declined, 0 failed")
    """
)


def _fake_flwr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, last: str) -> None:
    script = tmp_path / "flwr.py"
    script.write_text(FAKE_FLWR + f"print({last!r})\n")

    def argv(connection, *, app_dir, run_config=None):
        return [sys.executable, str(script), "run", str(app_dir), connection]

    monkeypatch.setattr(submit, "submit_argv", argv)


def test_submit_from_any_folder_shows_rounds_run_directory_and_the_next_command(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    _fake_flwr(tmp_path, monkeypatch, "fedlora: run complete: /srv/runs/20260101-000000-abc123")

    code = fedlora_main(["deploy", "submit", "--connection", "fed", "--run-config", "rounds=1"])

    shown = capsys.readouterr().out.splitlines()
    assert code == 0
    assert shown[1:] == [
        "Flower run 7351 started",
        "run directory: /srv/runs/20260101-000000-abc123",
        "2 sites connected; 1 rounds",
        "round 1/1: 2 of 2 sites trained, 0 declined, 0 failed",
        "run complete: /srv/runs/20260101-000000-abc123",
        "run directory: /srv/runs/20260101-000000-abc123 (on the SuperLink host)",
        "next: fedlora deploy fetch --run-dir /srv/runs/20260101-000000-abc123 --to runs",
    ]


@pytest.mark.parametrize(
    ("last", "code"),
    [
        ("fedlora: error: only 2 of 3 sites connected within 3 s", 2),
        ("fedlora: run stopped: every site declined", 2),
        ("ServerApp finished", 1),  # the stream ended without fedlora's end: not a success
    ],
)
def test_submit_exits_non_zero_unless_the_run_completed(tmp_path, monkeypatch, capsys, last, code):
    _fake_flwr(tmp_path, monkeypatch, last)

    assert fedlora_main(["deploy", "submit", "--connection", "fed"]) == code
    out = capsys.readouterr().out
    assert (last in out) == (not last.startswith("fedlora: run stopped"))
    # a run that ended without fedlora's word shows what Flower printed (a traceback)
    assert ("Runtime.AcquireTask" in out) == (code == 1)


def test_the_flower_run_id_is_recorded_in_config_json(tmp_path):
    run_dir = RunDirectory.create(tmp_path, "run")
    run_dir.write_config({"run-id": "run", "config": {}})

    record_flower_run(run_dir.path, 7351)
    record_flower_run(run_dir.path, 9001)  # a resume: the latest and every one

    saved = json.loads((run_dir.path / "config.json").read_text())
    assert saved["flower-run-id"] == 9001 and saved["flower-run-ids"] == [7351, 9001]
    assert saved["config"] == {}


def test_the_serverapp_names_the_run_directory_once_the_sites_are_connected():
    from fedlora.deploy.run_lines import RoundLines

    lines: list[str] = []
    firsts: list[int] = []
    observer = RoundLines(
        lines.append, run_dir="/srv/runs/r1", on_first_record=lambda: firsts.append(1)
    )
    observer.on_start(rounds=3, sites=4)
    observer.on_round_end(RECORD)
    observer.on_round_end(RECORD)

    assert lines[:2] == ["run directory: /srv/runs/r1", "4 sites connected; 3 rounds"]
    assert lines[2].startswith("round 2/3: 2 of 4 sites trained") and firsts == [1]


def test_a_run_id_that_cannot_be_recorded_warns_and_the_run_goes_on(tmp_path, caplog):
    from fedlora.server.app import _note_flower_run

    _note_flower_run(tmp_path / "missing", 7351)  # no config.json: no exception

    assert "could not record Flower's run id 7351" in caplog.text
