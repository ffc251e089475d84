"""What ``fedlora simulate`` says when every site declined a round for its privacy budget.

The sites' refusals, as the round's ``metrics.jsonl`` line recorded them (each site's lifetime
ε spent, what the run would bring it to, its budget and what is left: the sites' own exact
values), and the δ of their ledgers become one detail line per site, printed before the
error, and the error line itself: each site's remaining budget and the ways forward that are
true for it (docs/privacy.md: budgets are lifetime caps of a data file's ledger, so another
run on the same data cannot reset them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedlora.config import RunConfig
from fedlora.errors import FedloraError

logger = logging.getLogger(__name__)


def budget_refusals(metrics: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The budget refusals of the run's last round line, by site (empty when none)."""
    if not metrics:
        return {}
    refused = metrics[-1].get("refused") or {}
    return {
        site: dict(detail)
        for site, detail in sorted(refused.items())
        if detail.get("status") == "budget-exhausted"
    }


def site_lines(refused: Mapping[str, Mapping[str, Any]], deltas: Mapping[str, float]) -> list[str]:
    """One line per declining site: ε spent of its budget at its δ, left, and the run's ask."""
    lines = []
    for site, detail in refused.items():
        spent, budget = float(detail["epsilon-spent"]), float(detail["budget-epsilon"])
        left = float(detail.get("budget-left", budget - spent))
        planned = float(detail.get("epsilon-planned", detail.get("epsilon-next", spent)))
        rounds = int(detail.get("rounds-planned", 1))
        lines.append(
            f"site {site}: ε {spent:.4g} spent of its budget {budget:g}{_at(deltas.get(site))}, "
            f"{_left(left)}; this run's {rounds} round(s) would bring it to {planned:.4g}"
        )
    return lines


def budget_error(
    reason: str, refused: Mapping[str, Mapping[str, Any]], deltas: Mapping[str, float]
) -> str:
    """The one error line: why the run stopped, each site's budget left, the ways forward."""
    left = {site: float(detail.get("budget-left", 0.0)) for site, detail in refused.items()}
    budgets = ", ".join(
        f"{site} {_eps(value)} of {float(refused[site]['budget-epsilon']):g}{_at(deltas.get(site))}"
        for site, value in left.items()
    )
    ways = ["`fedlora budget` lists every ledger's spend"]
    if any(value > 0 for value in left.values()):
        ways.append(
            "fit the run into what is left: a lower --target-epsilon, fewer --rounds, or "
            "--fit-budget (more noise per round)"
        )
    ways.append("raise --budget-epsilon / --site-budget only if your privacy policy allows it")
    ways.append(
        "or train on other data, which has its own ledger (for a built-in scenario, another "
        "--seed generates other data); the same data keeps its spend across runs"
    )
    return f"{reason}; budget left: {budgets}; ways forward: {'; '.join(ways)}"


def ledger_deltas(config: RunConfig, sites: Mapping[str, Path]) -> dict[str, float]:
    """The δ of each site's active ledger for its training file (sites whose ledger is found).

    ``sites`` maps a site's name to its training file: a simulated site's ledger is the
    ledger root's ledger of that site and that file's data fingerprint.
    """
    from fedlora.privacy.ledger_storage import data_fingerprint, default_ledger_root
    from fedlora.privacy.ledger_summary import ledger_summaries

    root = Path(config.ledger_root) if config.ledger_root else default_ledger_root()
    try:
        wanted = {(name, data_fingerprint(path)) for name, path in sites.items()}
        summaries = ledger_summaries(root)
    except (OSError, FedloraError) as exc:
        logger.info("no ledger δ for the budget message: %s", exc)
        return {}
    return {
        s.site: s.delta
        for s in summaries
        if s.state == "active" and s.delta is not None and (s.site, s.data_fingerprint) in wanted
    }


def _at(delta: float | None) -> str:
    return "" if delta is None else f" at δ {delta:.3g}"


def _left(left: float) -> str:
    return "nothing left" if left <= 0 else f"{left:.4g} left"


def _eps(value: float) -> str:
    return "0" if value <= 0 else f"{value:.4g}"
