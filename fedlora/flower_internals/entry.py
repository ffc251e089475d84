"""Running a Flower command's entry point inside a fedlora process.

``python -m fedlora.flower_internals.link_superlink`` and ``python -m
fedlora.flower_internals.node_supernode`` take their own options, then ``--`` and the Flower
command's arguments, change what they change in this process and call Flower's own entry point with
those arguments.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""fedlora's log lines in these processes: with the time, to the millisecond."""


def parse_with_flower_args(
    parser: argparse.ArgumentParser, argv: Sequence[str]
) -> tuple[argparse.Namespace, list[str]]:
    """Parse fedlora's options; everything after them (and after ``--``) is Flower's."""
    parser.add_argument("flower_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(list(argv))
    flower_args = list(args.flower_args)
    if flower_args[:1] == ["--"]:
        flower_args = flower_args[1:]
    return args, flower_args
