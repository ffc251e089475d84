"""A deployed site's node is killed mid-run and restarted: the round goes on, the ledger stays."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from fedlora.deploy.loopback import LocalDeployment, SiteData, wait_for
from fedlora.privacy.ledger import read_ledger
from fedlora.privacy.ledger_storage import LEDGER_FILE
from fedlora.testing import write_sft_file

pytestmark = [pytest.mark.deployment, pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[2]
# Enough rounds that some remain once the SuperLink admits the restarted node: it refuses it
# until two heartbeat intervals pass without one (here 10 s, Flower's shortest; 30 s by
# default), and the rounds without it take under a second each on 2 cores since the accounting
# became fast (the round the kill falls in waits those 20 s for Flower to report the node
# unavailable). 20 rounds once failed to outlast the restart; 40 leave it some 25 s.
ROUNDS = 40
HEARTBEAT_S = 10.0


def _entries(deployment: LocalDeployment, site: str) -> list[tuple[str, int]]:
    path = deployment.site_configs[site].ledger_dir / LEDGER_FILE
    if not path.exists():
        return []
    return [(entry.run_id, entry.round) for entry in read_ledger(path).entries]


def test_a_killed_site_rejoins_with_its_ledger_intact(tmp_path: Path, record_fault) -> None:
    data = tmp_path / "data"
    sites = {
        name: SiteData(
            write_sft_file(data / f"{name}.jsonl", name, 24),
            write_sft_file(data / f"{name}.test.jsonl", name, 8),
            cpu_threads=1,
            heartbeat_interval=HEARTBEAT_S,
        )
        for name in ("site-a", "site-b")
    }
    with LocalDeployment(tmp_path / "deployment", sites, app_dir=ROOT, connection="crash") as dep:
        submitted: dict[str, Path] = {}
        run = {
            "rounds": ROUNDS, "sites": 2, "model": "tiny-llama", "task": "sft",
            "noise-multiplier": 1.0, "accountant": "rdp", "max-length": 48, "batch-size": 8,
            "min-fit": 1, "round-timeout": 30.0,
        }  # fmt: skip
        worker = threading.Thread(
            target=lambda: submitted.setdefault("run", dep.submit(run, timeout=600))
        )
        worker.start()

        # Kill site-a once round 1 is recorded (both sites in it): it dies in round 1's
        # evaluation or round 2, never leaving a round without any update.
        def round_one_done_or_failed() -> bool:
            records = list((dep.root / "server-runs").glob("run-*/*/metrics.jsonl"))
            done = any('"round": 1' in path.read_text() for path in records)
            return done or not worker.is_alive()

        wait_for(round_one_done_or_failed, 300, "round 1 to finish")
        assert worker.is_alive(), f"flwr run ended early: {dep.log('flwr-run-1')[-1500:]}"
        before = _entries(dep, "site-a")
        dep.kill_site("site-a")
        dep.restart_site("site-a")  # retried until the SuperLink lets it back in
        worker.join(timeout=600)
        assert not worker.is_alive() and "run" in submitted

    run_dir = submitted["run"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(ROUNDS + 1))
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    missed = [r["round"] for r in records if any(e["site"] != "site-b" for e in r["errors"])]
    assert missed, "the killed site's missing reply was not recorded"
    after = _entries(dep, "site-a")
    assert after[: len(before)] == before  # nothing lost from its ledger
    assert len(after) > len(before) and after[-1][1] == ROUNDS  # it rejoined and trained
    assert records[-1]["train"]["num-sites"] == 2
    lost = sum(1 for entry in before if entry not in after)
    record_fault("deployed site's node SIGKILLed mid-run, restarted", True, 0, lost)
