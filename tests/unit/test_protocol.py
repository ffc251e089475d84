"""The message contract: a train instruction can ask for the received adapter's evaluation."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Message

from fedlora.adapters import to_array_record
from fedlora.config import RunConfig
from fedlora.errors import AdapterError
from fedlora.protocol import (
    EVALUATION,
    make_instruction,
    make_reply,
    make_status_reply,
    read_instruction,
    read_status,
    reply_evaluation,
    reply_metrics,
)


@pytest.fixture(autouse=True)
def _identity(flower_identity: None) -> None:
    """Every test here builds Messages."""


def _adapter():
    return to_array_record({"lora_A": torch.ones(2, 4), "lora_B": torch.zeros(4, 2)})


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
    content = make_reply("site-a", {"num-examples": 24.0}, evaluation={"num-examples": 8.0})
    del content.metric_records[EVALUATION]["num-examples"]
    reply = Message(content=content, dst_node_id=1, message_type="train")

    with pytest.raises(AdapterError, match="evaluation record has no num-examples"):
        reply_evaluation(reply)


def test_an_instruction_and_a_dp_train_reply_are_few_flower_objects() -> None:
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    instruction = make_instruction(
        _adapter(), RunConfig(), server_round=1, base_fingerprint="sha256:ab", run_id="run"
    )
    reply = make_reply(
        "site-a", {"num-examples": 24.0}, _adapter(), {"epsilon": 1.0}, {"num-examples": 8.0}
    )

    # Flower moves each as one request per hop: the record dict, the adapter's record,
    # array and chunk, and one record for the scalars (a reply: site, metrics, evaluation)
    assert len(get_all_nested_objects(instruction)) == 5
    assert len(get_all_nested_objects(reply)) == 7
