"""The message contract between the coordinator and the sites.

A train or evaluate instruction carries:

* ``adapter`` (ArrayRecord): the global adapter tensors;
* ``round`` (ConfigRecord): ``server-round``, ``base-fingerprint``, the coordinator's
  ``run-id``, ``run-config`` (the run's resolved flat configuration, as JSON) and, in a
  train instruction, ``evaluate-received``: whether the site first evaluates the adapter it
  received (the previous round's global adapter) on its held-out split, so that one message
  per round serves the previous round's evaluation and this round's training.

A reply carries ``adapter`` (train only), ``metrics`` (MetricRecord, always with
``num-examples``) and ``site`` (ConfigRecord with the site ``name`` and, after a DP round,
``privacy``: the JSON of the site's ledger entry and spend).
A train reply to an instruction with ``evaluate-received`` also carries ``evaluation``
(MetricRecord: the held-out metrics of the received adapter, as an evaluate reply's
``metrics``). A site that declines to train under its own policy (its privacy budget) replies
normally with ``status`` and a JSON ``status-detail`` in its ``site`` record, its
``evaluation`` when asked, and no adapter.

Flower moves every record (and an adapter's array and its chunk) as an object of its own,
one request per hop between coordinator, SuperLink, SuperNode and ClientApp; so the scalars
of a message share one ConfigRecord rather than one record each. A site that fails replies
with a Flower ``Error`` whose code is the ``error_code`` of the fedlora error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedlora.config import FlatValue, RunConfig
from fedlora.errors import AdapterError

ADAPTER = "adapter"
ROUND = "round"
RUN_CONFIG = "run-config"
"""The key of the run's flat configuration (JSON) in the ``round`` record."""
METRICS = "metrics"
EVALUATION = "evaluation"
SITE = "site"
PRIVACY = "privacy"
STATUS = "status"
STATUS_DETAIL = "status-detail"
BUDGET_EXHAUSTED = "budget-exhausted"


@dataclass(frozen=True)
class Instruction:
    """A decoded train or evaluate instruction."""

    config: RunConfig
    server_round: int
    base_fingerprint: str
    adapter: ArrayRecord
    run_id: str
    evaluate_received: bool = False


def make_instruction(
    adapter: ArrayRecord,
    config: RunConfig,
    *,
    server_round: int,
    base_fingerprint: str,
    run_id: str,
    evaluate_received: bool = False,
) -> RecordDict:
    """Build the content of a train or evaluate message.

    ``evaluate_received`` (train messages): the site evaluates the received adapter on its
    held-out split before training and sends the metrics with its reply.
    """
    flat: dict[str, FlatValue] = config.to_flat()
    return RecordDict(
        {
            ADAPTER: adapter,
            ROUND: ConfigRecord(
                {
                    "server-round": server_round,
                    "base-fingerprint": base_fingerprint,
                    "run-id": run_id,
                    "evaluate-received": evaluate_received,
                    RUN_CONFIG: json.dumps(flat, sort_keys=True),
                }
            ),
        }
    )


def read_instruction(message: Message) -> Instruction:
    """Decode a train or evaluate message.

    Raises
    ------
    AdapterError
        When a record or the run config is missing or unreadable (a message not sent by a
        fedlora coordinator).
    """
    content = message.content
    for key in (ADAPTER, ROUND):
        if key not in content:
            raise AdapterError(f"instruction has no {key!r} record; is the coordinator fedlora?")
    round_record = content.config_records[ROUND]
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
        adapter=content.array_records[ADAPTER],
        run_id=str(round_record.get("run-id", "")),
        evaluate_received=bool(round_record.get("evaluate-received", False)),
    )


def make_reply(
    site: str,
    metrics: Mapping[str, float],
    adapter: ArrayRecord | None = None,
    privacy: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, float] | None = None,
) -> RecordDict:
    """Build the content of a site's reply.

    ``privacy``: the site's spend after a DP round; ``evaluation``: the held-out metrics of
    the received adapter, when the instruction asked for them.
    """
    about: dict[str, str] = {"name": site}
    if privacy is not None:
        about[PRIVACY] = json.dumps(dict(privacy), sort_keys=True)
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        METRICS: MetricRecord(dict(metrics)),
        SITE: ConfigRecord(dict(about)),
    }
    if evaluation is not None:
        records[EVALUATION] = MetricRecord(dict(evaluation))
    if adapter is not None:
        records[ADAPTER] = adapter
    return RecordDict(records)


def make_status_reply(
    site: str,
    status: str,
    detail: Mapping[str, Any],
    evaluation: Mapping[str, float] | None = None,
) -> RecordDict:
    """A site's reply declining to train (e.g. ``budget-exhausted``), with a JSON detail.

    ``evaluation``: the held-out metrics of the received adapter, when asked for.
    """
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        METRICS: MetricRecord({"num-examples": 0.0}),
        SITE: ConfigRecord(
            {
                "name": site,
                STATUS: status,
                STATUS_DETAIL: json.dumps(dict(detail), sort_keys=True),
            }
        ),
    }
    if evaluation is not None:
        records[EVALUATION] = MetricRecord(dict(evaluation))
    return RecordDict(records)


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


def reply_metrics(message: Message, record: str = METRICS) -> dict[str, float]:
    """The scalar metrics of a site's reply (its ``record`` MetricRecord), as floats.

    Raises
    ------
    AdapterError
        When the reply has no such record or it has no ``num-examples``.
    """
    if record not in message.content.metric_records:
        raise AdapterError(f"reply has no {record} record")
    metrics = {
        key: float(value)
        for key, value in message.content.metric_records[record].items()
        if isinstance(value, int | float)
    }
    if "num-examples" not in metrics:
        raise AdapterError(f"reply {record} record has no num-examples")
    return metrics


def reply_evaluation(message: Message) -> dict[str, float] | None:
    """The held-out metrics of the received adapter a train reply carries, if any.

    Raises
    ------
    AdapterError
        When the record is there but has no ``num-examples``.
    """
    if EVALUATION not in message.content.metric_records:
        return None
    return reply_metrics(message, EVALUATION)
