"""The ``fedlora`` command line: parse, call, print.

Each command lives in its own module (:mod:`fedlora.cli.simulate`, ``report``, ``pki``,
``deploy``); this one builds the parser from them and turns fedlora's own errors into one line
on stderr and exit code 2 (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from fedlora import __version__
from fedlora.cli import assets, budget, deploy, evaluate, pki, report, simulate
from fedlora.errors import FedloraError
from fedlora.quiet import quiet_library_warnings

logger = logging.getLogger("fedlora")

EXIT_USER_ERROR = 2
EXIT_BROKEN_PIPE = 141
"""As a shell reports a command ended by SIGPIPE (128 + 13)."""

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "simulate": simulate.run,
    "report": report.run,
    "pki": pki.run,
    "deploy": deploy.run,
    "assets": assets.run,
    "evaluate": evaluate.run,
    "generate": evaluate.run_generate,
    "budget": budget.run,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fedlora`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="fedlora", description="Private federated fine-tuning of LoRA adapters."
    )
    parser.add_argument("--version", action="version", version=f"fedlora {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True)
    simulate.add_parser(commands)
    report.add_parser(commands)
    pki.add_parser(commands)
    deploy.add_parser(commands)
    assets.add_parser(commands)
    evaluate.add_parser(commands)
    budget.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedlora`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "verbose", False):
        quiet_library_warnings()
    try:
        code = _COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe fails here, inside the handler below
        return code
    except BrokenPipeError:
        # The reader went away (fedlora pki site ... | head): nothing more to say, and no
        # traceback when Python flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except FedloraError as error:
        if args.debug:
            raise
        print(f"fedlora: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("fedlora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
