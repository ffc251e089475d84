"""The message contract between the coordinator and the sites.

Every message is one ``ConfigRecord`` (and, for an adapter larger than a Flower array
chunk, one ``ArrayRecord`` beside it). Flower moves every record, array and array chunk of a
message as an object of its own, one HTTP request per hop between coordinator, SuperLink,
SuperNode and ClientApp, so a message of one record crosses each hop in 2 requests for its
content instead of 6 to 8 (``docs/benchmarks.md``, deployment overhead).

A train or evaluate instruction is the ``round`` record: ``server-round``,
``base-fingerprint``, the coordinator's ``run-id``, ``run-config`` (the run's resolved flat
configuration, as JSON), ``adapter`` (the global adapter, packed: safetensors bytes,
:func:`fedlora.adapters.pack_adapter`) and, in a train instruction, ``evaluate-received``:
whether the site first evaluates the adapter it received (the previous round's global
adapter) on its held-out split, so that one message per round serves the previous round's
evaluation and this round's training.

A reply is the ``site`` record: the site ``name``, ``metrics`` (JSON object of numbers,
always with ``num-examples``), ``adapter`` (train replies), ``privacy`` after a DP round (the
JSON of the site's ledger entry and spend) and, when the instruction asked for it,
``evaluation`` (JSON: the held-out metrics of the received adapter, as an evaluate reply's
``metrics``). A site that declines to train under its own policy (its privacy budget)
replies with ``status`` and a JSON ``status-detail``, its ``evaluation`` when asked, and no
adapter. A site that fails replies with a Flower ``Error`` whose code is the ``error_code``
of the fedlora error. The coordinator checks every field of a reply against one schema,
:func:`fedlora.replies.parse_reply`, once on arrival; the ``reply_*`` / ``read_*`` readers
below are lenient views for a site's own tests and tools, not a validation.

An adapter of more than :data:`INLINE_ADAPTER_MAX_BYTES` travels as an ``ArrayRecord``
named ``adapter`` instead (Flower cuts it into chunks and moves them in parallel); the
readers here accept both forms.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict

from fedlora.adapters import packed_array_record, packed_from_array_record
from fedlora.config import FlatValue, RunConfig
from fedlora.errors import AdapterError

ADAPTER = "adapter"
ROUND = "round"
RUN_CONFIG = "run-config"
"""The key of the run's flat configuration (JSON) in the ``round`` record."""
METRICS = "metrics"
EVALUATION = "evaluation"
ADVERTISEMENT = "secagg-advertisement"
"""Secure aggregation: a train reply's key advertisement (:mod:`fedlora.secure_messages`)."""
SITE = "site"
PRIVACY = "privacy"
STATUS = "status"
STATUS_DETAIL = "status-detail"
BUDGET_EXHAUSTED = "budget-exhausted"
INLINE_ADAPTER_MAX_BYTES = 5 * 1024 * 1024
"""Largest packed adapter carried inside the message's record: Flower's array chunk size
(``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``), so an adapter this small would travel as one
chunk anyway, with its array and record as two more objects."""

RecordValue = str | int | float | bool | bytes


@dataclass(frozen=True)
class Instruction:
    """A decoded train or evaluate instruction (``adapter``: the packed global adapter)."""

    config: RunConfig
    server_round: int
    base_fingerprint: str
    adapter: bytes
    run_id: str
    evaluate_received: bool = False


def _content(record_name: str, values: dict[str, RecordValue], adapter: bytes | None) -> RecordDict:
    """One record of ``values`` (and the adapter, inline or, when large, in its own record)."""
    content = RecordDict()
    record = ConfigRecord(dict(values))
    if adapter is not None and len(adapter) > INLINE_ADAPTER_MAX_BYTES:
        content[ADAPTER] = packed_array_record(adapter)
    elif adapter is not None:
        record[ADAPTER] = adapter
    content[record_name] = record
    return content


def message_adapter(content: RecordDict, record_name: str) -> bytes | None:
    """The packed adapter of a message, inline in ``record_name`` or as its own record.

    Raises
    ------
    AdapterError
        When the inline value is not bytes or the array record is not a packed adapter.
    """
    if ADAPTER in content.array_records:
        return packed_from_array_record(content.array_records[ADAPTER])
    record = content.config_records.get(record_name)
    if record is None or ADAPTER not in record:
        return None
    value = record[ADAPTER]
    if not isinstance(value, bytes):
        raise AdapterError(f"the message's adapter is {type(value).__name__}, not bytes")
    return value


def make_instruction(
    adapter: bytes,
    config: RunConfig,
    *,
    server_round: int,
    base_fingerprint: str,
    run_id: str,
    evaluate_received: bool = False,
) -> RecordDict:
    """Build the content of a train or evaluate message.

    ``adapter``: the packed global adapter. ``evaluate_received`` (train messages): the site
    evaluates the received adapter on its held-out split before training and sends the
    metrics with its reply.
    """
    flat: dict[str, FlatValue] = config.to_flat()
    values: dict[str, RecordValue] = {
        "server-round": server_round,
        "base-fingerprint": base_fingerprint,
        "run-id": run_id,
        "evaluate-received": evaluate_received,
        RUN_CONFIG: json.dumps(flat, sort_keys=True),
    }
    return _content(ROUND, values, adapter)


