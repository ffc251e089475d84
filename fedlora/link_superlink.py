"""Flower's SuperLink with held pulls.

``python -m fedlora.link_superlink [--pull-hold S] [--max-held-pulls N] -- FLOWER-SUPERLINK-ARGS``
runs ``flower-superlink`` (Flower's own entry point, in this process, with the same arguments)
with one change: a pull that finds no message is held for up to ``--pull-hold`` seconds
(default 1 s; 0: Flower's immediate answers) and answered as soon as a message for it is
stored (:mod:`fedlora.link_hold`). A SuperNode then gets its next instruction, and the
ServerApp its replies, when they are stored rather than at its next poll, and an idle node
makes about one request a second instead of one per poll interval.

Nodes of any kind work with it: a held pull is an ordinary pull answered later, well inside
the 30 s request timeout of Flower's clients. fedlora's warm nodes notice a held pull and ask
again at once (:class:`fedlora.flower_tuning.SupernodeWaits`); plain ``flower-supernode`` nodes
keep their own waits. ``fedlora deploy superlink`` starts the coordinator this way.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fedlora.errors import ConfigError
from fedlora.flower_entry import LOG_FORMAT, parse_with_flower_args
from fedlora.link_hold import DEFAULT_HOLD_S, DEFAULT_MAX_HELD, MessageSignal, PullHold, hold_pulls


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m fedlora.link_superlink",
        description="Run flower-superlink with empty pulls held until a message comes.",
    )
    parser.add_argument(
        "--pull-hold",
        type=float,
        default=DEFAULT_HOLD_S,
        help="longest hold of a pull that finds no message, in seconds (0: none)",
    )
    parser.add_argument(
        "--max-held-pulls", type=int, default=DEFAULT_MAX_HELD, help="pulls held at a time"
    )
    return parse_with_flower_args(parser, argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Start the SuperLink in this process with held pulls."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    fedlora_logger = logging.getLogger("fedlora")
    fedlora_logger.addHandler(handler)
    fedlora_logger.setLevel(logging.INFO)
    args, flower_args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        hold = PullHold(MessageSignal(), hold_s=args.pull_hold, max_held=args.max_held_pulls)
    except ConfigError as error:
        print(f"fedlora: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    hold_pulls(hold)
    from flwr.superlink.cli import flower_superlink

    sys.argv = ["flower-superlink", *flower_args]
    flower_superlink()


if __name__ == "__main__":
    main()
