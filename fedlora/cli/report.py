"""``fedlora report RUN_DIR [--pdf]``: the privacy-budget report of a run."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report`` to the ``fedlora`` parser."""
    report = commands.add_parser(
        "report",
        help="write the privacy-budget report of a run",
        description=(
            "Write RUN_DIR/report/: report.html (self-contained, print-ready: plain summary "
            "first, statistics and glossary below, plots embedded), report.md, "
            "privacy_report.json, epsilon.png and utility.png."
        ),
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/<run-id>")
    report.add_argument(
        "--pdf",
        action="store_true",
        help="also print report.html to report.pdf with the Chromium or Chrome on PATH",
    )


def run(args: argparse.Namespace) -> int:
    """``fedlora report RUN_DIR``: write the privacy report and print where it is."""
    from fedlora.report.build import HTML_FILE, JSON_FILE, MARKDOWN_FILE, write_report

    out = write_report(Path(args.run_dir))
    for name in (HTML_FILE, MARKDOWN_FILE, JSON_FILE):
        print(f"{name}: {out / name}")
    if args.pdf:
        from fedlora.report.pdf import PDF_FILE, print_pdf

        print(f"{PDF_FILE}: {print_pdf(out / HTML_FILE)}")
    return 0
