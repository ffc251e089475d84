"""A Flower App that trains nothing, for the round overhead of a deployment.

Each round the ServerApp sends every node one message carrying ``payload-bytes`` of array
data (a tiny-llama adapter's size by default) and waits for every reply; the ClientApp sends
the array straight back. The ServerApp writes ``OUT/light-run/rounds.json``: each round's wall
seconds, from pushing its messages to holding every reply.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

PULL_INTERVAL_S = 0.03
"""The ServerApp's wait between pulls that found no reply (fedlora's coordinator's too)."""

client_app = ClientApp()
server_app = ServerApp()


@client_app.train()
def echo(message: Message, context: Context) -> Message:
    """Reply with the received arrays, untouched."""
    return Message(content=message.content, reply_to=message)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``rounds`` rounds of one echo message per node; write their wall seconds."""
    config = context.run_config
    sites, rounds = int(config["sites"]), int(config["rounds"])
    deadline = time.monotonic() + float(config["node-wait-s"])
    nodes = list(grid.get_node_ids())
    while len(nodes) < sites and time.monotonic() < deadline:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    if len(nodes) < sites:
        raise RuntimeError(f"{len(nodes)} of {sites} nodes connected")
    payload = np.zeros(int(config["payload-bytes"]) // 4, dtype=np.float32)
    seconds = []
    for server_round in range(1, rounds + 1):
        messages = [
            Message(
                content=RecordDict({"arrays": ArrayRecord({"w": Array(payload)})}),
                dst_node_id=node,
                message_type="train",
                group_id=str(server_round),
            )
            for node in nodes
        ]
        started = time.monotonic()
        pending = set(grid.push_messages(messages))
        while pending and time.monotonic() < started + 120.0:
            replies = list(grid.pull_messages(pending))
            if any(reply.has_error() for reply in replies):
                raise RuntimeError(f"round {server_round}: an error reply")
            pending -= {reply.metadata.reply_to_message_id for reply in replies}
            if pending and not replies:
                time.sleep(PULL_INTERVAL_S)
        seconds.append(time.monotonic() - started)
        if pending:
            raise RuntimeError(f"round {server_round}: {len(pending)} nodes did not reply")
    out = Path(str(config["out"])) / "light-run"
    out.mkdir(parents=True, exist_ok=True)
    (out / "rounds.json").write_text(json.dumps({"sites": len(nodes), "seconds": seconds}))
