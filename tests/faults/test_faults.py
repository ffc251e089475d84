"""Fault injection: coordinator and site crashes, bad updates, damaged checkpoints, bad disks.

Each test injects faults into real federations (the in-process engine, in a subprocess where a
process must die) and records what survived in the summary table printed at the end
(``tests/faults/conftest.py``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict
from opacus.accountants import RDPAccountant

from fedlora.config import RunConfig
from fedlora.privacy.ledger import read_ledger
from fedlora.privacy.ledger_storage import LEDGER_FILE, default_ledger_root
from fedlora.server.federation import run_federation
from fedlora.simulations.inprocess_grid import InProcessGrid
from fedlora.simulations.materialize import resolve_config, simulated_sites
from tests.integration.helpers import (
    CoordinatorCrash,
    crashing_in_round,
    scenario_client_app,
    tampering_app,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--engine", "inprocess", "--sites", "3", "--examples-per-site", "24", "--max-length", "48",
    "--batch-size", "8", "--noise-multiplier", "1.0", "--accountant", "rdp", "--quiet",
]  # fmt: skip


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedlora.cli.main", "simulate", *args]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600
    )


def _ledgers() -> dict[str, list[tuple[int, float]]]:
    """Each site's ledger as (round, ε RDP) in order."""
    found = {}
    for path in sorted(default_ledger_root().glob(f"*/{LEDGER_FILE}")):
        ledger = read_ledger(path)
        found[ledger.site] = [(entry.round, entry.epsilon_rdp) for entry in ledger.entries]
    return found


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _rounds(run_dir: Path) -> list[int]:
    return [record["round"] for record in _records(run_dir)]


def test_coordinator_killed_in_round_3_resumes_and_loses_nothing(tmp_path, record_fault) -> None:
    out, run_dir = tmp_path / "runs", tmp_path / "runs" / "run"
    argv = _cli(*TINY, "--rounds", "5", "--strategy", "fedadam", "--out", str(out))
    process = subprocess.Popen(
        [*argv, "--run-id", "run"], cwd=ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        # Kill once a site has spent privacy on round 3: the round is cut short mid-way.
        while not any(r == 3 for entries in _ledgers().values() for r, _ in entries):
            assert process.poll() is None, "the run ended before round 3"
            assert time.monotonic() < deadline, "round 3 never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
    assert _rounds(run_dir) == [0, 1, 2]
    before = _ledgers()
    adapters = run_dir / "adapters"
    kept = {n: adapters / n / "adapter_model.safetensors" for n in ("round-001", "round-002")}
    kept_bytes = {n: (p.read_bytes(), p.stat().st_mtime_ns) for n, p in kept.items()}

    resumed = _run(_cli("--resume", str(run_dir), "--engine", "inprocess", "--quiet"))

    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _rounds(run_dir) == [0, 1, 2, 3, 4, 5]  # every round exactly once
    for name, path in kept.items():  # rounds 1-2 were not recomputed
        assert (path.read_bytes(), path.stat().st_mtime_ns) == kept_bytes[name]
    from peft import PeftModel

    from fedlora.models import load_base_model

    model = PeftModel.from_pretrained(
        load_base_model("tiny-llama", task="sft").model, run_dir / "adapters" / "final"
    )
    assert any("lora_" in name for name, _ in model.named_parameters())
    after = _ledgers()
    lost = 0
    for site, entries in after.items():
        lost += sum(1 for entry in before.get(site, []) if entry not in entries)
        assert entries[: len(before[site])] == before[site]  # the history before the kill
        assert {r for r, _ in entries} == {1, 2, 3, 4, 5}
        epsilons = [e for _, e in entries]
        assert epsilons == sorted(epsilons)  # continuous: never reset
        # ε equals the accountant over all the site's steps, the cut round's included
        ledger = read_ledger(next(default_ledger_root().glob(f"{site}-*")) / LEDGER_FILE)
        accountant = RDPAccountant()
        accountant.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in ledger.entries]
        assert accountant.get_epsilon(ledger.entries[-1].delta) == pytest.approx(
            epsilons[-1], rel=1e-9
        )
    report = json.loads((run_dir / "report" / "privacy_report.json").read_text())
    assert report["state"] == "complete"
    record_fault("coordinator SIGKILL mid round 3 of 5, then --resume", True, 0, lost)
    assert lost == 0


def _faulty_app(config: RunConfig, faults: dict[int, str]):
    """Site ``i`` suffers ``faults[i]``: ``crash`` (killed in round 2 after training, its
    memory lost) or a broken update (``nan``, ``shape``, ``huge``)."""
    crashes = {i for i, fault in faults.items() if fault == "crash"}
    app = tampering_app(config, {i: f for i, f in faults.items() if f != "crash"})

    def run(message: Message, context: Context) -> Message:
        reply = app(message, context)
        index = int(context.node_config["partition-id"])
        train = message.metadata.message_type == "train"
        if train and index in crashes and message.metadata.group_id == "2":
            context.state.clear()  # the process died: its memory is gone, its ledger is not
            raise RuntimeError("site process killed")
        return reply

    return run


