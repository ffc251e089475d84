"""The schema of a site's reply: every field checked once, on arrival, in one place.

A site is not trusted to be well-formed: a reply with a field of the wrong type, a metric that
is not a finite number, an impossible example count or an unreadable JSON payload is refused
here with a :class:`ReplyRejectedError` whose message is the reason, so that the coordinator
drops that site from the round (logged and recorded) instead of failing the run. What passes
is a :class:`SiteReply`; the coordinator reads the parsed object and never the raw message
again.

The schema (``fedlora.protocol`` writes it; the ``site`` record):

============== ==================================================================================
``name``       the site's name: text of 1–128 printable characters without surrounding blanks;
               ``node-<digits>`` and ``*`` are reserved for the coordinator's own log entries
``metrics``    JSON object of finite numbers with ``num-examples``, an integral value: at least
               1 for a train reply that carries an update, at least 0 otherwise; never more than
               ``records`` in the same reply's privacy record
``adapter``    packed adapter (safetensors) bytes, inline or as its own array record: required
               in a train reply that carries an update, refused anywhere else
``privacy``    JSON object (train replies with an update only); each field the coordinator or
               the report computes with (:data:`PRIVACY_NUMBERS`) a finite number when present,
               ``records`` a positive integer, ``site`` the reply's own name
``status``     text (a train reply that declines), with ``status-detail``: a JSON object
``evaluation`` JSON object like ``metrics`` (held-out metrics of the received adapter; train
               replies only), ``num-examples`` at least 0
``secagg-advertisement`` bytes (at most :data:`MAX_ADVERTISEMENT_BYTES`): under secure
               aggregation a train reply with an update carries the site's key advertisement in
               place of the adapter (:mod:`fedlora.secure_messages`); refused anywhere else
============== ==================================================================================

JSON payloads are limited to :data:`MAX_JSON_CHARS` characters each, and their non-standard
``NaN`` / ``Infinity`` constants are refused (they would also make ``metrics.jsonl`` invalid
JSON). Keys of the ``site`` record that the schema does not name are ignored, so a newer
site can add a field without older coordinators refusing its replies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import Message

from fedlora.adapters import AdapterState, unpack_adapter
from fedlora.errors import AdapterError
from fedlora.progress import Phase
from fedlora.protocol import (
    ADVERTISEMENT,
    EVALUATION,
    METRICS,
    PRIVACY,
    SITE,
    STATUS,
    STATUS_DETAIL,
    message_adapter,
)

MAX_NAME_CHARS = 128
MAX_JSON_CHARS = 64 * 1024
"""Longest JSON payload a reply field may hold: ledger entries and metrics are a few hundred
characters; the limit keeps one site from filling ``metrics.jsonl``."""
MAX_ADVERTISEMENT_BYTES = 1024
"""Largest key advertisement: two keys, a signing key, a signature and the names."""
MAX_EXAMPLES = 2**53
"""Largest example count: every integer up to it is exact as a float (JSON numbers)."""
PRIVACY_NUMBERS = (
    "steps",
    "sample-rate",
    "noise-multiplier",
    "max-grad-norm",
    "delta",
    "epsilon-prv",
    "epsilon-rdp",
    "budget-epsilon",
    "run-epsilon-prv",
    "run-epsilon-rdp",
    "epsilon",
    "budget-left",
)
"""Privacy-record fields read as numbers downstream: finite when present. The ledger writes
an infinite ε as ``null`` (``finite_or_none``), which stays allowed."""


class ReplyRejectedError(AdapterError):
    """A site's reply breaks the schema; the message is the reason, for logs and metrics."""


