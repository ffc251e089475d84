"""One message per site and round: a round's train message carries the previous evaluation.

Each site evaluates the adapter it receives before training on it, so the round-r train
message also serves the evaluation of round r-1's adapter; only round 0's adapter and the
last round's are evaluated in exchanges of their own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import Context, Message

from fedlora.protocol import read_instruction
from fedlora.server.federation import run_federation
from fedlora.simulations.inprocess_grid import InProcessGrid
from fedlora.simulations.materialize import resolve_config
from fedlora.testing import write_sft_file
from tests.integration.helpers import (
    CoordinatorCrash,
    crashing_in_round,
    read_metrics,
    reevaluate,
    scenario_client_app,
)

pytestmark = pytest.mark.slow

ROUNDS = 3


def _config(tmp_path: Path, **overrides: object):
    from fedlora.config import RunConfig

    train = [write_sft_file(tmp_path / f"site-{s}.jsonl", f"site-{s}", 16) for s in "ab"]
    test = [write_sft_file(tmp_path / f"site-{s}.test.jsonl", f"site-{s}", 6) for s in "ab"]
    settings: dict[str, object] = {
        "model": "tiny-llama", "task": "sft", "rounds": ROUNDS, "max_length": 48,
        "batch_size": 8, "dp": False, "lr": 0.05, "device": "cpu", "out": str(tmp_path / "runs"),
        "data_files": tuple(map(str, train)), "test_files": tuple(map(str, test)),
    }  # fmt: skip
    return resolve_config(RunConfig(**{**settings, **overrides}))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def folded_run(tmp_path_factory: pytest.TempPathFactory):
    """A 3-round, 2-site run on the in-process engine, with every message each site got."""
    tmp_path = tmp_path_factory.mktemp("folded")
    config = _config(tmp_path)
    app = scenario_client_app(config)
    seen: dict[int, list[tuple[int, str, bool]]] = {}

    def recording(message: Message, context: Context) -> Message:
        instruction = read_instruction(message)
        seen.setdefault(context.node_id, []).append(
            (instruction.server_round, message.metadata.message_type, instruction.evaluate_received)
        )
        return app(message, context)

    federation = run_federation(InProcessGrid(recording, 2), config, out=Path(config.out))
    return federation.run_dir.path, seen


def test_each_site_gets_one_message_per_round_and_one_more_for_the_last_adapter(folded_run):
    _, seen = folded_run

    expected = [
        (0, "evaluate", False),
        (1, "train", False),
        (2, "train", True),
        (3, "train", True),
        (3, "evaluate", False),
    ]
    assert list(seen.values()) == [expected, expected]


def test_every_rounds_evaluation_is_that_of_its_own_adapter(folded_run):
    run_dir, _ = folded_run
    records = read_metrics(run_dir)

    assert [r["round"] for r in records] == list(range(ROUNDS + 1))
    for record in records[1:]:
        assert record["errors"] == []
        local = reevaluate(run_dir, f"round-{record['round']:03d}")
        assert set(local) == set(record["sites"])
        for site, result in local.items():
            assert result["loss"] == pytest.approx(record["sites"][site]["eval"]["loss"], rel=1e-6)


def test_the_adapter_goes_down_once_per_round(folded_run):
    run_dir, _ = folded_run
    records = read_metrics(run_dir)
    (size,) = {s["bytes-sent"] for s in records[0]["sites"].values()}  # the initial evaluation

    assert size > 0
    for record in records[:-1]:
        assert {s["bytes-sent"] for s in record["sites"].values()} == {size}, record["round"]
    # the last round: its train message and the evaluation of its adapter
    assert {s["bytes-sent"] for s in records[-1]["sites"].values()} == {2 * size}


def test_only_separate_evaluations_have_their_own_duration(folded_run):
    run_dir, _ = folded_run
    records = read_metrics(run_dir)

    assert ["eval-duration-s" in r for r in records] == [True, False, False, True]
    assert all(r["duration-s"] > 0 for r in records)


def test_a_resumed_run_first_evaluates_the_adapter_it_resumes_from(tmp_path: Path):
    config = _config(tmp_path)
    app = scenario_client_app(config)

    with pytest.raises(CoordinatorCrash):
        grid = InProcessGrid(crashing_in_round(app, 2), 2)
        run_federation(grid, config, out=Path(config.out), run_id="run")
    run_dir = Path(config.out) / "run"
    owed = read_metrics(run_dir)
    assert [r["round"] for r in owed] == [0, 1] and owed[-1]["eval"] is None

    seen: list[tuple[int, bool]] = []

    def recording(message: Message, context: Context) -> Message:
        instruction = read_instruction(message)
        seen.append((instruction.server_round, instruction.evaluate_received))
        return app(message, context)

    run_federation(
        InProcessGrid(recording, 2), config, out=Path(config.out), run_id="run", resume=True
    )

    assert seen[:2] == [(2, True), (2, True)]  # round 2's train messages evaluate round 1's
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == list(range(ROUNDS + 1))
    assert records[1]["train"] == owed[-1]["train"]  # round 1's line kept, then completed
    local = reevaluate(run_dir, "round-001")
    for site, result in local.items():
        assert result["loss"] == pytest.approx(records[1]["sites"][site]["eval"]["loss"], rel=1e-6)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
