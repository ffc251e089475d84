"""Flower's SuperNode with short polls and, by default, fedlora's warm worker beside it.

``python -m fedlora.flower_internals.node_supernode [--poll-interval S] [--worker] --
FLOWER-SUPERNODE-ARGS`` runs ``flower-supernode`` (Flower's own entry point, in this process) with
two changes:

* Flower's SuperNode sleeps a fixed 3 s whenever a pull finds no message and 0.5 s
  between checks for its ClientApp's reply, and backs off 1 s before its first retry of a message's
  objects. Every fedlora round crosses SuperLink, node and ClientApp and back, so those waits alone
  add seconds to a round of a tiny model. Here the idle pulls back off from 0.02 s after each served
  message up to ``--poll-interval`` seconds (default 0.2 s: five pulls a second per idle site
  against plain ``flower-superlink``, each a few milliseconds of SuperLink CPU, about 9 ms on the
  2-core development machine: a federation of hundreds of sites wants a longer one; after a pull the
  SuperLink held, :mod:`fedlora.flower_internals.link_superlink`, the node asks again after 0.02 s,
  about one pull a second while idle), the reply checks (a look-up in the node's own memory) wait on
  the worker's signal (or take 0.01 s with a worker process) and the first retry comes after 0.01 s
  (:mod:`fedlora.flower_internals.tuning`).
* With ``--worker`` (what ``fedlora deploy supernode`` uses unless ``--cold``), the SuperNode
  runs in Flower's ``--isolation process`` mode and :mod:`fedlora.flower_internals.node_worker` runs
  as a thread of this process: one warm worker that executes every ClientApp task, instead of a
  fresh ``flwr-clientapp`` process per message re-importing torch, transformers, peft and opacus. It
  calls the node's Runtime handlers directly (:mod:`fedlora.flower_internals.node_local_runtime`),
  is woken by each new task (:mod:`fedlora.flower_internals.node_wake`) and signals each stored
  reply, so the node's loop waits on that signal rather than checking its state every 0.01 s (which
  would take the interpreter from training). A Flower without those handlers gets the worker as a
  child process over the Runtime API's HTTP, which exits when this process does.
* ``--heartbeat-interval S`` (``[connection] heartbeat-interval`` of ``site.toml``): the
  interval this node declares to the SuperLink and keeps, instead of Flower's fixed 30 s.
  The SuperLink lets a restarted node back in only after two missed intervals, so a
  shorter interval lets a crashed site rejoin sooner.

Each change is checked against the installed Flower first: if it no longer waits the way
the releases in :mod:`fedlora.flower_internals.versions` do, the node starts with Flower's own
waits and a warning.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Sequence

from fedlora.errors import ConfigError
from fedlora.flower_internals.entry import LOG_FORMAT, parse_with_flower_args
from fedlora.flower_internals.node_local_runtime import LocalRuntimeClient, local_runtime_available
from fedlora.flower_internals.node_ports import claim_runtime_port, runtime_host_port
from fedlora.flower_internals.node_wake import TaskSignal, notify_on_new_tasks
from fedlora.flower_internals.tuning import (
    DEFAULT_POLL_INTERVAL_S,
    check_heartbeat_interval,
    check_poll_interval,
    set_node_heartbeat_interval,
    shorten_pull_backoff,
    shorten_supernode_polls,
)
from fedlora.quiet import configure_process_logging

logger = logging.getLogger(__name__)


def worker_argv(runtime_address: str, *, poll_interval: float, parent_pid: int) -> list[str]:
    """The command line of a warm worker process serving the SuperNode at ``runtime_address``."""
    return [
        sys.executable,
        "-m",
        "fedlora.flower_internals.node_worker",
        "--runtime-api-address",
        runtime_address,
        "--poll-interval",
        repr(poll_interval),
        "--parent-pid",
        str(parent_pid),
    ]


def start_worker(
    flower_args: Sequence[str], *, poll_interval: float, replies: threading.Event | None = None
) -> str:
    """Start the warm worker: a thread of this process, or a child process as a fallback.

    In this process (the default), the worker is woken by the node's state when it creates a task
    (:mod:`fedlora.flower_internals.node_wake`), calls the node's Runtime handlers directly
    (:mod:`fedlora.flower_internals.node_local_runtime`) and sets ``replies`` once it has stored a
    reply. If the installed Flower lacks what this needs, the worker is a child process that polls
    the node's Runtime API over HTTP; it watches this PID and exits with it.

    Returns
    -------
    str
        ``"thread"`` or ``"process"``: where the worker runs.
    """
    signal = TaskSignal()
    if local_runtime_available() and notify_on_new_tasks(signal):
        threading.Thread(
            target=_serve_in_this_process,
            args=(signal, poll_interval, replies),
            name="fedlora-warm-worker",
            daemon=True,
        ).start()
        return "thread"
    logger.warning("the warm worker runs as a separate process, over the node's Runtime API")
    subprocess.Popen(
        worker_argv(
            runtime_address(flower_args), poll_interval=poll_interval, parent_pid=os.getpid()
        )
    )
    return "process"


def _serve_in_this_process(
    signal: TaskSignal, poll_interval: float, replies: threading.Event | None
) -> None:
    from fedlora.flower_internals.node_worker import serve

    while signal.state is None:  # the node's state is known from its first task on
        signal.wait(None)
    state = signal.state
    try:
        serve(
            lambda token: LocalRuntimeClient(state, token),
            poll_interval=poll_interval,
            wake=signal,
            replied=replies,
            where="in the SuperNode's process",
        )
    except BaseException:
        # A node without its worker would hold every message until the run times out.
        logger.exception("the warm worker stopped; the SuperNode exits")
        os._exit(1)


def runtime_address(flower_args: Sequence[str]) -> str:
    """``HOST:PORT`` of the SuperNode's Runtime API from its ``--host``/``--port`` arguments."""
    host, port = runtime_host_port(flower_args)
    return f"{host}:{port}"


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m fedlora.flower_internals.node_supernode",
        description="Run flower-supernode with short polls (and fedlora's warm worker).",
    )
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL_S)
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        help="seconds between heartbeats, declared to the SuperLink (Flower's default: 30)",
    )
    parser.add_argument(
        "--worker", action="store_true", help="run fedlora's warm worker (isolation process)"
    )
    parser.add_argument(
        "--free-runtime-port",
        action="store_true",
        help="the Runtime API's --port is a preference: when taken, use a free one",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="log every request and Flower's DEBUG lines (default: fedlora's and Flower's INFO)",
    )
    return parse_with_flower_args(parser, argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Start the SuperNode in this process (and, with ``--worker``, the warm worker)."""
    args, flower_args = _parse(sys.argv[1:] if argv is None else argv)
    configure_process_logging(LOG_FORMAT, verbose=args.verbose)
    try:
        check_poll_interval(args.poll_interval)
        if args.heartbeat_interval is not None:
            check_heartbeat_interval(args.heartbeat_interval)
    except ConfigError as error:
        print(f"fedlora: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.free_runtime_port:
        flower_args = claim_runtime_port(flower_args)
    replies = threading.Event()
    worker = None
    if args.worker:
        if "--isolation" not in flower_args:
            flower_args += ["--isolation", "process"]
        worker = start_worker(flower_args, poll_interval=args.poll_interval, replies=replies)
    shorten_supernode_polls(args.poll_interval, replies=replies if worker == "thread" else None)
    shorten_pull_backoff()
    if args.heartbeat_interval is not None:
        set_node_heartbeat_interval(args.heartbeat_interval)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *flower_args]
    try:
        flower_supernode()
    except RuntimeError as error:
        if "Runtime HTTP API failed to start" not in str(error):
            raise
        print(
            f"fedlora: error: the SuperNode's Runtime API cannot listen on "
            f"{runtime_address(flower_args)} (taken by another process?): choose a free port "
            "with fedlora deploy supernode --runtime-port N",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