@dataclass(frozen=True)
class SiteReply:
    """A site's reply that passed :func:`parse_reply`.

    ``num_examples`` is ``metrics["num-examples"]`` as an ``int``; ``adapter`` the packed
    update and ``state`` its tensors (train replies with an update); ``status`` is
    ``{"status": ..., **detail}`` for a reply that declines to train.
    """

    site: str
    phase: Phase
    metrics: Mapping[str, float]
    num_examples: int
    adapter: bytes | None = None
    state: AdapterState | None = None
    privacy: Mapping[str, Any] | None = None
    status: Mapping[str, Any] | None = None
    evaluation: Mapping[str, float] | None = None
    advertisement: bytes | None = None
    """Secure aggregation: the site's key advertisement, sent in place of its update."""

    @property
    def declined(self) -> bool:
        """Whether the site declined to train under its own policy (no update)."""
        return self.status is not None

    @property
    def received_bytes(self) -> int:
        """Size of the packed update (or key advertisement) the reply carried (0 without)."""
        return len(self.adapter or b"") + len(self.advertisement or b"")


def parse_reply(message: Message, phase: Phase) -> SiteReply:
    """Check every field of a site's reply to a ``phase`` message and return it parsed.

    Raises
    ------
    ReplyRejectedError
        Naming the first field that breaks the schema (the module docstring).
    """
    record = message.content.config_records.get(SITE)
    if record is None:
        raise ReplyRejectedError(f"the reply has no {SITE!r} record; is the site fedlora?")
    site = _name(record.get("name"))
    status = _status(record)
    if status is not None and phase != "train":
        raise ReplyRejectedError(f"an {phase} reply cannot decline (status {status['status']!r})")
    trains = phase == "train" and status is None
    metrics = _metrics(_json_field(record, METRICS), METRICS, least=1 if trains else 0)
    if metrics is None:
        raise ReplyRejectedError(f"the reply has no {METRICS!r}")
    evaluation = _metrics(_json_field(record, EVALUATION), EVALUATION, least=0)
    if evaluation is not None and phase != "train":
        raise ReplyRejectedError(f"an {phase} reply cannot carry {EVALUATION!r}")
    privacy = _privacy(_json_field(record, PRIVACY), site)
    if privacy is not None and not trains:
        raise ReplyRejectedError(f"only a train reply with an update carries {PRIVACY!r}")
    num_examples = int(metrics["num-examples"])
    records = privacy.get("records") if privacy is not None else None
    if records is not None and num_examples > records:
        raise ReplyRejectedError(
            f"num-examples {num_examples} exceeds the {records} records of the site's privacy "
            "record"
        )
    try:
        adapter = message_adapter(message.content, SITE)
        state = unpack_adapter(adapter) if adapter is not None else None
    except AdapterError as error:
        raise ReplyRejectedError(str(error)) from None
    advertisement = _advertisement(record)
    if advertisement is not None and (not trains or adapter is not None):
        raise ReplyRejectedError("only a train reply without an adapter carries an advertisement")
    if trains and adapter is None and advertisement is None:
        raise ReplyRejectedError("the train reply carries no adapter")
    if not trains and adapter is not None:
        what = "a reply that declines" if status is not None else f"an {phase} reply"
        raise ReplyRejectedError(f"{what} cannot carry an adapter")
    return SiteReply(
        site=site,
        phase=phase,
        metrics=metrics,
        num_examples=num_examples,
        adapter=adapter,
        state=state,
        privacy=privacy,
        status=status,
        evaluation=evaluation,
        advertisement=advertisement,
    )


def _advertisement(record: Mapping[str, Any]) -> bytes | None:
    """The secure-aggregation key advertisement, bytes of a bounded size, if there is one."""
    value = record.get(ADVERTISEMENT)
    if value is None:
        return None
    if not isinstance(value, bytes) or not 0 < len(value) <= MAX_ADVERTISEMENT_BYTES:
        raise ReplyRejectedError(
            f"the reply's {ADVERTISEMENT!r} must be 1-{MAX_ADVERTISEMENT_BYTES} bytes"
        )
    return value


