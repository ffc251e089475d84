"""Flower's SuperNode with short polls and, by default, fedlora's warm worker beside it.

``python -m fedlora.node_supernode [--poll-interval S] [--worker] -- FLOWER-SUPERNODE-ARGS``
runs ``flower-supernode`` (Flower's own entry point, in this process) with two changes:

* Flower 1.41's SuperNode sleeps a fixed 3 s whenever a pull finds no message and 0.5 s
  between checks for its ClientApp's reply, and backs off 1 s before its first retry of a
  message's objects. Every fedlora round crosses SuperLink, node and ClientApp and back, so
  those waits alone add seconds to a round of a tiny model. Here the idle pulls back off from
  0.02 s after each served message up to ``--poll-interval`` seconds (default 0.2 s: five
  pulls a second per idle site, a load any SuperLink carries for hundreds of sites), the
  reply checks (a look-up in the node's own memory) take 0.01 s and the first retry 0.01 s
  (:mod:`fedlora.flower_tuning`).
* With ``--worker`` (what ``fedlora deploy supernode`` uses unless ``--cold``), the SuperNode
  runs in Flower's ``--isolation process`` mode and :mod:`fedlora.node_worker` is started as
  this process's child: one warm process that executes every ClientApp task, instead of a
  fresh ``flwr-clientapp`` process per message re-importing torch, transformers, peft and
  opacus. The worker exits when this process does.

* ``--heartbeat-interval S`` (``[connection] heartbeat-interval`` of ``site.toml``): the
  interval this node declares to the SuperLink and keeps, instead of Flower's fixed 30 s.
  The SuperLink lets a restarted node back in only after two missed intervals, so a
  shorter interval lets a crashed site rejoin sooner.

Each change is checked against the installed Flower first: if it no longer waits the way
1.41 does, the node starts with Flower's own waits and a warning.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from fedlora.errors import ConfigError
from fedlora.flower_tuning import (
    DEFAULT_POLL_INTERVAL_S,
    check_heartbeat_interval,
    check_poll_interval,
    set_node_heartbeat_interval,
    shorten_pull_backoff,
    shorten_supernode_polls,
)

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The node's and its worker's log lines: with the time, to the millisecond."""


def worker_argv(runtime_address: str, *, poll_interval: float, parent_pid: int) -> list[str]:
    """The command line of the warm worker serving the SuperNode at ``runtime_address``."""
    return [
        sys.executable,
        "-m",
        "fedlora.node_worker",
        "--runtime-api-address",
        runtime_address,
        "--poll-interval",
        repr(poll_interval),
        "--parent-pid",
        str(parent_pid),
    ]


def runtime_address(flower_args: Sequence[str]) -> str:
    """``HOST:PORT`` of the SuperNode's Runtime API from its ``--host``/``--port`` arguments."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9094)
    known, _ = parser.parse_known_args(list(flower_args))
    return f"{known.host}:{known.port}"


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m fedlora.node_supernode",
        description="Run flower-supernode with short polls (and fedlora's warm worker).",
    )
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL_S)
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        help="seconds between heartbeats, declared to the SuperLink (Flower's default: 30)",
    )
    parser.add_argument(
        "--worker", action="store_true", help="start fedlora's warm worker (isolation process)"
    )
    parser.add_argument("flower_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(list(argv))
    flower_args = list(args.flower_args)
    if flower_args[:1] == ["--"]:
        flower_args = flower_args[1:]
    return args, flower_args


def main(argv: Sequence[str] | None = None) -> None:
    """Start the SuperNode in this process (and the warm worker as a child)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    args, flower_args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        check_poll_interval(args.poll_interval)
        if args.heartbeat_interval is not None:
            check_heartbeat_interval(args.heartbeat_interval)
    except ConfigError as error:
        print(f"fedlora: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    shorten_supernode_polls(args.poll_interval)
    shorten_pull_backoff()
    if args.heartbeat_interval is not None:
        set_node_heartbeat_interval(args.heartbeat_interval)
    if args.worker:
        if "--isolation" not in flower_args:
            flower_args += ["--isolation", "process"]
        # The worker watches this PID and exits with it; Flower's node takes no part in it.
        subprocess.Popen(
            worker_argv(
                runtime_address(flower_args),
                poll_interval=args.poll_interval,
                parent_pid=os.getpid(),
            )
        )
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()
