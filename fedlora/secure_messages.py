"""Secure aggregation's extra messages as Flower records (both sides of the wire).

A secure round adds three exchanges after the train message (``train.secagg``, a train
message with the ``secagg`` action): ``share`` (the coordinator sends every advertisement;
each site answers with its encrypted shares), ``mask`` (each site's incoming shares; it
answers with its masked input) and ``unmask`` (the request; it answers with the shares it may
reveal). A message is a ``secagg`` config record (stage, round, run id; a reply: the site's
name) and the stage's bytes (:mod:`fedlora.secagg.wire`) as an array record, which Flower
moves in chunks whatever their size. The train reply carries the site's key advertisement
under ``secagg-advertisement`` in its ``site`` record, in place of the adapter
(:func:`fedlora.replies.parse_reply`).
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict

from fedlora.adapters import packed_array_record, packed_from_array_record
from fedlora.errors import AdapterError
from fedlora.protocol import ADVERTISEMENT, SITE
from fedlora.secagg import SecAggError

MESSAGE_TYPE = "train.secagg"
ACTION = "secagg"
RECORD = "secagg"
PAYLOAD = "secagg-payload"
STAGES = ("share", "mask", "unmask")


def make_stage(stage: str, server_round: int, run_id: str, payload: bytes) -> RecordDict:
    """The coordinator's message of one stage."""
    record = ConfigRecord({"stage": stage, "server-round": server_round, "run-id": run_id})
    return RecordDict({RECORD: record, PAYLOAD: packed_array_record(payload)})


def read_stage(message: Message) -> tuple[str, int, str, bytes]:
    """``(stage, server_round, run_id, payload)`` of a stage message.

    Raises
    ------
    SecAggError
        When the message is not a well-formed stage message.
    """
    record = message.content.config_records.get(RECORD)
    stage = record.get("stage") if record is not None else None
    if record is None or stage not in STAGES:
        raise SecAggError(f"not a secure-aggregation stage message (stage {stage!r})")
    server_round, run_id = record.get("server-round"), record.get("run-id")
    if not isinstance(server_round, int) or not isinstance(run_id, str):
        raise SecAggError("a secure-aggregation message without its round or run id")
    return str(stage), server_round, run_id, _payload(message.content)


def make_stage_reply(site: str, payload: bytes) -> RecordDict:
    """A site's answer to a stage message."""
    return RecordDict({RECORD: ConfigRecord({"site": site}), PAYLOAD: packed_array_record(payload)})


def read_stage_reply(message: Message) -> tuple[str, bytes]:
    """``(site, payload)`` of a site's answer.

    Raises
    ------
    SecAggError
        When the reply is not a well-formed stage reply.
    """
    record = message.content.config_records.get(RECORD)
    site = record.get("site") if record is not None else None
    if not isinstance(site, str):
        raise SecAggError("not a secure-aggregation reply (no site name)")
    return site, _payload(message.content)


def _payload(content: RecordDict) -> bytes:
    array = content.array_records.get(PAYLOAD)
    if array is None:
        raise SecAggError("a secure-aggregation message without its payload")
    try:
        return packed_from_array_record(array)
    except AdapterError as error:
        raise SecAggError(f"a secure-aggregation payload is unreadable: {error}") from None


def attach_advertisement(content: RecordDict, advertisement: bytes) -> RecordDict:
    """A train reply's ``content`` with the site's key advertisement added."""
    content.config_records[SITE][ADVERTISEMENT] = advertisement
    return content