def read_instruction(message: Message) -> Instruction:
    """Decode a train or evaluate message.

    Raises
    ------
    AdapterError
        When the record, the adapter or the run config is missing or unreadable (a message
        not sent by a fedlora coordinator).
    """
    content = message.content
    if ROUND not in content.config_records:
        raise AdapterError(f"instruction has no {ROUND!r} record; is the coordinator fedlora?")
    round_record = content.config_records[ROUND]
    adapter = message_adapter(content, ROUND)
    if adapter is None:
        raise AdapterError("instruction carries no adapter; is the coordinator fedlora?")
    try:
        flat = json.loads(str(round_record[RUN_CONFIG]))
    except (KeyError, json.JSONDecodeError) as exc:
        raise AdapterError(f"instruction has no readable run config ({exc})") from None
    if not isinstance(flat, dict):
        raise AdapterError("instruction run config is not a JSON object")
    return Instruction(
        config=RunConfig.from_flat(flat),
        server_round=int(round_record["server-round"]),  # type: ignore[arg-type]
        base_fingerprint=str(round_record["base-fingerprint"]),
        adapter=adapter,
        run_id=str(round_record.get("run-id", "")),
        evaluate_received=bool(round_record.get("evaluate-received", False)),
    )


def _json(payload: Mapping[str, Any]) -> str:
    return json.dumps(dict(payload), sort_keys=True)


def make_reply(
    site: str,
    metrics: Mapping[str, float],
    adapter: bytes | None = None,
    privacy: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, float] | None = None,
) -> RecordDict:
    """Build the content of a site's reply.

    ``adapter``: the packed trained adapter (train replies); ``privacy``: the site's spend
    after a DP round; ``evaluation``: the held-out metrics of the received adapter, when the
    instruction asked for them.
    """
    values: dict[str, RecordValue] = {"name": site, METRICS: _json(metrics)}
    if privacy is not None:
        values[PRIVACY] = _json(privacy)
    if evaluation is not None:
        values[EVALUATION] = _json(evaluation)
    return _content(SITE, values, adapter)


def make_status_reply(
    site: str,
    status: str,
    detail: Mapping[str, Any],
    evaluation: Mapping[str, float] | None = None,
) -> RecordDict:
    """A site's reply declining to train (e.g. ``budget-exhausted``), with a JSON detail.

    ``evaluation``: the held-out metrics of the received adapter, when asked for.
    """
    content = make_reply(site, {"num-examples": 0.0}, evaluation=evaluation)
    record = content.config_records[SITE]
    record[STATUS] = status
    record[STATUS_DETAIL] = _json(detail)
    return content


def _site_json(message: Message, key: str) -> dict[str, Any] | None:
    """The JSON object under ``key`` of the reply's ``site`` record, if there is one."""
    record = message.content.config_records.get(SITE)
    if record is None or key not in record:
        return None
    try:
        payload = json.loads(str(record[key]))
    except json.JSONDecodeError as exc:
        raise AdapterError(f"reply has a malformed {key!r}: {exc}") from exc
    if not isinstance(payload, dict):
        raise AdapterError(f"reply {key!r} is not a JSON object")
    return payload


def reply_site(message: Message) -> str:
    """The name of the site that sent a reply.

    Raises
    ------
    AdapterError
        When the reply has no ``site`` record with a name (not sent by a fedlora site).
    """
    record = message.content.config_records.get(SITE)
    if record is None or "name" not in record:
        raise AdapterError("reply has no site name; is the site fedlora?")
    return str(record["name"])


def reply_adapter(message: Message) -> bytes | None:
    """The packed adapter a train reply carries (``None`` for a decline or an evaluation).

    Raises
    ------
    AdapterError
        When the adapter is there but not in a form :func:`make_reply` writes.
    """
    return message_adapter(message.content, SITE)


def read_privacy(message: Message) -> dict[str, Any] | None:
    """The site's privacy spend carried by a train reply, if any."""
    return _site_json(message, PRIVACY)


def read_status(message: Message) -> dict[str, Any] | None:
    """``{"status": ..., **detail}`` when the site declined to train, else ``None``."""
    record = message.content.config_records.get(SITE)
    if record is None or STATUS not in record:
        return None
    detail = _site_json(message, STATUS_DETAIL) or {}
    return {"status": str(record[STATUS]), **detail}


def reply_metrics(message: Message, key: str = METRICS) -> dict[str, float]:
    """The scalar metrics of a site's reply (the JSON under ``key``), as floats.

    Raises
    ------
    AdapterError
        When the reply has no such metrics or they have no ``num-examples``.
    """
    payload = _site_json(message, key)
    if payload is None:
        raise AdapterError(f"reply has no {key}")
    metrics = {
        name: float(value)
        for name, value in payload.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    if "num-examples" not in metrics:
        raise AdapterError(f"the reply's {key} has no num-examples")
    return metrics


def reply_evaluation(message: Message) -> dict[str, float] | None:
    """The held-out metrics of the received adapter a train reply carries, if any.

    Raises
    ------
    AdapterError
        When they are there but have no ``num-examples``.
    """
    if _site_json(message, EVALUATION) is None:
        return None
    return reply_metrics(message, EVALUATION)
