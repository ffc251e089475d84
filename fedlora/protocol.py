"""The message contract between the coordinator and the sites.

A train or evaluate instruction carries:

* ``adapter`` (ArrayRecord): the global adapter tensors;
* ``run-config`` (ConfigRecord): the run's resolved flat configuration;
* ``round`` (ConfigRecord): ``server-round``, ``base-fingerprint``, the coordinator's
  ``run-id`` and, in a train instruction, ``evaluate-received``: whether the site first
  evaluates the adapter it received (the previous round's global adapter) on its held-out
  split, so that one message per round serves the previous round's evaluation and this
  round's training.

A reply carries ``adapter`` (train only), ``metrics`` (MetricRecord, always with
``num-examples``), ``site`` (ConfigRecord with the site ``name``) and, after a DP round,
``privacy`` (ConfigRecord whose ``entry`` is the JSON of the site's ledger entry and spend).
A train reply to an instruction with ``evaluate-received`` also carries ``evaluation``
(MetricRecord: the held-out metrics of the received adapter, as an evaluate reply's
``metrics``). A site that declines to train under its own policy (its privacy budget) replies
normally with a ``status`` record (``status`` and a JSON ``detail``), its ``evaluation`` when
asked, and no adapter. A site that fails replies
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
RUN_CONFIG = "run-config"
ROUND = "round"
METRICS = "metrics"
EVALUATION = "evaluation"
SITE = "site"
PRIVACY = "privacy"
STATUS = "status"
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
            RUN_CONFIG: ConfigRecord(dict(flat)),
            ROUND: ConfigRecord(
                {
                    "server-round": server_round,
                    "base-fingerprint": base_fingerprint,
                    "run-id": run_id,
                    "evaluate-received": evaluate_received,
                }
            ),
        }
    )


def read_instruction(message: Message) -> Instruction:
    """Decode a train or evaluate message.

    Raises
    ------
    AdapterError
        When a record is missing (a message not sent by a fedlora coordinator).
    """
    content = message.content
    for key in (ADAPTER, RUN_CONFIG, ROUND):
        if key not in content:
            raise AdapterError(f"instruction has no {key!r} record; is the coordinator fedlora?")
    round_record = content.config_records[ROUND]
    flat: Mapping[str, FlatValue] = dict(content.config_records[RUN_CONFIG])  # type: ignore[arg-type]
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
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        METRICS: MetricRecord(dict(metrics)),
        SITE: ConfigRecord({"name": site}),
    }
    if evaluation is not None:
        records[EVALUATION] = MetricRecord(dict(evaluation))
    if adapter is not None:
        records[ADAPTER] = adapter
    if privacy is not None:
        records[PRIVACY] = ConfigRecord({"entry": json.dumps(dict(privacy), sort_keys=True)})
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
        SITE: ConfigRecord({"name": site}),
        STATUS: ConfigRecord(
            {"status": status, "detail": json.dumps(dict(detail), sort_keys=True)}
        ),
    }
    if evaluation is not None:
        records[EVALUATION] = MetricRecord(dict(evaluation))
    return RecordDict(records)


def _json_record(message: Message, name: str, key: str) -> dict[str, Any] | None:
    record = message.content.config_records.get(name)
    if record is None:
        return None
    try:
        payload = json.loads(str(record[key]))
    except (KeyError, json.JSONDecodeError) as exc:
        raise AdapterError(f"reply has a malformed {name!r} record: {exc}") from exc
    if not isinstance(payload, dict):
        raise AdapterError(f"reply {name!r} record is not a JSON object")
    return payload


def read_privacy(message: Message) -> dict[str, Any] | None:
    """The site's privacy spend carried by a train reply, if any."""
    return _json_record(message, PRIVACY, "entry")


def read_status(message: Message) -> dict[str, Any] | None:
    """``{"status": ..., **detail}`` when the site declined to train, else ``None``."""
    record = message.content.config_records.get(STATUS)
    if record is None:
        return None
    detail = _json_record(message, STATUS, "detail") or {}
    return {"status": str(record["status"]), **detail}


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
