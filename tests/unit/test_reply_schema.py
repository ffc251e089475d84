"""The reply schema: every field of a site's reply is checked once, on arrival."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from fedlora.adapters import pack_adapter, packed_array_record, unpack_adapter
from fedlora.protocol import ADAPTER, SITE, make_reply, make_status_reply
from fedlora.replies import MAX_JSON_CHARS, ReplyRejectedError, parse_reply

PRIVACY = {"site": "site-a", "records": 24, "epsilon": 1.5, "epsilon-rdp": None, "steps": 3}


@pytest.fixture(autouse=True)
def _identity(flower_identity: None) -> None:
    """Every test here builds Messages."""


def _adapter() -> bytes:
    return pack_adapter({"lora_A": torch.ones(2, 4), "lora_B": torch.zeros(4, 2)})


def _train(**overrides: Any) -> RecordDict:
    return make_reply(
        overrides.pop("site", "site-a"),
        overrides.pop("metrics", {"num-examples": 24.0, "steps": 3.0}),
        overrides.pop("adapter", _adapter()),
        overrides.pop("privacy", PRIVACY),
        overrides.pop("evaluation", {"num-examples": 6.0, "loss": 2.5}),
    )


def _message(content: RecordDict, phase: str = "train") -> Message:
    return Message(content, dst_node_id=1, message_type=phase)


def _set(key: str, value: Any) -> Callable[[RecordDict], None]:
    def change(content: RecordDict) -> None:
        content.config_records[SITE][key] = value

    return change


def _drop(key: str) -> Callable[[RecordDict], None]:
    def change(content: RecordDict) -> None:
        del content.config_records[SITE][key]

    return change


def test_a_train_reply_parses_into_every_field() -> None:
    reply = parse_reply(_message(_train()), "train")

    assert reply.site == "site-a" and reply.phase == "train"
    assert reply.metrics == {"num-examples": 24.0, "steps": 3.0}
    assert reply.num_examples == 24 and isinstance(reply.num_examples, int)
    assert reply.adapter == _adapter() and reply.received_bytes == len(_adapter())
    assert reply.state is not None and torch.equal(reply.state["lora_A"], torch.ones(2, 4))
    assert reply.privacy == PRIVACY and reply.evaluation == {"num-examples": 6.0, "loss": 2.5}
    assert not reply.declined


def test_a_large_adapter_in_its_own_record_parses_too() -> None:
    content = _train(adapter=None)
    content["adapter"] = packed_array_record(_adapter())

    reply = parse_reply(_message(content), "train")

    assert reply.state is not None and set(reply.state) == {"lora_A", "lora_B"}


def test_a_decline_and_an_evaluation_parse() -> None:
    decline = make_status_reply(
        "site-a",
        "budget-exhausted",
        {"epsilon-next": 11.0, "status": "forged"},
        {"num-examples": 6},
    )
    evaluation = make_reply("site-a", {"num-examples": 0.0, "loss": 2.0})

    declined = parse_reply(_message(decline), "train")
    evaluated = parse_reply(_message(evaluation, "evaluate"), "evaluate")

    assert declined.declined and declined.adapter is None
    assert declined.status == {"status": "budget-exhausted", "epsilon-next": 11.0}
    assert declined.evaluation == {"num-examples": 6.0} and declined.num_examples == 0
    assert evaluated.metrics == {"num-examples": 0.0, "loss": 2.0} and evaluated.adapter is None


def _metrics(text: str) -> Callable[[RecordDict], None]:
    return _set("metrics", text)


# The nine replies of issue 14 (finding 2) that each ended a run, then the rest of the schema.
BAD_REPLIES = {
    "num-examples NaN": (_metrics('{"num-examples": NaN}'), "not valid JSON: NaN"),
    "num-examples Infinity": (_metrics('{"num-examples": Infinity}'), "not valid JSON"),
    "num-examples -1e5": (_metrics('{"num-examples": -1e5}'), "positive integer, got -100000"),
    "num-examples a string": (_metrics('{"num-examples": "24"}'), "'num-examples' must be a fin"),
    "num-examples missing": (_metrics('{"steps": 3}'), "metrics has no num-examples"),
    "metrics not JSON": (_metrics("{"), "'metrics' is not valid JSON"),
    "privacy not JSON": (_set("privacy", "{"), "'privacy' is not valid JSON"),
    "status detail not JSON": (
        lambda c: (_set("status", "budget-exhausted")(c), _set("status-detail", "{")(c)),
        "'status-detail' is not valid JSON",
    ),
    "privacy a list": (_set("privacy", "[1, 2]"), "'privacy' must be a JSON object, got list"),
    # num-examples
    "num-examples 0 in a train reply": (_metrics('{"num-examples": 0}'), "positive integer"),
    "num-examples 2.5": (_metrics('{"num-examples": 2.5}'), "positive integer, got 2.5"),
    "num-examples above 2**53": (_metrics('{"num-examples": 1e300}'), "positive integer"),
    "num-examples a bool": (_metrics('{"num-examples": true}'), "must be a finite number"),
    "more examples than records": (_metrics('{"num-examples": 25}'), "exceeds the 24 records"),
    "a metric not a number": (_metrics('{"num-examples": 1, "loss": [1]}'), "'loss' must be"),
    "a huge integer metric": (_metrics('{"num-examples": 1, "x": ' + "9" * 400 + "}"), "'x'"),
    "metrics not text": (_set("metrics", 5), "'metrics' must be JSON text, got int"),
    "metrics missing": (_drop("metrics"), "has no 'metrics'"),
    "metrics too long": (_metrics(" " * (MAX_JSON_CHARS + 1) + "{}"), "more than 65536"),
    # name
    "no name": (_drop("name"), "site name must be text, got none"),
    "a name not text": (_set("name", 7), "site name must be text, got int"),
    "an empty name": (_set("name", ""), "1-128 printable"),
    "a name with a newline": (_set("name", "a\nb"), "1-128 printable"),
    "a name with blanks around": (_set("name", " site-a"), "without surrounding blanks"),
    "a reserved name": (_set("name", "node-1002"), "reserved"),
    # privacy
    "privacy epsilon a string": (_set("privacy", '{"epsilon": "1"}'), "'epsilon' must be"),
    "privacy records negative": (_set("privacy", '{"records": -3}'), "'records' must be a pos"),
    "privacy of another site": (_set("privacy", '{"site": "site-b"}'), "for site 'site-b'"),
    "privacy in JSON with NaN": (_set("privacy", '{"epsilon": NaN}'), "not valid JSON"),
    # adapter
    "no adapter": (lambda c: c.config_records[SITE].pop(ADAPTER), "carries no adapter"),
    "an adapter not bytes": (_set(ADAPTER, "text"), "not bytes"),
    "an adapter not safetensors": (_set(ADAPTER, b"junk"), "cannot be decoded"),
    # status
    "a status not text": (_set("status", 3), "status must be 1-64 printable"),
    "a detail without status": (_set("status-detail", "{}"), "no 'status'"),
    # evaluation
    "evaluation a list": (_set("evaluation", "[]"), "'evaluation' must be a JSON object"),
    "evaluation without num-examples": (_set("evaluation", '{"loss": 1}'), "evaluation has no"),
    # the record itself
    "no site record": (lambda c: c.config_records.pop(SITE), "no 'site' record"),
}


@pytest.mark.parametrize("case", BAD_REPLIES, ids=list(BAD_REPLIES))
def test_each_bad_train_reply_is_rejected_with_its_reason(case: str) -> None:
    change, reason = BAD_REPLIES[case]
    content = _train()
    change(content)

    with pytest.raises(ReplyRejectedError, match=reason):
        parse_reply(_message(content), "train")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (lambda: make_reply("site-a", {"num-examples": -1.0}), "integer >= 0, got -1"),
        (lambda: make_reply("site-a", {"num-examples": 1.0}, _adapter()), "cannot carry an adap"),
        (lambda: _train(adapter=None, privacy=None), "cannot carry 'evaluation'"),
        (lambda: make_reply("site-a", {"num-examples": 1.0}, privacy={}), "only a train reply"),
        (lambda: make_status_reply("site-a", "budget-exhausted", {}), "cannot decline"),
    ],
)
def test_an_evaluate_reply_is_held_to_its_own_fields(content, reason: str) -> None:
    with pytest.raises(ReplyRejectedError, match=reason):
        parse_reply(_message(content(), "evaluate"), "evaluate")


def test_a_decline_carries_no_adapter() -> None:
    content = make_status_reply("site-a", "budget-exhausted", {})
    content.config_records[SITE][ADAPTER] = _adapter()

    with pytest.raises(ReplyRejectedError, match="a reply that declines cannot carry an adapter"):
        parse_reply(_message(content), "train")


def test_fields_the_schema_does_not_name_are_ignored() -> None:
    content = _train()
    content.config_records[SITE]["added-later"] = "anything"
    content["extra"] = ConfigRecord({"x": 1})

    assert parse_reply(_message(content), "train").site == "site-a"


def test_what_the_site_sends_is_returned_as_sent() -> None:
    """Parsing keeps the adapter bit-exact and the metrics as the JSON floats they were."""
    state = {"lora_B": torch.randn(3, 2, dtype=torch.float64)}
    metrics = {"num-examples": 5.0, "train-loss": 0.1 + 0.2}

    reply = parse_reply(_message(_train(adapter=pack_adapter(state), metrics=metrics)), "train")

    assert reply.metrics == metrics
    assert torch.equal(unpack_adapter(reply.adapter or b"")["lora_B"], state["lora_B"])
    assert json.loads(json.dumps(dict(reply.metrics))) == metrics
