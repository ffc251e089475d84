"""``fedlora report RUN_DIR``: the privacy-budget report of a run."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report`` to the ``fedlora`` parser."""
    report = commands.add_parser(
        "report",
        help="write the privacy-budget report of a run",
        description=(
            "Write RUN_DIR/report/: privacy_report.json, report.md, report.html, epsilon.png "
            "and utility.png (per-site ε, budgets, refusals, ledgers, utility, guarantee)."
        ),
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/<run-id>")


def run(args: argparse.Namespace) -> int:
    """``fedlora report RUN_DIR``: write the privacy report and print where it is."""
    from fedlora.report.build import HTML_FILE, JSON_FILE, MARKDOWN_FILE, write_report

    out = write_report(Path(args.run_dir))
    for name in (HTML_FILE, MARKDOWN_FILE, JSON_FILE):
        print(f"{name}: {out / name}")
    return 0
