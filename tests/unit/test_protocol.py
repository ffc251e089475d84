"""The message contract: one record per message, evaluations carried by train replies."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Message

from fedlora import protocol
from fedlora.adapters import pack_adapter, unpack_adapter
from fedlora.config import RunConfig
from fedlora.errors import AdapterError
from fedlora.protocol import (
    ADAPTER,
    SITE,
    make_instruction,
    make_reply,
    make_status_reply,
    read_instruction,
    read_privacy,
    read_status,
    reply_adapter,
    reply_evaluation,
    reply_metrics,
    reply_site,
)


@pytest.fixture(autouse=True)
def _identity(flower_identity: None) -> None:
    """Every test here builds Messages."""


def _adapter() -> bytes:
    return pack_adapter({"lora_A": torch.ones(2, 4), "lora_B": torch.zeros(4, 2)})


@pytest.mark.parametrize("evaluate", [True, False])
def test_an_instruction_says_whether_to_evaluate_the_received_adapter(evaluate: bool) -> None:
    content = make_instruction(
        _adapter(),
        RunConfig(),
        server_round=4,
        base_fingerprint="sha256:ab",
        run_id="run",
        evaluate_received=evaluate,
    )

    instruction = read_instruction(Message(content=content, dst_node_id=1, message_type="train"))

    assert instruction.evaluate_received is evaluate
    assert instruction.server_round == 4


def test_an_instruction_without_the_flag_asks_for_no_evaluation() -> None:
    content = make_instruction(
        _adapter(), RunConfig(), server_round=1, base_fingerprint="sha256:ab", run_id="run"
    )
    del content.config_records["round"]["evaluate-received"]  # an older coordinator

    message = Message(content=content, dst_node_id=1, message_type="train")

    assert read_instruction(message).evaluate_received is False


def test_a_train_reply_carries_the_evaluation_beside_its_own_metrics() -> None:
    content = make_reply(
        "site-a",
        {"num-examples": 24.0, "steps": 3.0},
        _adapter(),
        evaluation={"loss": 2.5, "num-examples": 8.0},
    )

    reply = Message(content=content, dst_node_id=1, message_type="train")

    assert reply_metrics(reply) == {"num-examples": 24.0, "steps": 3.0}
    assert reply_evaluation(reply) == {"loss": 2.5, "num-examples": 8.0}


def test_a_reply_that_was_not_asked_carries_no_evaluation() -> None:
    reply = Message(
        content=make_reply("site-a", {"num-examples": 24.0}, _adapter()),
        dst_node_id=1,
        message_type="train",
    )

    assert reply_evaluation(reply) is None


def test_a_decline_carries_the_evaluation_it_was_asked_for() -> None:
    content = make_status_reply(
        "site-a", "budget-exhausted", {"epsilon-next": 11.0}, {"loss": 2.0, "num-examples": 8.0}
    )

    reply = Message(content=content, dst_node_id=1, message_type="train")

    assert read_status(reply) == {"status": "budget-exhausted", "epsilon-next": 11.0}
    assert reply_evaluation(reply) == {"loss": 2.0, "num-examples": 8.0}


def test_an_evaluation_without_its_example_count_is_refused() -> None:
    content = make_reply("site-a", {"num-examples": 24.0}, evaluation={"loss": 8.0})
    reply = Message(content=content, dst_node_id=1, message_type="train")

    with pytest.raises(AdapterError, match="evaluation has no num-examples"):
        reply_evaluation(reply)


def test_an_instruction_and_a_dp_train_reply_are_one_record_each() -> None:
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    instruction = make_instruction(
        _adapter(), RunConfig(), server_round=1, base_fingerprint="sha256:ab", run_id="run"
    )
    reply = make_reply(
        "site-a", {"num-examples": 24.0}, _adapter(), {"epsilon": 1.0}, {"num-examples": 8.0}
    )

    # Flower moves each object as one request per hop: the record dict and its one record
    assert len(get_all_nested_objects(instruction)) == 2
    assert len(get_all_nested_objects(reply)) == 2


def test_the_adapter_and_the_scalars_travel_unchanged() -> None:
    state = {"lora_A": torch.randn(2, 4), "lora_B": torch.randn(4, 2).to(torch.bfloat16)}
    instruction = read_instruction(
        Message(
            content=make_instruction(
                pack_adapter(state), RunConfig(), server_round=2, base_fingerprint="f", run_id="r"
            ),
            dst_node_id=1,
            message_type="train",
        )
    )
    metrics = {"num-examples": 24.0, "loss": 0.1 + 0.2, "accuracy": 1 / 3}
    reply = Message(
        content=make_reply("site-a", metrics, pack_adapter(state), {"epsilon": 1.25}),
        dst_node_id=1,
        message_type="train",
    )

    received = unpack_adapter(instruction.adapter)
    assert all(
        torch.equal(received[n], t) and received[n].dtype == t.dtype for n, t in state.items()
    )
    assert reply_metrics(reply) == metrics  # floats exactly, through JSON
    assert reply_adapter(reply) == pack_adapter(state)
    assert read_privacy(reply) == {"epsilon": 1.25}
    assert reply_site(reply) == "site-a"


def test_an_adapter_larger_than_a_flower_chunk_travels_as_its_own_array_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    packed = _adapter()
    monkeypatch.setattr(protocol, "INLINE_ADAPTER_MAX_BYTES", len(packed) - 1)

    instruction = make_instruction(
        packed, RunConfig(), server_round=1, base_fingerprint="f", run_id="r"
    )
    reply = make_reply("site-a", {"num-examples": 1.0}, packed)

    assert ADAPTER in instruction.array_records and ADAPTER in reply.array_records
    assert ADAPTER not in reply.config_records[SITE]
    assert (
        read_instruction(Message(instruction, dst_node_id=1, message_type="train")).adapter
        == packed
    )
    assert reply_adapter(Message(reply, dst_node_id=1, message_type="train")) == packed


def test_a_decline_and_an_evaluate_reply_carry_no_adapter() -> None:
    decline = make_status_reply("site-a", "budget-exhausted", {})
    evaluation = make_reply("site-a", {"num-examples": 8.0, "loss": 2.0})

    for content in (decline, evaluation):
        assert reply_adapter(Message(content, dst_node_id=1, message_type="train")) is None


@pytest.mark.parametrize(
    ("break_it", "error"),
    [
        (lambda c: c.config_records["round"].pop(ADAPTER), "carries no adapter"),
        (lambda c: c.config_records["round"].__setitem__(ADAPTER, "text"), "not bytes"),
        (lambda c: c.config_records.pop("round"), "no 'round' record"),
        (lambda c: c.config_records["round"].__setitem__("run-config", "{"), "run config"),
    ],
)
def test_an_instruction_not_from_a_fedlora_coordinator_is_refused(break_it, error: str) -> None:
    content = make_instruction(
        _adapter(), RunConfig(), server_round=1, base_fingerprint="f", run_id="r"
    )
    break_it(content)

    with pytest.raises(AdapterError, match=error):
        read_instruction(Message(content, dst_node_id=1, message_type="train"))


def test_a_reply_without_a_site_name_is_refused() -> None:
    content = make_reply("site-a", {"num-examples": 1.0})
    del content.config_records[SITE]["name"]

    with pytest.raises(AdapterError, match="no site name"):
        reply_site(Message(content, dst_node_id=1, message_type="train"))


def _through_flower(message: Message) -> Message:
    """``message`` encoded object by object as Flower moves it, and decoded again."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(message).items()}
    decoded = inflate_object_from_contents(message.object_id, contents)
    assert isinstance(decoded, Message)
    return decoded


@pytest.mark.parametrize("inline_limit", [protocol.INLINE_ADAPTER_MAX_BYTES, 0])
def test_both_adapter_forms_survive_flowers_encoding(
    monkeypatch: pytest.MonkeyPatch, inline_limit: int
) -> None:
    monkeypatch.setattr(protocol, "INLINE_ADAPTER_MAX_BYTES", inline_limit)
    packed = _adapter()
    instruction = Message(
        make_instruction(packed, RunConfig(), server_round=3, base_fingerprint="f", run_id="r"),
        dst_node_id=1,
        message_type="train",
    )
    reply = Message(
        make_reply("site-a", {"num-examples": 2.0}, packed), dst_node_id=1, message_type="train"
    )

    assert read_instruction(_through_flower(instruction)).adapter == packed
    assert reply_adapter(_through_flower(reply)) == packed
    assert reply_metrics(_through_flower(reply)) == {"num-examples": 2.0}
