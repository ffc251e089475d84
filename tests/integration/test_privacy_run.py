"""DP federations through the real simulation engine: ledgers, the report, the budget guard.

Every ε the report shows is recomputed here from the ledger's (q, σ, steps) with independent
accountants: Google's dp_accounting (RDP at integer orders, PLD) and exact quadrature for
RDP at fractional orders (see tests/accounting_reference.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant
from opacus.accountants import PRVAccountant, RDPAccountant

from fedlora.errors import BudgetExhaustedError
from fedlora.privacy.ledger import read_ledger
from fedlora.privacy.ledger_storage import LEDGER_FILE, default_ledger_root
from fedlora.privacy.server_ledger import read_server_ledger
from fedlora.report.build import write_report
from fedlora.testing import run_tiny_federation
from tests.accounting_reference import (
    ORDERS,
    exact_rdp_epsilon,
    pld_epsilon,
    relative_difference,
)
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _sft_files(tmp_path: Path, sizes: tuple[int, ...]) -> tuple[list[Path], list[Path]]:
    train, test = [], []
    for index, size in enumerate(sizes):
        rows = [
            {"prompt": f"Ward {index}-{i}: beds free?", "response": f"{(i * 7) % 13} beds."}
            for i in range(size + 4)
        ]
        train.append(write_jsonl(tmp_path / f"ward-{index}.jsonl", rows[:size]))
        test.append(write_jsonl(tmp_path / f"ward-{index}-test.jsonl", rows[size:]))
    return train, test


def test_dp_run_report_matches_ledgers_and_independent_accountants(tmp_path: Path):
    run_dir = run_tiny_federation(
        tmp_path / "runs",
        task="sft",
        sites=3,
        rounds=2,
        examples_per_site=40,
        target_epsilon=8.0,
        central_dp="fixed",
    )
    report_dir = write_report(run_dir)
    report = json.loads((report_dir / "privacy_report.json").read_text())

    assert report["dp"] is True and report["state"] == "complete"
    assert len(report["sites"]) == 3
    for name in ("epsilon.png", "utility.png"):
        assert (report_dir / name).read_bytes()[:8] == PNG_MAGIC
    markdown = (report_dir / "report.md").read_text()
    assert "with respect to that site's own records" in markdown
    for site in report["sites"]:
        ledger_info = report["ledgers"][site]
        assert ledger_info["available"] and ledger_info["agrees"], ledger_info
        ledger = read_ledger(Path(report["epsilon-series"][site][0]["ledger"]))
        series = report["epsilon-series"][site]
        assert [e["round"] for e in series] == [1, 2] == [e.round for e in ledger.entries]
        for shown, recorded in zip(series, ledger.entries, strict=True):
            assert shown["epsilon-prv"] == recorded.epsilon_prv
            assert shown["epsilon-rdp"] == recorded.epsilon_rdp
            # the budget binds the run's accountant (PRV); RDP is reported beside it
            assert shown["epsilon"] == shown["epsilon-prv"] <= shown["budget-epsilon"]
        sigma, q, per_round = (
            series[0]["noise-multiplier"],
            series[0]["sample-rate"],
            series[0]["steps"],
        )
        delta = series[0]["delta"]
        for rounds, shown in enumerate(series, start=1):
            assert (shown["noise-multiplier"], shown["sample-rate"]) == (sigma, q)
            steps = per_round * rounds
            assert (
                relative_difference(shown["epsilon-rdp"], exact_rdp_epsilon(q, sigma, steps, delta))
                <= 1e-6
            )
            assert shown["epsilon-prv"] >= 2  # where the 1% PRV-vs-PLD bound holds
            assert (
                relative_difference(shown["epsilon-prv"], pld_epsilon(q, sigma, steps, delta))
                <= 0.01
            )
        # composition: R rounds equal one accountant run over all R·s steps
        prv, rdp = PRVAccountant(), RDPAccountant()
        prv.history = rdp.history = [(sigma, q, per_round * 2)]
        # PRV's FFT convolutions differ in the last bits between processes with different
        # thread counts (the ledger's value was computed in a Ray worker): equal to 1e-12.
        assert series[-1]["epsilon-prv"] == pytest.approx(
            prv.get_epsilon(delta=delta, eps_error=0.01), rel=1e-12
        )
        assert series[-1]["epsilon-rdp"] == rdp.get_epsilon(delta=delta)
        # the calibrated σ reaches the run's target ε (8) by PRV, the default accountant
        assert 8.0 - 0.01 <= series[-1]["run-epsilon-prv"] <= 8.0

    # client-level DP on the aggregate: one Gaussian release per round over all 3 sites
    central = report["central-privacy"]
    assert central["mode"] == "fixed" and len(central["rounds"]) == 2
    server_ledger = read_server_ledger(run_dir / "privacy" / "server-ledger.jsonl")
    assert len(server_ledger.entries) == 2
    last = central["final"]
    assert last["sample-rate"] == 1.0 and last["noise-multiplier"] == 1.0
    # q = 1: the plain Gaussian mechanism, whose RDP dp_accounting computes exactly
    gaussian = RdpAccountant(orders=ORDERS)
    gaussian.compose(dp_accounting.GaussianDpEvent(1.0), 2)
    assert relative_difference(last["epsilon-rdp"], gaussian.get_epsilon(last["delta"])) <= 1e-6
    assert report["guarantee"]["client-level"] is not None


def test_budget_guard_stops_a_run_that_cannot_finish_before_any_site_spends(tmp_path: Path):
    # Issue 14.11: 10 planned rounds exceed every site's budget, so no site starts the run
    # (before, each trained until its budget and the run stopped with an unfinished model).
    sizes, batch, sigma, delta, budget, rounds = (20, 30, 40), 10, 1.0, 1e-4, 6.0, 10
    train, test = _sft_files(tmp_path, sizes)

    with pytest.raises(BudgetExhaustedError) as stopped:
        run_tiny_federation(
            tmp_path / "runs",
            task="sft",
            data_files=train,
            test_files=test,
            rounds=rounds,
            batch_size=batch,
            noise_multiplier=sigma,
            delta=delta,
            accountant="rdp",
            budget_epsilon=budget,
            max_length=48,
        )

    run_dir = stopped.value.run_dir
    assert run_dir is not None
    assert json.loads((run_dir / "status.json").read_text())["state"] == "stopped"
    assert (run_dir / "adapters" / "final" / "adapter_model.safetensors").exists()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1]
    assert records[0]["eval"]["num-sites"] == len(sizes)  # the initial adapter was evaluated
    for index, size in enumerate(sizes):
        site = f"ward-{index}"
        rdp = RDPAccountant()
        rdp.history = [(sigma, batch / size, -(-size // batch) * rounds)]
        refusal = records[1]["refused"][site]
        assert refusal["epsilon-planned"] == pytest.approx(rdp.get_epsilon(delta), rel=1e-12)
        assert refusal["epsilon-planned"] > budget == refusal["budget-left"]
        assert refusal["rounds-planned"] == rounds and "fewer rounds" in refusal["reason"]
        assert site not in records[1].get("privacy", {})
    for path in default_ledger_root().glob(f"*/{LEDGER_FILE}"):
        assert read_ledger(path).entries == []  # nothing was spent

    report = json.loads((write_report(run_dir) / "privacy_report.json").read_text())
    assert report["state"] == "stopped"
    assert {refusal["site"] for refusal in report["refusals"]} == {"ward-0", "ward-1", "ward-2"}
