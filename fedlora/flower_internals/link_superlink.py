"""Flower's SuperLink with held pulls.

``python -m fedlora.flower_internals.link_superlink [--pull-hold S] [--max-held-pulls N] --
FLOWER-SUPERLINK-ARGS`` runs ``flower-superlink`` (Flower's own entry point, in this process, with
the same arguments) with one change: a pull that finds no message is held for up to ``--pull-hold``
seconds (default 1 s; 0: Flower's immediate answers) and answered as soon as a message for it is
stored (:mod:`fedlora.flower_internals.link_hold`). A SuperNode then gets its next instruction, and
the ServerApp its replies, when they are stored rather than at its next poll, and an idle node makes
about one request a second instead of one per poll interval. Up to ``--max-held-pulls`` pulls
(default 256) are held at a time, the SuperLink's request threads sized to that number plus 24 for
its other requests (:mod:`fedlora.flower_internals.link_threads`).

Nodes of any kind work with it: a held pull is an ordinary pull answered later, well inside the 30 s
request timeout of Flower's clients. fedlora's warm nodes notice a held pull and ask again at once
(:class:`fedlora.flower_internals.tuning.SupernodeWaits`); plain ``flower-supernode`` nodes keep
their own waits. ``fedlora deploy superlink`` starts the coordinator this way.

It also keeps the SuperLink's Control and Runtime APIs to the operator
(:mod:`fedlora.flower_internals.link_operator`: only the Fleet API answers other hosts), and with
``--roster PATH`` exports the roster's path as ``$FEDLORA_ROSTER`` to the processes the SuperLink
starts, the ServerApp among them (:mod:`fedlora.deploy.roster`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fedlora.deploy.roster import ROSTER_ENV
from fedlora.errors import ConfigError
from fedlora.flower_internals.entry import LOG_FORMAT, parse_with_flower_args
from fedlora.flower_internals.link_hold import (
    DEFAULT_HOLD_S,
    DEFAULT_MAX_HELD,
    FLOWER_REQUEST_THREADS,
    OTHER_REQUEST_THREADS,
    MessageSignal,
    PullHold,
    hold_pulls,
)
from fedlora.flower_internals.link_operator import guard_operator_apis, operator_peers
from fedlora.flower_internals.link_threads import check_threads, size_request_threads
from fedlora.quiet import configure_process_logging

_FLOWER_DEFAULT_HOST = "127.0.0.1"
"""``flower-superlink``'s ``--host`` default in the checked Flower releases."""


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m fedlora.flower_internals.link_superlink",
        description="Run flower-superlink with empty pulls held until a message comes.",
    )
    parser.add_argument(
        "--pull-hold",
        type=float,
        default=DEFAULT_HOLD_S,
        help="longest hold of a pull that finds no message, in seconds (0: none)",
    )
    parser.add_argument(
        "--max-held-pulls",
        type=int,
        default=DEFAULT_MAX_HELD,
        help="pulls held at a time (the request threads are sized to this + 24)",
    )
    parser.add_argument(
        "--roster",
        type=Path,
        metavar="PATH",
        help="the site roster, exported as $FEDLORA_ROSTER to the ServerApp (absolute path)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also Flower's DEBUG lines and one line per request (default: INFO, each once)",
    )
    return parse_with_flower_args(parser, argv)


def flower_host(flower_args: Sequence[str]) -> str:
    """The ``--host`` that ``flower-superlink`` will listen on, given its arguments."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", default=_FLOWER_DEFAULT_HOST)
    known, _ = parser.parse_known_args(list(flower_args))
    return str(known.host)


def export_roster(roster: Path | None) -> None:
    """Give the SuperLink's child processes the roster's path (``$FEDLORA_ROSTER``).

    Raises
    ------
    ConfigError
        When ``roster`` is not absolute (the ServerApp runs in another folder).
    """
    if roster is None:
        os.environ.pop(ROSTER_ENV, None)
        return
    if not roster.is_absolute():
        raise ConfigError(f"--roster must be an absolute path, got {roster}")
    os.environ[ROSTER_ENV] = str(roster)


def held_pulls(hold_s: float, max_held: int) -> PullHold:
    """The SuperLink's pull hold, its request threads sized for ``max_held`` held pulls.

    With holds on, the request pool gets ``max_held`` + ``OTHER_REQUEST_THREADS`` threads
    (:func:`~fedlora.flower_internals.link_threads.size_request_threads`); where this Flower
    cannot be resized, the hold keeps to what Flower's own pool leaves (16 of 40). Call it
    before the operator guard.

    Raises
    ------
    ConfigError
        When ``hold_s`` or ``max_held`` is out of range.
    """
    hold = PullHold(MessageSignal(), hold_s=hold_s, max_held=max_held)
    if hold_s == 0:
        return hold
    if size_request_threads(check_threads(max_held + OTHER_REQUEST_THREADS)):
        return hold
    room = FLOWER_REQUEST_THREADS - OTHER_REQUEST_THREADS
    return PullHold(hold.signal, hold_s=hold_s, max_held=min(max_held, room))


def main(argv: Sequence[str] | None = None) -> None:
    """Start the SuperLink in this process: held pulls, operator-only Control API, roster."""
    args, flower_args = _parse(sys.argv[1:] if argv is None else argv)
    configure_process_logging(LOG_FORMAT, verbose=args.verbose)
    fedlora_logger = logging.getLogger("fedlora")
    try:
        hold = held_pulls(args.pull_hold, args.max_held_pulls)
        export_roster(args.roster)
        # uvicorn trusts X-Forwarded-For from these peers only; never let the environment
        # widen it, or a remote client could claim to be this host.
        os.environ["FORWARDED_ALLOW_IPS"] = _FLOWER_DEFAULT_HOST
        guard_operator_apis(operator_peers(flower_host(flower_args)))
    except ConfigError as error:
        print(f"fedlora: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.roster is not None:
        fedlora_logger.info("site roster for the ServerApp: %s", args.roster)
    if args.pull_hold > 0:
        hold_pulls(hold)
    from flwr.superlink.cli import flower_superlink

    sys.argv = ["flower-superlink", *flower_args]
    try:
        flower_superlink()
    except (
        ConfigError
    ) as error:  # the operator guard found this Flower's app unlike the checked ones
        print(f"fedlora: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