def _name(value: object) -> str:
    if not isinstance(value, str):
        got = "none" if value is None else type(value).__name__
        raise ReplyRejectedError(f"the reply's site name must be text, got {got}")
    if not 1 <= len(value) <= MAX_NAME_CHARS or not value.isprintable() or value != value.strip():
        raise ReplyRejectedError(
            f"the reply's site name must be 1-{MAX_NAME_CHARS} printable characters without "
            f"surrounding blanks, got {value[:MAX_NAME_CHARS]!r}"
        )
    if value == "*" or (value.startswith("node-") and value[5:].isdigit()):
        raise ReplyRejectedError(f"the site name {value!r} is reserved for the coordinator")
    return value


def _refuse_constant(constant: str) -> float:
    raise ValueError(f"{constant} is not a JSON number")


def _json_field(record: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """The JSON object under ``key``, ``None`` when the record has no such key."""
    if key not in record:
        return None
    text = record[key]
    if not isinstance(text, str):
        raise ReplyRejectedError(
            f"the reply's {key!r} must be JSON text, got {type(text).__name__}"
        )
    if len(text) > MAX_JSON_CHARS:
        raise ReplyRejectedError(
            f"the reply's {key!r} has {len(text)} characters, more than {MAX_JSON_CHARS}"
        )
    try:
        payload = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise ReplyRejectedError(f"the reply's {key!r} is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise ReplyRejectedError(
            f"the reply's {key!r} must be a JSON object, got {type(payload).__name__}"
        )
    return payload


def _number(value: object) -> float | None:
    """``value`` as a finite float, ``None`` when it is not a finite number (``bool`` included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range
        return None
    return number if math.isfinite(number) else None


def _metrics(payload: dict[str, Any] | None, key: str, *, least: int) -> dict[str, float] | None:
    """Metrics: every value a finite number, ``num-examples`` integral and at least ``least``."""
    if payload is None:
        return None
    metrics: dict[str, float] = {}
    for name, value in payload.items():
        number = _number(value)
        if number is None:
            raise ReplyRejectedError(
                f"the reply's {key} {name!r} must be a finite number, got {value!r:.40}"
            )
        metrics[name] = number
    if "num-examples" not in metrics:
        raise ReplyRejectedError(f"the reply's {key} has no num-examples")
    count = metrics["num-examples"]
    if not (count.is_integer() and least <= count <= MAX_EXAMPLES):
        kind = "a positive integer" if least > 0 else "an integer >= 0"
        raise ReplyRejectedError(f"the reply's {key} num-examples must be {kind}, got {count:g}")
    return metrics


def _privacy(payload: dict[str, Any] | None, site: str) -> dict[str, Any] | None:
    """A privacy record: its numbers finite, ``records`` a positive integer, ``site`` own."""
    if payload is None:
        return None
    for name in PRIVACY_NUMBERS:
        value = payload.get(name)
        if value is not None and _number(value) is None:
            raise ReplyRejectedError(
                f"the reply's privacy {name!r} must be a finite number, got {value!r:.40}"
            )
    if "records" in payload:
        records = _number(payload["records"])
        if records is None or not records.is_integer() or not 1 <= records <= MAX_EXAMPLES:
            raise ReplyRejectedError(
                f"the reply's privacy 'records' must be a positive integer, "
                f"got {payload['records']!r:.40}"
            )
        payload["records"] = int(records)
    if "site" in payload and payload["site"] != site:
        raise ReplyRejectedError(
            f"the reply's privacy record is for site {payload['site']!r:.60}, not {site!r}"
        )
    return payload


def _status(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"status": ..., **detail}`` of a reply that declines, ``None`` otherwise."""
    detail = _json_field(record, STATUS_DETAIL)
    if STATUS not in record:
        if detail is not None:
            raise ReplyRejectedError(f"the reply has a {STATUS_DETAIL!r} but no {STATUS!r}")
        return None
    status = record[STATUS]
    if not isinstance(status, str) or not 1 <= len(status) <= 64 or not status.isprintable():
        raise ReplyRejectedError(
            f"the reply's status must be 1-64 printable characters, got {status!r:.40}"
        )
    return {"status": status, **{k: v for k, v in (detail or {}).items() if k != "status"}}