def _config(tmp_path: Path, **overrides: object) -> RunConfig:
    settings: dict[str, object] = {
        "model": "tiny-llama", "task": "sft", "rounds": 3, "examples_per_site": 24,
        "max_length": 48, "batch_size": 8, "noise_multiplier": 1.0, "accountant": "rdp",
        "device": "cpu", "out": str(tmp_path / "runs"),
    }  # fmt: skip
    return resolve_config(RunConfig(**{**settings, **overrides}))  # type: ignore[arg-type]


def test_a_site_killed_mid_round_rejoins_with_its_ledger(tmp_path, record_fault) -> None:
    config = _config(tmp_path, sites=4, min_fit=3)
    grid = InProcessGrid(_faulty_app(config, {1: "crash"}), 4)

    federation = run_federation(grid, config, out=Path(config.out), run_id="run")

    lines = federation.run_dir.metrics_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    crashed = simulated_sites(config)[1].name
    assert records[2]["train"]["num-sites"] == 3  # round 2 completed with the other three
    assert any(e["site"] == crashed and "killed" in e["reason"] for e in records[2]["errors"])
    assert records[3]["train"]["num-sites"] == 4  # it rejoined in round 3
    rounds = [r for r, _ in _ledgers()[crashed]]
    assert rounds == [1, 2, 3]  # round 2's spend happened before the crash and is kept
    record_fault("one of 4 sites killed mid round 2 (rejoins round 3)", True, 0, 0)


def test_bad_updates_are_rejected_and_the_run_continues(tmp_path, record_fault) -> None:
    faults = {1: "nan", 2: "shape", 3: "huge"}
    config = _config(tmp_path, sites=5, min_fit=2, rounds=2, update_norm_bound=50.0)
    grid = InProcessGrid(_faulty_app(config, faults), 5)

    federation = run_federation(grid, config, out=Path(config.out), run_id="run")

    lines = federation.run_dir.metrics_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    names = [site.name for site in simulated_sites(config)]
    for record in records[1:]:
        reasons = record["rejected"]
        assert "NaN" in reasons[names[1]] and "(3, 3)" in reasons[names[2]]
        assert "exceeds update-norm-bound" in reasons[names[3]]
    assert json.loads((federation.run_dir.path / "status.json").read_text())["state"] == "complete"
    for fault in ("NaN update", "mis-shaped update", "huge-norm update"):
        record_fault(f"a site sends a {fault} (both rounds)", True, 0, 0)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("checkpointed") / "runs"
    result = _in_process(*TINY, "--rounds", "1", "--out", str(out), "--run-id", "run")
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = out / "run"
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "incomplete"}))
    return run_dir


def _copy(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    return to


def _in_process(*args: str) -> subprocess.CompletedProcess[str]:
    """``fedlora simulate ARGS`` in this process (no interpreter start-up), its exit and stderr."""
    from fedlora.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["simulate", *args])
    return subprocess.CompletedProcess(list(args), code, "", err.getvalue())


def _resume(run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _in_process("--resume", str(run_dir), "--engine", "inprocess", "--quiet", *extra)


def _one_error_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("fedlora: error")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]


def test_a_truncated_checkpoint_is_refused(finished_run, tmp_path, record_fault) -> None:
    run_dir = _copy(finished_run, tmp_path / "runs" / "run")
    [state] = (run_dir / "checkpoint").glob("state-r*.safetensors")
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])

    _one_error_line(_resume(run_dir), "does not match its hash")
    record_fault("truncated checkpoint file at resume (refused)", True, 0, 0)


def test_a_checkpoint_from_another_run_is_refused(finished_run, tmp_path, record_fault) -> None:
    run_dir = _copy(finished_run, tmp_path / "runs" / "other-run")

    _one_error_line(_resume(run_dir), "belongs to run 'run', not 'other-run'")
    record_fault("checkpoint copied from another run (refused)", True, 0, 0)


def test_a_resume_with_another_config_names_the_keys(finished_run, tmp_path, record_fault) -> None:
    run_dir = _copy(finished_run, tmp_path / "runs" / "run")

    _one_error_line(_resume(run_dir, "--lr", "0.5"), "lr: 0.01 -> 0.5")
    record_fault("resume with a changed config (refused with the diff)", True, 0, 0)


