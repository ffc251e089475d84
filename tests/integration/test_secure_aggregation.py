"""Secure aggregation in the round loop: same adapter as in clear, dropouts, abandonment.

The federations run on the in-process engine (the real ServerApp round loop and ClientApp,
the sites one after another), without DP so that a run with and without secure aggregation
train on the same numbers: their adapters then differ only by the quantisation.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from flwr.app import Error, Message
from safetensors.torch import load_file

from fedlora.config import RunConfig
from fedlora.errors import FedloraError
from fedlora.privacy.server_ledger import read_server_ledger
from fedlora.protocol import ADAPTER, SITE
from fedlora.report.build import build_report, write_report
from fedlora.secagg import Quantiser
from fedlora.secure_messages import MESSAGE_TYPE, read_stage
from fedlora.server.federation import run_federation
from fedlora.simulations.inprocess_grid import InProcessGrid
from fedlora.simulations.materialize import resolve_config
from tests.integration.helpers import read_metrics, scenario_client_app

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, **overrides: object) -> RunConfig:
    settings: dict[str, object] = {
        "model": "tiny-llama",
        "task": "sft",
        "sites": 4,
        "rounds": 2,
        "examples_per_site": 24,
        "alpha": float("inf"),
        "max_length": 48,
        "batch_size": 8,
        "dp": False,
        "device": "cpu",
        "out": str(tmp_path / "runs"),
    }
    return resolve_config(RunConfig(**{**settings, **overrides}))  # type: ignore[arg-type]


def _saved(run_dir: Path, adapter: str) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapters" / adapter / "adapter_model.safetensors"))


def _watching(app, seen: list[tuple[str, bool]], fail: dict[str, set[int]] | None = None):
    """``app``, noting each reply's type and whether it carries an adapter; ``fail``: the
    partitions that answer a secure stage with an error (as a site that drops out)."""

    def run(message: Message, context):
        if message.metadata.message_type == MESSAGE_TYPE:
            stage = read_stage(message)[0]
            if int(context.node_config["partition-id"]) in (fail or {}).get(stage, set()):
                return Message(Error(code=1, reason="site went away"), reply_to=message)
        reply = app(message, context)
        if not reply.has_error():
            record = reply.content.config_records.get(SITE, {})
            carries = ADAPTER in record or ADAPTER in reply.content.array_records
            seen.append((message.metadata.message_type, carries))
        return reply

    return run


@pytest.mark.parametrize("strategy", ["fedavg", "ffa-lora", "fedadam"])
def test_a_secure_run_gives_the_plain_runs_adapter_up_to_quantisation(
    tmp_path: Path, strategy: str
) -> None:
    # FedAdam's step lr·(1-β1)·x / (sqrt(1-β2)·|x| + τ) moves at most lr·(1-β1)/τ per unit
    # change of the mean x: with the default τ = 1e-9 a quantisation error on a coordinate whose
    # mean is ~0 may flip a full step, so "equal up to quantisation" needs a τ that bounds it.
    extra: dict[str, object] = (
        {"server_tau": 1e-3, "server_lr": 0.01} if strategy == "fedadam" else {}
    )
    plain_config = _config(tmp_path / "plain", strategy=strategy, **extra)
    plain = run_federation(
        InProcessGrid(scenario_client_app(plain_config), 4), plain_config,
        out=Path(plain_config.out), run_id="run",
    )  # fmt: skip
    secure_config = _config(
        tmp_path / "secure", strategy=strategy, secure_aggregation=True, **extra
    )
    seen: list[tuple[str, bool]] = []
    grid = InProcessGrid(_watching(scenario_client_app(secure_config), seen), 4)
    secure = run_federation(grid, secure_config, out=Path(secure_config.out), run_id="run")

    # Round 1 starts from the same adapter: its mean is within the quantisation bound (plus
    # the float32 cast); the last round trains on starts that differ by that much.
    bound = Quantiser(secure_config.secure_aggregation_range).error_bound(4, 1.0)
    if strategy == "fedadam":
        assert secure_config.server_lr is not None
        bound *= max(1.0, secure_config.server_lr * (1 - secure_config.server_beta1) / 1e-3)
    for adapter, tolerance in (("round-001", bound), ("final", 2e-5)):
        expected = _saved(plain.run_dir.path, adapter)
        got = _saved(secure.run_dir.path, adapter)
        for name, tensor in expected.items():
            cast = 1.2e-7 * float(tensor.abs().max())
            assert float((tensor - got[name]).abs().max()) <= tolerance + cast, (adapter, name)
    assert any(not torch.equal(expected[n], got[n]) for n in expected)  # it was quantised
    # No train reply and no protocol reply carried an adapter in the secure run.
    assert seen and not any(carries for _, carries in seen)
    assert {kind for kind, _ in seen} == {"train", MESSAGE_TYPE, "evaluate"}
    for record in read_metrics(secure.run_dir.path)[1:]:
        entry = record["secure-aggregation"]
        assert entry["masked"] == 4 and entry["dropped"] == 0 and entry["aggregated"]
        assert entry["protocol-bytes-received"] > 8 * sum(t.numel() for t in got.values()) // 2
        assert entry["protocol-seconds"] >= 0
    assert "secure-aggregation" not in read_metrics(plain.run_dir.path)[1]
    # The privacy report says whether the coordinator saw individual updates.
    assert build_report(plain.run_dir.path)["coordinator-saw-individual-updates"] is True
    assert build_report(secure.run_dir.path)["coordinator-saw-individual-updates"] is False
    markdown = (write_report(secure.run_dir.path) / "report.md").read_text(encoding="utf-8")
    assert "never seen by the coordinator" in markdown


def test_a_site_that_drops_after_sharing_is_recovered(tmp_path: Path) -> None:
    config = _config(tmp_path, rounds=1, secure_aggregation=True, min_fit=3)
    seen: list[tuple[str, bool]] = []
    grid = InProcessGrid(_watching(scenario_client_app(config), seen, {"mask": {2}}), 4)

    federation = run_federation(grid, config, out=Path(config.out), run_id="run")

    record = read_metrics(federation.run_dir.path)[1]
    entry = record["secure-aggregation"]
    assert (entry["masked"], entry["dropped"], entry["recovered"]) == (3, 1, 1)
    assert entry["threshold"] == 3  # a majority of 4
    assert any(e["phase"] == "secagg-mask" for e in record["errors"])


def test_too_few_sites_abandon_the_round_and_nothing_is_aggregated(tmp_path: Path) -> None:
    config = _config(tmp_path, rounds=1, secure_aggregation=True, secure_aggregation_threshold=3)
    grid = InProcessGrid(_watching(scenario_client_app(config), [], {"share": {0, 1}}), 4)

    with pytest.raises(FedloraError, match=r"0 accepted update.*fewer than the secure-aggreg"):
        run_federation(grid, config, out=Path(config.out), run_id="run")

    run_dir = Path(config.out) / "run"
    record = read_metrics(run_dir)[-1]
    assert record["secure-aggregation"]["aggregated"] is False
    assert not (run_dir / "adapters" / "round-001").exists()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "incomplete"


def test_a_secure_run_with_central_dp_is_released_and_recorded_as_the_plain_run(
    tmp_path: Path,
) -> None:
    central = {"central_dp": "fixed", "central_clip_norm": 0.05, "central_noise_multiplier": 1.0}
    plain_config = _config(tmp_path / "plain", **central)
    plain = run_federation(
        InProcessGrid(scenario_client_app(plain_config), 4), plain_config,
        out=Path(plain_config.out), run_id="run",
    )  # fmt: skip
    secure_config = _config(tmp_path / "secure", secure_aggregation=True, **central)
    seen: list[tuple[str, bool]] = []
    grid = InProcessGrid(_watching(scenario_client_app(secure_config), seen), 4)
    secure = run_federation(grid, secure_config, out=Path(secure_config.out), run_id="run")

    # The sites clipped and masked: no reply carried an adapter, every round was a secure sum.
    assert seen and not any(carries for _, carries in seen)
    secure_metrics = read_metrics(secure.run_dir.path)[1:]
    assert [r["secure-aggregation"]["aggregated"] for r in secure_metrics] == [True, True]
    # The same releases in the server ledger, with the same epsilon, round by round.
    ledgers = [
        read_server_ledger(run.run_dir.path / "privacy" / "server-ledger.jsonl").entries
        for run in (plain, secure)
    ]
    assert len(ledgers[1]) == 2
    for in_clear, summed in zip(*ledgers, strict=True):
        assert dataclasses.replace(summed, time="") == dataclasses.replace(in_clear, time="")
        assert summed.updates == 4 and summed.clip_norm == 0.05
    plain_metrics = read_metrics(plain.run_dir.path)[1:]
    for in_clear, summed in zip(plain_metrics, secure_metrics, strict=True):
        assert summed["central-privacy"] == in_clear["central-privacy"]
    # The report: client-level DP released as usual, individual updates never seen.
    report = build_report(secure.run_dir.path)
    assert report["coordinator-saw-individual-updates"] is False
    assert report["central-privacy"]["final"]["epsilon-rdp"] == ledgers[1][-1].epsilon_rdp
    assert "each site clips its own update before masking" in report["guarantee"]["client-level"]
    assert "the sum of the sites' updates as the coordinator sees" in str(
        report["guarantee"]["not-protected"]
    )
    assert "the coordinator clips" in build_report(plain.run_dir.path)["guarantee"]["client-level"]
    markdown = (write_report(secure.run_dir.path) / "report.md").read_text(encoding="utf-8")
    assert "never seen by the coordinator" in markdown
