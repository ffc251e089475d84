"""The ClientApp refuses with a Flower Error reply instead of crashing the node."""

from pathlib import Path

import pytest
import torch
from flwr.app import Context, Message, RecordDict

from fedlora.adapters import adapter_state, pack_adapter, unpack_adapter
from fedlora.clients.app import make_client_app
from fedlora.config import RunConfig
from fedlora.errors import BaseMismatchError, DataError
from fedlora.models import apply_lora, load_base_model
from fedlora.protocol import (
    make_instruction,
    read_instruction,
    reply_adapter,
    reply_metrics,
    reply_site,
)
from fedlora.sites import SiteSpec
from tests.conftest import write_jsonl


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sites keep ledgers under the default ``runs/``: keep them out of the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _identity(flower_identity: None) -> None:
    """Every test here builds Messages."""


def _instruction(config: RunConfig, fingerprint: str, message_type: str) -> Message:
    adapter = pack_adapter(
        adapter_state(apply_lora(load_base_model(config.model, task=config.task), config))
    )
    content = make_instruction(
        adapter, config, server_round=1, base_fingerprint=fingerprint, run_id="test-run"
    )
    return Message(content=content, dst_node_id=1, message_type=message_type)


def _context() -> Context:
    return Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 1},
        state=RecordDict(),
        run_config={},
    )


def test_base_fingerprint_mismatch_is_refused_with_both_fingerprints(tmp_path: Path):
    config = RunConfig(max_length=64, sites=1)
    data = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "response": "a"}] * 4)
    app = make_client_app(lambda _context, _config: SiteSpec("a", data))
    local = load_base_model("tiny-llama", task="sft", max_length=64).fingerprint

    for message_type in ("train", "evaluate"):
        reply = app(_instruction(config, "sha256:0000", message_type), _context())

        assert reply.has_error()
        assert reply.error.code == BaseMismatchError.error_code
        assert "coordinator has sha256:0000" in reply.error.reason
        assert f"this node has {local}" in reply.error.reason


def test_bad_site_data_is_refused_with_file_and_line(tmp_path: Path):
    config = RunConfig(max_length=64, sites=1)
    bad = tmp_path / "a.jsonl"
    bad.write_text('{"prompt": "q"}\n')
    app = make_client_app(lambda _context, _config: SiteSpec("a", bad))
    fingerprint = load_base_model("tiny-llama", task="sft", max_length=64).fingerprint

    reply = app(_instruction(config, fingerprint, "train"), _context())

    assert reply.error.code == DataError.error_code
    assert "a.jsonl:1: missing field 'response'" in reply.error.reason


def test_matching_base_trains_and_replies_with_an_update(tmp_path: Path):
    config = RunConfig(max_length=64, sites=1, batch_size=2)
    data = write_jsonl(
        tmp_path / "a.jsonl", [{"prompt": f"q{i}", "response": "answer"} for i in range(6)]
    )
    app = make_client_app(lambda _context, _config: SiteSpec("site-a", data))
    fingerprint = load_base_model("tiny-llama", task="sft", max_length=64).fingerprint
    message = _instruction(config, fingerprint, "train")

    reply = app(message, _context())

    assert not reply.has_error()
    assert reply_site(reply) == "site-a"
    assert reply_metrics(reply)["num-examples"] == 5  # one of six held out
    sent = unpack_adapter(read_instruction(message).adapter)
    returned = unpack_adapter(reply_adapter(reply) or b"")
    assert sorted(returned) == sorted(sent)
    assert any(not torch.equal(returned[k], sent[k]) for k in sent), "training changed nothing"


def test_node_config_device_is_checked_and_overrides_the_run_config(tmp_path: Path):
    config = RunConfig(max_length=64, sites=1, dp=False)  # run config device: auto
    data = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "response": "a"}] * 4)
    app = make_client_app(lambda _context, _config: SiteSpec("a", data))
    fingerprint = load_base_model("tiny-llama", task="sft", max_length=64).fingerprint
    context = _context()
    context.node_config["device"] = "tpu"

    reply = app(_instruction(config, fingerprint, "evaluate"), context)

    assert reply.has_error()
    assert "node config device must be auto, cpu or cuda, got 'tpu'" in reply.error.reason


def test_node_config_device_wins_over_the_run_config(tmp_path: Path):
    config = RunConfig(max_length=64, sites=1, dp=False, device="cuda")
    data = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "response": "a"}] * 4)
    app = make_client_app(lambda _context, _config: SiteSpec("a", data))
    fingerprint = load_base_model("tiny-llama", task="sft", max_length=64).fingerprint
    context = _context()
    context.node_config["device"] = "cpu"  # this site has no GPU, whatever the run asks

    reply = app(_instruction(config, fingerprint, "evaluate"), context)

    assert not reply.has_error(), reply.error.reason
    assert reply_metrics(reply)["num-examples"] > 0