def test_an_unwritable_output_folder_is_refused_before_training(tmp_path, record_fault) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should go")
    out = blocker / "runs"

    result = _in_process(*TINY, "--rounds", "1", "--out", str(out))

    _one_error_line(result, "cannot create output folder")
    assert not out.exists()
    if os.geteuid() != 0:  # root writes through permission bits
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o500)
        _one_error_line(_in_process(*TINY, "--out", str(readonly)), "is not writable")
    record_fault("unwritable output folder at start (refused)", True, 0, 0)


def test_the_server_app_resumes_the_run_named_in_the_run_config(tmp_path, record_fault) -> None:
    from fedlora.server.app import main as server_main

    config = _config(tmp_path, sites=3, rounds=3)
    app = scenario_client_app(config)

    with pytest.raises(CoordinatorCrash):
        grid = InProcessGrid(crashing_in_round(app, 3), 3)
        run_federation(grid, config, out=Path(config.out), run_id="run")
    run_dir = Path(config.out) / "run"
    assert _rounds(run_dir) == [0, 1, 2]
    assert _records(run_dir)[2]["eval"] is None  # owed: round 3's messages were to carry it
    flat = {**config.to_flat(), "resume": "run"}
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=flat)

    server_main(InProcessGrid(app, 3), context)  # what flwr run --run-config resume=... does

    assert _rounds(run_dir) == [0, 1, 2, 3]
    assert all(record["eval"]["num-sites"] == 3 for record in _records(run_dir))
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    assert (run_dir / "report" / "privacy_report.json").exists()
    record_fault("coordinator dies in round 3; ServerApp resumes (run config)", True, 0, 0)


def test_a_short_round_is_retried_when_configured(tmp_path, record_fault) -> None:
    config = _config(tmp_path, sites=3, rounds=1, min_fit=3, round_retries=1)
    app = scenario_client_app(config)
    crashes = {"left": 1}

    def flaky(message: Message, context: Context) -> Message:
        first_site = context.node_config["partition-id"] == 0
        if message.metadata.message_type == "train" and first_site and crashes["left"]:
            crashes["left"] -= 1
            raise RuntimeError("site process killed")
        return app(message, context)

    federation = run_federation(InProcessGrid(flaky, 3), config, out=Path(config.out), run_id="run")

    [_, record] = [json.loads(x) for x in federation.run_dir.metrics_path.read_text().splitlines()]
    assert record["train"]["num-sites"] == 3  # the retry had all three
    assert any("attempt 1 retried" in e["reason"] for e in record["errors"])
    ledgers = _ledgers()
    # the two sites that trained in the failed attempt spent twice; nothing is forgotten
    assert sorted(len(entries) for entries in ledgers.values()) == [1, 2, 2]
    record_fault("a site crashes in round 1, min-fit 3, round retried once", True, 0, 0)


def test_a_central_dp_run_resumes_with_its_clip_norm_and_server_ledger(
    tmp_path, record_fault, monkeypatch
) -> None:
    import fedlora.server.federation
    from fedlora.privacy.server_ledger import read_server_ledger

    config = _config(
        tmp_path, sites=3, rounds=3, central_dp="adaptive", central_noise_multiplier=0.1
    )
    app = scenario_client_app(config)
    checkpoint = fedlora.server.federation.write_checkpoint

    def crashing(run_dir: Path, *, server_round: int, **kwargs: object) -> None:
        if server_round == 3:
            raise CoordinatorCrash  # round 3 was aggregated (and ledgered), not checkpointed
        checkpoint(run_dir, server_round=server_round, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fedlora.server.federation, "write_checkpoint", crashing)
    with pytest.raises(CoordinatorCrash):
        run_federation(InProcessGrid(app, 3), config, out=Path(config.out), run_id="run")
    monkeypatch.setattr(fedlora.server.federation, "write_checkpoint", checkpoint)
    run_dir = Path(config.out) / "run"
    cut = read_server_ledger(run_dir / "privacy" / "server-ledger.jsonl").entries
    assert [entry.round for entry in cut] == [1, 2, 3]

    run_federation(InProcessGrid(app, 3), config, out=Path(config.out), run_id="run", resume=True)

    entries = read_server_ledger(run_dir / "privacy" / "server-ledger.jsonl").entries
    assert entries[:3] == cut  # nothing dropped: the cut round's release still counts
    # the ledger numbers releases in order: the re-run round 3 is the 4th release
    assert [entry.round for entry in entries] == [1, 2, 3, 4]
    # the re-run round 3 used the clip norm checkpointed after round 2, not the cut round's
    assert entries[3].clip_norm == cut[1].next_clip_norm
    assert _rounds(run_dir) == [0, 1, 2, 3]
    record_fault("central-DP (adaptive) coordinator dies in round 3; resumed", True, 0, 0)
