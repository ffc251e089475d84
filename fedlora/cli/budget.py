"""``fedlora budget``: every site's privacy budget at a glance, read from its ledgers.

Reads each ledger under the ledger root (:func:`fedlora.privacy.ledger_summary.ledger_summaries`),
runs nothing and writes nothing, and prints per site and data fingerprint the lifetime ε spent
at the ledger's δ (both accountants' exact recorded values; the ledger's accountant, PRV
unless configured, is the one budgets use), what is left of the budget, the runs and rounds
recorded and whether the ledger verified. ``--json`` prints the same for machines.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from fedlora.config import RunConfig
from fedlora.config.checks import named_values
from fedlora.errors import ConfigError

_DEFAULT_BUDGET = RunConfig().budget_epsilon


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``budget`` to the ``fedlora`` parser."""
    budget = commands.add_parser(
        "budget",
        help="show each site's privacy budget: ε spent, left, runs, ledger verified",
        description=(
            "List every privacy ledger under the ledger root, per site and data fingerprint: "
            "the lifetime ε spent at the ledger's δ (PRV, which budgets use, and RDP, as the "
            "ledger recorded them), what is left of the budget, the runs and rounds recorded, "
            "and whether the ledger verified (hash chain and high-water mark). Runs nothing "
            "and writes nothing."
        ),
    )
    budget.add_argument(
        "--ledger-root",
        metavar="DIR",
        help="where the ledgers are (default: the simulated sites' default ledger root, "
        "$FEDLORA_HOME/ledgers, else $XDG_DATA_HOME/fedlora/ledgers, else "
        "~/.local/share/fedlora/ledgers)",
    )
    budget.add_argument(
        "--budget-epsilon",
        type=float,
        default=_DEFAULT_BUDGET,
        metavar="B",
        help=f"per-site lifetime ε budget to compare against (default {_DEFAULT_BUDGET:g})",
    )
    budget.add_argument(
        "--site-budget",
        action="append",
        default=[],
        metavar="SITE=EPS",
        help="budget of one site (repeat per site)",
    )
    budget.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """``fedlora budget``: print the ledgers' spend as a table (or JSON)."""
    from fedlora.privacy.ledger_storage import default_ledger_root
    from fedlora.privacy.ledger_summary import ledger_summaries

    root = Path(args.ledger_root) if args.ledger_root else default_ledger_root()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--ledger-root {root} is not a folder")
    default = _checked_budget(args.budget_epsilon, "--budget-epsilon")
    per_site = {
        site: _checked_budget(value, f"--site-budget {site}")
        for site, value in named_values(
            tuple(args.site_budget), "--site-budget", "epsilon", float
        ).items()
    }
    rows = []
    for summary in ledger_summaries(root):
        budget = per_site.get(summary.site, default)
        spent = summary.epsilon
        remaining = None if spent is None else budget - spent
        rows.append((summary, budget, remaining))
    if args.json:
        print(json.dumps(_as_json(root, default, rows), indent=2))
        return 0
    if not rows:
        print(f"no privacy ledgers under {root}")
        return 0
    _print_table(root, rows)
    return 0


def _checked_budget(value: float, flag: str) -> float:
    if not (value > 0 and not math.isnan(value)):
        raise ConfigError(f"{flag} must be > 0, got {value}")
    return value


def _as_json(root: Path, default: float, rows: list[tuple[Any, float, float | None]]) -> Any:
    ledgers = []
    for summary, budget, remaining in rows:
        item = summary.to_json()
        item["budget-epsilon"] = budget
        item["remaining-epsilon"] = (
            "-inf" if remaining is not None and math.isinf(remaining) else remaining
        )
        ledgers.append(item)
    return {"ledger-root": str(root), "budget-epsilon": default, "ledgers": ledgers}


def _eps(value: float | None) -> str:
    if value is None:
        return "-"
    return "∞" if math.isinf(value) else f"{value:.3f}"


def _print_table(root: Path, rows: list[tuple[Any, float, float | None]]) -> None:
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    table = Table(
        title=f"privacy budgets in {escape(str(root))}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("site / data", overflow="fold", ratio=1, min_width=12)
    table.add_column("δ", no_wrap=True)
    table.add_column("ε PRV", justify="right", no_wrap=True)
    table.add_column("ε RDP", justify="right", no_wrap=True)
    table.add_column("budget", justify="right", no_wrap=True)
    table.add_column("left", justify="right", no_wrap=True)
    table.add_column("runs", justify="right", no_wrap=True)
    table.add_column("rounds", justify="right", no_wrap=True)
    table.add_column("verified", no_wrap=True)
    problems = []
    for summary, budget, remaining in rows:
        tag = "" if summary.state == "active" else f" ({summary.state})"
        fingerprint = escape(summary.data_fingerprint[:12] or "?")
        label = f"{escape(summary.site)}{tag}\n[dim]{fingerprint}[/dim]"
        if summary.verified:
            status = "yes"
        else:
            status = "[bold red]NO[/]"
            problems.append(summary)
        left = _eps(remaining)
        if remaining is not None and remaining <= 0:
            left = f"[red]{left}[/]"
        used_prv, used_rdp = _eps(summary.epsilon_prv), _eps(summary.epsilon_rdp)
        if summary.accountant == "rdp":
            used_rdp = f"[bold]{used_rdp}[/]"
        else:
            used_prv = f"[bold]{used_prv}[/]"
        table.add_row(
            label,
            "-" if summary.delta is None else f"{summary.delta:.3g}",
            used_prv,
            used_rdp,
            f"{budget:g}",
            left,
            str(summary.runs) if summary.verified else "-",
            str(summary.rounds) if summary.verified else "-",
            status,
        )
    console.print(table)
    console.print(
        "ε is the lifetime spend of the site's data at the ledger's δ; budgets use the "
        "accountant in bold (PRV unless configured), left = budget - ε."
    )
    for summary in problems:
        console.print(
            f"[red]NOT verified[/] {escape(summary.site)} ({escape(str(summary.path))}): "
            f"{escape(summary.problem or '')}"
        )
