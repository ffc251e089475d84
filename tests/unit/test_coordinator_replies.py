"""The coordinator against bad sites (issue 14): malformed replies, impostors, bad weights,
absurd updates and aggregates. Fast: scripted sites on the in-process grid, no training.

Each scripted site replies as a fedlora site would, sending the global adapter moved by a small
``delta``; a test breaks one site's reply and checks that the run goes on without it, that the
reason is logged and recorded, and that nothing it sent reached the aggregate.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Message, RecordDict
from safetensors.torch import load_file

from fedlora.adapters import pack_adapter, unpack_adapter
from fedlora.config import RunConfig
from fedlora.protocol import SITE, make_reply, read_instruction
from fedlora.server.federation import Federation, run_federation
from fedlora.server.rundir import RunDirectory
from fedlora.server.site_binding import SiteBinding
from fedlora.simulations.inprocess_grid import InProcessGrid
from fedlora.strategies.validation import AggregateRejectedError
from tests.integration.helpers import CoordinatorCrash, read_metrics

SITES = 3
NODES = [1001, 1002, 1003]  # InProcessGrid's node ids
HONEST_EXAMPLES = 24

Tamper = Callable[[Message, Context, RecordDict], None]


@pytest.fixture(autouse=True)
def _identity(flower_identity: None) -> None:
    """The coordinator builds Messages."""


def _config(tmp_path: Path, **overrides: Any) -> RunConfig:
    settings: dict[str, Any] = {
        "sites": SITES, "rounds": 1, "dp": False, "max_length": 32, "out": str(tmp_path),
    }  # fmt: skip
    return RunConfig(**{**settings, **overrides})


def _site(context: Context) -> str:
    return f"site-{context.node_config['partition-id']}"


def scripted_sites(
    tamper: dict[int, Tamper] | None = None,
    *,
    deltas: dict[int, float] | None = None,
    name: Callable[[Message, Context], str] = lambda _m, context: _site(context),
) -> Callable[[Message, Context], Message]:
    """Sites that reply at once: the received adapter plus ``deltas[node]`` (default 0.01).

    Every reply carries the node id as a metric and in its privacy record, so a test can tell
    whose reply was filed where. ``tamper[node]`` changes that node's train reply content.
    """

    def app(message: Message, context: Context) -> Message:
        instruction = read_instruction(message)
        site = name(message, context)
        node = context.node_id
        evaluation = {"num-examples": 6.0, "loss": 1.0, "node": float(node)}
        if message.metadata.message_type == "evaluate":
            return Message(make_reply(site, evaluation), reply_to=message)
        delta = (deltas or {}).get(node, 0.01)
        state = {k: v + delta for k, v in unpack_adapter(instruction.adapter).items()}
        metrics = {"num-examples": float(HONEST_EXAMPLES), "node": float(node)}
        privacy = {"site": site, "records": HONEST_EXAMPLES, "epsilon": 1.0, "node": node}
        carried = evaluation if instruction.evaluate_received else None
        content = make_reply(site, metrics, pack_adapter(state), privacy, carried)
        if tamper and node in tamper:
            tamper[node](message, context, content)
        return Message(content, reply_to=message)

    return app


def _set(key: str, value: Any) -> Tamper:
    def change(_message: Message, _context: Context, content: RecordDict) -> None:
        content.config_records[SITE][key] = value

    return change


def _detail_not_json(_message: Message, _context: Context, content: RecordDict) -> None:
    content.config_records[SITE]["status"] = "budget-exhausted"
    content.config_records[SITE]["status-detail"] = "{"


def _run(tmp_path: Path, app, config: RunConfig | None = None, **kwargs: Any) -> Path:
    config = config or _config(tmp_path)
    run_federation(InProcessGrid(app, SITES), config, out=tmp_path, run_id="run", **kwargs)
    return tmp_path / "run"


def _state(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "status.json").read_text())


def _adapter(run_dir: Path, which: str = "final") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapters" / which / "adapter_model.safetensors"))


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a))


# Finding 2: each of these nine replies from one site ended the whole run ``incomplete``.
NINE_BAD_REPLIES = {
    "num-examples NaN": _set("metrics", json.dumps({"num-examples": float("nan")})),
    "num-examples Inf": _set("metrics", json.dumps({"num-examples": float("inf")})),
    "num-examples -1e5": _set("metrics", json.dumps({"num-examples": -1e5})),
    "num-examples a string": _set("metrics", json.dumps({"num-examples": "24"})),
    "num-examples missing": _set("metrics", json.dumps({"steps": 3})),
    "metrics not JSON": _set("metrics", "{not json"),
    "privacy not JSON": _set("privacy", "{not json"),
    "status detail not JSON": _detail_not_json,
    "privacy a list": _set("privacy", "[1, 2]"),
}


@pytest.mark.parametrize("case", NINE_BAD_REPLIES, ids=list(NINE_BAD_REPLIES))
def test_a_bad_reply_drops_its_site_from_the_round_and_the_run_goes_on(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = scripted_sites({1003: NINE_BAD_REPLIES[case]})

    with caplog.at_level(logging.WARNING, logger="fedlora.server.federation"):
        run_dir = _run(tmp_path, app)

    assert _state(run_dir)["state"] == "complete"
    record = read_metrics(run_dir)[1]
    assert record["train"]["num-sites"] == 2 and "site-2" not in record["privacy"]
    assert "train" not in record["sites"]["site-2"] and "site-2" not in record["refused"]
    [error] = [e for e in record["errors"] if e["site"] == "site-2"]
    assert error["phase"] == "train" and error["reason"].startswith("reply rejected: ")
    assert any("site-2 (node 1003): reply rejected" in m for m in caplog.messages)


def test_an_impostor_cannot_replace_another_sites_update_or_privacy(tmp_path: Path) -> None:
    """Node 1003 is site-2 in round 0, then declares site-0: refused, site-0's reply kept."""

    def name(message: Message, context: Context) -> str:
        impostor = context.node_id == 1003 and message.metadata.message_type == "train"
        return "site-0" if impostor else _site(context)

    run_dir = _run(tmp_path, scripted_sites(deltas={1003: 0.5}, name=name))

    record = read_metrics(run_dir)[1]
    assert record["sites"]["site-0"]["train"]["node"] == 1001
    assert record["privacy"]["site-0"]["node"] == 1001
    assert record["train"]["num-sites"] == 2
    [error] = [e for e in record["errors"] if e["site"] == "site-2"]
    assert "node 1003 speaks for site 'site-2' but declares 'site-0'" in error["reason"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["site-nodes"] == {"1001": "site-0", "1002": "site-1", "1003": "site-2"}


def test_a_second_node_cannot_take_a_bound_name_from_the_start(tmp_path: Path) -> None:
    def name(_message: Message, context: Context) -> str:
        return "site-0" if context.node_id == 1003 else _site(context)

    run_dir = _run(tmp_path, scripted_sites(name=name))

    records = read_metrics(run_dir)
    assert _state(run_dir)["state"] == "complete"
    for record in records:
        assert record["sites"]["site-0"].get("train", {"node": 1001})["node"] == 1001
        reasons = [e["reason"] for e in record["errors"] if e["site"] == "node-1003"]
        assert reasons and "which node 1001 speaks for" in reasons[0]


def test_with_a_roster_a_node_speaks_only_for_its_enrolled_site(tmp_path: Path) -> None:
    roster = {1001: "site-0", 1002: "site-1", 1003: "mercy-general"}

    run_dir = _run(tmp_path, scripted_sites(), roster=roster)

    record = read_metrics(run_dir)[1]
    assert set(record["privacy"]) == {"site-0", "site-1"}
    [error] = [
        e for e in record["errors"] if e["site"] == "mercy-general" and e["phase"] == "train"
    ]
    assert "speaks for site 'mercy-general' but declares 'site-2'" in error["reason"]


def test_a_resumed_run_keeps_the_binding_of_its_nodes(tmp_path: Path) -> None:
    """After the resume node 1001 (site-0) declares site-2 first: refused, not bound anew."""
    config = _config(tmp_path, rounds=2)
    honest = scripted_sites()

    def crashing(message: Message, context: Context) -> Message:
        if message.metadata.group_id == "2":
            raise CoordinatorCrash
        return honest(message, context)

    with pytest.raises(CoordinatorCrash):
        _run(tmp_path, crashing, config)

    def name(message: Message, context: Context) -> str:
        return "site-2" if context.node_id == 1001 else _site(context)

    _run(tmp_path, scripted_sites(name=name), config, resume=True)

    record = read_metrics(tmp_path / "run")[2]
    assert record["sites"]["site-2"]["train"]["node"] == 1003
    [error] = [e for e in record["errors"] if e["site"] == "site-0" and e["phase"] == "train"]
    assert "node 1001 speaks for site 'site-0' but declares 'site-2'" in error["reason"]


def test_the_binding_restores_only_connected_nodes() -> None:
    binding = SiteBinding()
    binding.restore({"1": "a", "2": "b"}, [1, 3])

    assert binding.names == {1: "a"}
    assert binding.bind(3, "b") is True  # node 2 is gone (a simulation's fresh node ids)
    with pytest.raises(ValueError, match="node 4 declares site 'a', which node 1 speaks for"):
        binding.bind(4, "a")


def test_a_roster_that_enrols_a_site_twice_is_refused() -> None:
    with pytest.raises(ValueError, match=r"enrols \['a'\] for more than one node"):
        SiteBinding({1: "a", 2: "a"})


def test_a_negative_example_count_cannot_carry_the_aggregate_past_the_bound(
    tmp_path: Path,
) -> None:
    """Finding 6: -32 examples against 2 x 24 weighted the honest sites 1.5 and itself -2."""
    bound = 5.0
    numel = 0

    def moved(message: Message, context: Context, content: RecordDict) -> None:
        nonlocal numel
        state = unpack_adapter(read_instruction(message).adapter)
        numel = sum(t.numel() for t in state.values())
        step = -0.98 * bound / math.sqrt(numel)  # just inside the bound, against the others
        attack = {k: v + step for k, v in state.items()}
        record = content.config_records[SITE]
        record["adapter"] = pack_adapter(attack)
        record["metrics"] = json.dumps({"num-examples": -32.0})
        record["privacy"] = json.dumps({"site": "site-2", "records": 24})

    config = _config(tmp_path, update_norm_bound=bound)
    app = scripted_sites({1003: moved}, deltas={1001: 0.02, 1002: 0.02})  # norm about 1.2
    run_dir = _run(tmp_path, app, config)

    start = _initial_adapter(tmp_path, config)
    assert _distance(_adapter(run_dir), start) <= bound
    record = read_metrics(run_dir)[1]
    [error] = [e for e in record["errors"] if e["site"] == "site-2"]
    assert "num-examples must be a positive integer, got -32" in error["reason"]


def _initial_adapter(tmp_path: Path, config: RunConfig) -> dict[str, torch.Tensor]:
    """The adapter the run started from (round 0 evaluated it; the seed fixes it)."""
    federation = Federation(InProcessGrid(scripted_sites(), SITES), config)
    return {k: v.clone() for k, v in federation.global_state.items()}


def test_an_absurd_finite_update_is_refused_by_default(tmp_path: Path) -> None:
    """Finding 7: without update-norm-bound, a 3e38 value was accepted into the adapter."""

    def absurd(message: Message, _context: Context, content: RecordDict) -> None:
        state = unpack_adapter(read_instruction(message).adapter)
        name = sorted(state)[0]
        state[name] = state[name].clone()
        state[name].view(-1)[0] = 3e38
        content.config_records[SITE]["adapter"] = pack_adapter(state)

    run_dir = _run(tmp_path, scripted_sites({1003: absurd}))

    assert _state(run_dir)["state"] == "complete"
    assert max(float(t.abs().max()) for t in _adapter(run_dir).values()) < 10
    record = read_metrics(run_dir)[1]
    assert "exceeds the built-in limit" in record["rejected"]["site-2"]


def test_an_aggregate_beyond_the_limit_is_not_saved_and_the_round_fails(tmp_path: Path) -> None:
    config = _config(tmp_path)
    federation = Federation(InProcessGrid(scripted_sites(), SITES), config)
    inner = federation.strategy.aggregate
    federation.strategy.aggregate = lambda g, u: {  # type: ignore[method-assign]
        k: v * 1e6 + 1 for k, v in inner(g, u).items()
    }

    with pytest.raises(AggregateRejectedError, match="round 1: aggregate rejected, nothing saved"):
        federation.start(RunDirectory.create(tmp_path, "run"))

    run_dir = tmp_path / "run"
    assert not (run_dir / "adapters" / "round-001").exists()
    assert not (run_dir / "adapters" / "final").exists()
    assert _state(run_dir)["state"] == "incomplete"
    record = read_metrics(run_dir)[1]
    [error] = [e for e in record["errors"] if e["phase"] == "aggregate"]
    assert "more than the built-in limit" in error["reason"]
    assert set(record["privacy"]) == {"site-0", "site-1", "site-2"}  # the spend stays recorded
