"""Flower messages for tests that drive Flower's own node and link states."""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata


def train_instruction(*, run_id: int, src_node_id: int, dst_node_id: int) -> Message:
    """A round-1 train message of run ``run_id`` from ``src_node_id`` to ``dst_node_id``."""
    metadata = Metadata(
        run_id=run_id,
        message_id="",
        src_node_id=src_node_id,
        dst_node_id=dst_node_id,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type="train",
    )
    return make_message(metadata, RecordDict({"round": ConfigRecord({"server-round": 1})}))
