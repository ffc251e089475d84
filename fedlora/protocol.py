"""The message contract between the coordinator and the sites.

A train or evaluate instruction carries:

* ``adapter`` (ArrayRecord): the global adapter tensors;
* ``run-config`` (ConfigRecord): the run's resolved flat configuration;
* ``round`` (ConfigRecord): ``server-round`` and ``base-fingerprint``.

A reply carries ``adapter`` (train only), ``metrics`` (MetricRecord, always with
``num-examples``) and ``site`` (ConfigRecord with the site ``name``). A site that refuses
replies with a Flower ``Error`` whose code is the ``error_code`` of the fedlora error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedlora.config import FlatValue, RunConfig
from fedlora.errors import AdapterError

ADAPTER = "adapter"
RUN_CONFIG = "run-config"
ROUND = "round"
METRICS = "metrics"
SITE = "site"


@dataclass(frozen=True)
class Instruction:
    """A decoded train or evaluate instruction."""

    config: RunConfig
    server_round: int
    base_fingerprint: str
    adapter: ArrayRecord


def make_instruction(
    adapter: ArrayRecord, config: RunConfig, *, server_round: int, base_fingerprint: str
) -> RecordDict:
    """Build the content of a train or evaluate message."""
    flat: dict[str, FlatValue] = config.to_flat()
    return RecordDict(
        {
            ADAPTER: adapter,
            RUN_CONFIG: ConfigRecord(dict(flat)),
            ROUND: ConfigRecord(
                {"server-round": server_round, "base-fingerprint": base_fingerprint}
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
    )


def make_reply(
    site: str, metrics: Mapping[str, float], adapter: ArrayRecord | None = None
) -> RecordDict:
    """Build the content of a site's reply."""
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        METRICS: MetricRecord(dict(metrics)),
        SITE: ConfigRecord({"name": site}),
    }
    if adapter is not None:
        records[ADAPTER] = adapter
    return RecordDict(records)


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
