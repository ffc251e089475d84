"""The site's budget guard and ledger, driven through the real ClientApp train handler.

Expected ε values are computed here with Opacus's RDP accountant directly from (σ, q, steps),
independently of fedlora's ledger and composition code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from flwr.app import Context, Message, RecordDict
from opacus.accountants import RDPAccountant

from fedlora.adapters import adapter_state, pack_adapter, unpack_adapter
from fedlora.clients.app import make_client_app
from fedlora.config import RunConfig
from fedlora.errors import LedgerError
from fedlora.models import apply_lora, load_base_model
from fedlora.privacy.ledger import read_ledger
from fedlora.privacy.ledger_storage import LEDGER_FILE
from fedlora.protocol import (
    BUDGET_EXHAUSTED,
    make_instruction,
    read_privacy,
    read_status,
    reply_adapter,
    reply_metrics,
)
from fedlora.sites import SiteSpec
from tests.conftest import write_jsonl

SIGMA = 1.1
RECORDS = 20
BATCH = 10  # q = 0.5, 2 steps a round
DELTA = 1e-4


@pytest.fixture(autouse=True)
def _identity(flower_identity: None) -> None:
    """Every test here builds Messages."""


def _expected_epsilon(rounds: int) -> float:
    accountant = RDPAccountant()
    accountant.history = [(SIGMA, BATCH / RECORDS, 2 * rounds)]
    return float(accountant.get_epsilon(delta=DELTA))


def _config(tmp_path: Path, budget: float, **changes: object) -> RunConfig:
    return RunConfig(
        sites=1,
        rounds=10,
        batch_size=BATCH,
        max_length=48,
        noise_multiplier=SIGMA,
        delta=DELTA,
        accountant="rdp",
        budget_epsilon=budget,
        out=str(tmp_path / "runs"),
        **changes,  # type: ignore[arg-type]
    )


def _train_message(config: RunConfig, server_round: int, run_id: str = "run-a") -> Message:
    base = load_base_model(config.model, task=config.task, max_length=config.max_length)
    adapter = pack_adapter(adapter_state(apply_lora(base, config)))
    content = make_instruction(
        adapter, config, server_round=server_round, base_fingerprint=base.fingerprint, run_id=run_id
    )
    return Message(content=content, dst_node_id=1, message_type="train")


def _context(node_config: dict[str, object] | None = None) -> Context:
    return Context(
        run_id=1, node_id=1, node_config=node_config or {}, state=RecordDict(), run_config={}
    )


def _site(tmp_path: Path) -> SiteSpec:
    rows = [{"prompt": f"Ward {i} beds?", "response": f"{i * 2} beds."} for i in range(RECORDS)]
    held_out = write_jsonl(tmp_path / "clinic-test.jsonl", rows[:4])
    return SiteSpec("clinic", write_jsonl(tmp_path / "clinic.jsonl", rows), held_out)


def test_guard_refuses_exactly_when_the_next_round_would_exceed_the_budget(tmp_path: Path):
    budget = (_expected_epsilon(3) + _expected_epsilon(4)) / 2
    config = _config(tmp_path, budget).replace(rounds=1)  # one-round runs, one after another
    site = _site(tmp_path)
    app = make_client_app(lambda _context, _config: site)
    node = {"ledger-dir": str(tmp_path / "ledger")}
    context = _context(node)

    outcomes = []
    for run in range(1, 11):
        reply = app(_train_message(config, 1, run_id=f"run-{run}"), context)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        status = read_status(reply)
        outcomes.append("trained" if status is None else status["status"])
        if status is not None:
            assert reply_adapter(reply) is None
            assert status["epsilon-next"] == pytest.approx(_expected_epsilon(4), rel=1e-12)
            assert status["epsilon-next"] > budget >= status["epsilon-spent"]

    assert outcomes == ["trained"] * 3 + [BUDGET_EXHAUSTED] * 7
    ledger = read_ledger(tmp_path / "ledger")
    assert [entry.run_id for entry in ledger.entries] == ["run-1", "run-2", "run-3"]
    for rounds, entry in enumerate(ledger.entries, start=1):
        assert entry.epsilon_rdp == pytest.approx(_expected_epsilon(rounds), rel=1e-12)
        assert entry.epsilon_rdp <= budget


def test_a_budget_equal_to_the_exact_epsilon_is_not_exceeded(tmp_path: Path):
    config = _config(tmp_path, _expected_epsilon(2)).replace(rounds=2)
    site = _site(tmp_path)
    app = make_client_app(lambda _context, _config: site)
    context = _context({"ledger-dir": str(tmp_path / "ledger")})

    messages = [(1, "run-a"), (2, "run-a"), (1, "run-b")]
    statuses = [read_status(app(_train_message(config, r, run), context)) for r, run in messages]

    assert statuses[0] is None and statuses[1] is None
    assert statuses[2] is not None and statuses[2]["status"] == BUDGET_EXHAUSTED


def test_restarted_node_reloads_its_ledger_and_keeps_composing(tmp_path: Path, caplog):
    config = _config(tmp_path, 100.0)
    site = _site(tmp_path)
    app = make_client_app(lambda _context, _config: site)
    node = {"ledger-dir": str(tmp_path / "ledger")}
    first = _context(node)
    for server_round in (1, 2):
        app(_train_message(config, server_round), first)
    kept = first.state.config_records["privacy-ledger"]  # the history between rounds
    assert list(kept["noise-multipliers"]) == [SIGMA, SIGMA]
    assert list(kept["sample-rates"]) == [BATCH / RECORDS] * 2
    assert list(kept["steps"]) == [2, 2]

    restarted = _context(node)  # a new node process: empty in-memory state
    reply = app(_train_message(config, 3), restarted)

    privacy = read_privacy(reply)
    assert privacy is not None
    assert privacy["epsilon-rdp"] == pytest.approx(_expected_epsilon(3), rel=1e-12)
    assert privacy["run-epsilon-rdp"] == pytest.approx(_expected_epsilon(3), rel=1e-12)
    assert [e.round for e in read_ledger(tmp_path / "ledger").entries] == [1, 2, 3]

    # node state that disagrees with the ledger is reported, and the ledger wins
    stale = first  # still remembers the ledger head after round 2
    with caplog.at_level(logging.WARNING):
        reply = app(_train_message(config, 4), stale)
    assert "disagrees with ledger" in caplog.text
    assert read_privacy(reply)["epsilon-rdp"] == pytest.approx(_expected_epsilon(4), rel=1e-12)


def test_a_second_run_on_the_same_data_cannot_reset_the_spend(tmp_path: Path):
    config = _config(tmp_path, 100.0)
    site = _site(tmp_path)
    app = make_client_app(lambda _context, _config: site)
    node = {"ledger-dir": str(tmp_path / "ledger")}
    app(_train_message(config, 1, run_id="run-a"), _context(node))
    app(_train_message(config, 2, run_id="run-a"), _context(node))

    reply = app(_train_message(config, 1, run_id="run-b"), _context(node))

    privacy = read_privacy(reply)
    assert privacy["run-epsilon-rdp"] == pytest.approx(_expected_epsilon(1), rel=1e-12)
    assert privacy["epsilon-rdp"] == pytest.approx(_expected_epsilon(3), rel=1e-12)


def test_node_config_budget_overrides_the_coordinator(tmp_path: Path):
    config = _config(tmp_path, 1000.0).replace(rounds=1)  # a generous budget
    site = _site(tmp_path)
    app = make_client_app(lambda _context, _config: site)
    node = {"ledger-dir": str(tmp_path / "ledger"), "budget-epsilon": _expected_epsilon(1)}

    context = _context(node)
    assert read_status(app(_train_message(config, 1, "run-a"), context)) is None
    refused = read_status(app(_train_message(config, 1, "run-b"), context))
    assert refused["status"] == BUDGET_EXHAUSTED


def test_tampered_ledger_refuses_to_train_naming_the_line(tmp_path: Path):
    config = _config(tmp_path, 100.0)
    site = _site(tmp_path)
    app = make_client_app(lambda _context, _config: site)
    node = {"ledger-dir": str(tmp_path / "ledger")}
    for server_round in (1, 2):
        app(_train_message(config, server_round), _context(node))
    path = tmp_path / "ledger" / LEDGER_FILE
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["noise-multiplier"] = 50.0  # pretend round 1 was far noisier than it was
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")

    reply = app(_train_message(config, 3), _context(node))

    assert reply.has_error()
    assert reply.error.code == LedgerError.error_code
    assert "line 2" in reply.error.reason
    assert len(path.read_text().splitlines()) == 3  # nothing was trained or recorded


def test_changed_data_is_refused_unless_a_new_ledger_is_asked_for(tmp_path: Path):
    config = _config(tmp_path, 100.0)
    site = _site(tmp_path)
    app = make_client_app(lambda _context, _config: site)
    node: dict[str, object] = {"ledger-dir": str(tmp_path / "ledger")}
    app(_train_message(config, 1), _context(node))
    write_jsonl(site.train_file, [{"prompt": "other", "response": "data"}] * RECORDS)

    reply = app(_train_message(config, 2), _context(node))
    assert reply.has_error() and reply.error.code == LedgerError.error_code
    assert "new-ledger" in reply.error.reason

    reply = app(_train_message(config, 2), _context({**node, "new-ledger": True}))
    assert not reply.has_error()
    assert read_privacy(reply)["epsilon-rdp"] == pytest.approx(_expected_epsilon(1), rel=1e-12)
    retired = list((tmp_path / "ledger").glob("privacy-ledger.retired-*.jsonl"))
    assert len(retired) == 1


def test_sigma_zero_is_never_trained_it_has_no_privacy(tmp_path: Path):
    config = _config(tmp_path, 100.0).replace(noise_multiplier=0.0)
    site = _site(tmp_path)
    app = make_client_app(lambda _context, _config: site)

    status = read_status(
        app(_train_message(config, 1), _context({"ledger-dir": str(tmp_path / "l")}))
    )

    assert status is not None and status["status"] == BUDGET_EXHAUSTED


def _deployed_node(tmp_path: Path, **extra: object) -> dict[str, object]:
    site = _site(tmp_path)
    return {
        "train-file": str(site.train_file),
        "test-file": str(site.test_file),
        "site-name": "clinic",
        **extra,
    }


def test_deployed_site_must_keep_its_own_budget_and_ledger(tmp_path: Path):
    app = make_client_app()  # the deployed resolver: files from the node config
    config = _config(tmp_path, 100.0)

    reply = app(_train_message(config, 1), _context(_deployed_node(tmp_path)))

    assert reply.has_error()
    assert "must set budget-epsilon, ledger-dir" in reply.error.reason


def test_deployed_site_ignores_the_coordinators_delta(tmp_path: Path):
    app = make_client_app()
    node = _deployed_node(tmp_path, **{"ledger-dir": str(tmp_path / "l"), "budget-epsilon": 50.0})
    config = _config(tmp_path, 100.0).replace(delta=0.9)  # a huge δ would shrink ε

    privacy = read_privacy(app(_train_message(config, 1), _context(node)))

    assert privacy is not None
    assert privacy["delta"] == 0.1 / (RECORDS)
    assert privacy["budget-epsilon"] == 50.0


def test_deployed_site_refuses_a_run_without_dp_unless_it_allows_one(tmp_path: Path):
    app = make_client_app()
    node = _deployed_node(tmp_path, **{"ledger-dir": str(tmp_path / "l"), "budget-epsilon": 5.0})
    config = _config(tmp_path, 100.0).replace(dp=False)

    refused = app(_train_message(config, 1), _context(node))
    allowed = app(_train_message(config, 1), _context({**node, "allow-no-dp": True}))

    assert refused.has_error() and "trains only with differential privacy" in refused.error.reason
    assert not allowed.has_error() and reply_adapter(allowed) is not None


def test_dp_reply_carries_no_training_loss_and_unreplayable_noise(tmp_path: Path):
    config = _config(tmp_path, 100.0)
    site = _site(tmp_path)
    app = make_client_app(lambda _context, _config: site)
    replies = [
        app(_train_message(config, 1), _context({"ledger-dir": str(tmp_path / f"l{i}")}))
        for i in range(2)
    ]

    for reply in replies:
        assert "train-loss" not in reply_metrics(reply)
    first, second = (unpack_adapter(reply_adapter(r) or b"") for r in replies)
    # the same instruction, data and run config: only fresh OS entropy makes them differ
    assert first.keys() == second.keys()
    assert any(not torch.equal(first[name], second[name]) for name in first)


def test_calibrated_noise_is_kept_in_node_state_between_rounds(tmp_path: Path, monkeypatch):
    import fedlora.clients.site_privacy

    config = _config(tmp_path, 100.0).replace(noise_multiplier=None, target_epsilon=6.0)
    site = _site(tmp_path)
    app = make_client_app(lambda _context, _config: site)
    context = _context({"ledger-dir": str(tmp_path / "ledger")})
    first = read_privacy(app(_train_message(config, 1), context))

    def no_recalibration(*_args: object) -> float:
        raise AssertionError("calibrated again although the node state holds the result")

    monkeypatch.setattr(fedlora.clients.site_privacy, "_calibrated", no_recalibration)
    second = read_privacy(app(_train_message(config, 2), context))

    assert first is not None and second is not None
    assert second["noise-multiplier"] == first["noise-multiplier"]
    assert second["run-epsilon-rdp"] <= 6.0  # the target over all 10 planned rounds
