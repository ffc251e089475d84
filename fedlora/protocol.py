"""The message contract between the coordinator and the sites.

A train or evaluate instruction carries:

* ``adapter`` (ArrayRecord): the global adapter tensors;
* ``run-config`` (ConfigRecord): the run's resolved flat configuration;
* ``round`` (ConfigRecord): ``server-round``, ``base-fingerprint`` and the coordinator's
  ``run-id``.

A reply carries ``adapter`` (train only), ``metrics`` (MetricRecord, always with
``num-examples``), ``site`` (ConfigRecord with the site ``name``) and, after a DP round,
``privacy`` (ConfigRecord whose ``entry`` is the JSON of the site's ledger entry and spend).
A site that declines to train under its own policy (its privacy budget) replies normally with a
``status`` record (``status`` and a JSON ``detail``) and no adapter. A site that fails replies
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


def make_instruction(
    adapter: ArrayRecord,
    config: RunConfig,
    *,
    server_round: int,
    base_fingerprint: str,
    run_id: str,
) -> RecordDict:
    """Build the content of a train or evaluate message."""
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
    )


def make_reply(
    site: str,
    metrics: Mapping[str, float],
    adapter: ArrayRecord | None = None,
    privacy: Mapping[str, Any] | None = None,
) -> RecordDict:
    """Build the content of a site's reply (``privacy``: the site's spend after a DP round)."""
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        METRICS: MetricRecord(dict(metrics)),
        SITE: ConfigRecord({"name": site}),
    }
    if adapter is not None:
        records[ADAPTER] = adapter
    if privacy is not None:
        records[PRIVACY] = ConfigRecord({"entry": json.dumps(dict(privacy), sort_keys=True)})
    return RecordDict(records)


def make_status_reply(site: str, status: str, detail: Mapping[str, Any]) -> RecordDict:
    """A site's reply declining to train (e.g. ``budget-exhausted``), with a JSON detail."""
    return RecordDict(
        {
            METRICS: MetricRecord({"num-examples": 0.0}),
            SITE: ConfigRecord({"name": site}),
            STATUS: ConfigRecord(
                {"status": status, "detail": json.dumps(dict(detail), sort_keys=True)}
            ),
        }
    )


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


def reply_metrics(message: Message) -> dict[str, float]:
    """The scalar metrics of a site's reply, as floats.

    Raises
    ------
    AdapterError
        When the reply has no metrics record or no ``num-examples``.
    """
    if METRICS not in message.content.metric_records:
        raise AdapterError("reply has no metrics record")
    metrics = {
        key: float(value)
        for key, value in message.content.metric_records[METRICS].items()
        if isinstance(value, int | float)
    }
    if "num-examples" not in metrics:
        raise AdapterError("reply metrics have no num-examples")
    return metrics
