"""The report's statistics, for whoever checks them: both accountants, q, σ, C, steps, a glossary.

The first screen (:mod:`fedlora.report.glance`) gives one ε per site; this section shows where
it comes from: the settings each site trained with, ε by both accountants (and which one
counts), the rounds and the ledger check, and the words used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedlora.report.blocks import (
    Block,
    Bullets,
    Glossary,
    Section,
    Table,
    Text,
    fmt_epsilon,
    fmt_number,
)

GLOSSARY: tuple[tuple[str, str], ...] = (
    (
        "ε (epsilon)",
        "how much what a site sent may depend on any one of its records: 0 would be perfect "
        "privacy, larger is weaker. It adds up over rounds and over runs on the same data.",
    ),
    (
        "δ (delta)",
        "the small probability with which the ε bound may fail. Each site sets its own, well "
        "below one over its number of records.",
    ),
    (
        "budget",
        "the most ε a site's data may ever spend, all runs together. A site declines a round "
        "that would take it past its budget.",
    ),
    (
        "ε used (lifetime ε)",
        "the ε of everything trained on a site's data, every run included, as its ledger "
        "records it. ε (this run) counts only this run's rounds.",
    ),
    ("q (sample rate)", "the chance that a record is drawn into a training step's batch."),
    (
        "σ (noise multiplier)",
        "how much random (Gaussian) noise is added to each step, relative to C. More noise "
        "gives a smaller ε.",
    ),
    (
        "C (clipping norm)",
        "each record's contribution (its gradient) is cut down to at most this size before "
        "the noise is added, which bounds what any one record can change.",
    ),
    ("steps", "training steps the site took in this run; every step spends some privacy."),
    (
        "PRV and RDP",
        "two accountants (Opacus) that add up ε over the steps from q, σ and δ. PRV (privacy "
        "random variables) is numerically tight; RDP (Rényi DP) is a simpler bound, usually "
        "larger. Both are correct upper bounds; one of them is the one that counts.",
    ),
    (
        "ledger",
        "the site's own append-only, hash-chained record of every round trained on its data. "
        "Verified: the chain is intact and matches what this run recorded.",
    ),
    (
        "sample-level, client-level",
        "sample-level DP protects each single record; client-level (central) DP, when on, "
        "protects a site's whole contribution in the released adapters.",
    ),
)


def _counting_text(report: Mapping[str, Any]) -> str:
    counted = str(report["accountant"])
    other = "rdp" if counted == "prv" else "prv"
    return (
        "Two accountants measure ε from the same q, σ, δ and steps. The "
        f"{counted.upper()} accountant's ε is the one that counts (run setting accountant = "
        f"{counted}): the budgets, ε used on the first screen and every refusal use it. The "
        f"{other.upper()} ε is shown beside it as a cross-check; the two are different upper "
        "bounds on the same training, so they differ."
    )


def _settings_table(report: Mapping[str, Any]) -> Table:
    header = ("site", "records", "q", "σ", "C", "steps (this run)", "δ")
    rows = tuple(
        (
            str(row["site"]),
            fmt_number(row["records"]),
            fmt_number(row["q"]),
            fmt_number(row["sigma"]),
            fmt_number(row["C"]),
            fmt_number(row["steps"]),
            fmt_number(row["delta"]),
        )
        for row in report["summary"]
    )
    return Table(header, rows)


def _epsilon_table(report: Mapping[str, Any]) -> Table:
    header = (
        "site", "ε PRV (this run)", "ε RDP (this run)", "ε PRV (lifetime)", "ε RDP (lifetime)",
        "counts", "budget", "budget left",
    )  # fmt: skip
    rows = []
    for row in report["summary"]:
        trained = row["lifetime-source"] is not None
        rows.append(
            (
                str(row["site"]),
                fmt_epsilon(row["epsilon-prv"], present=trained),
                fmt_epsilon(row["epsilon-rdp"], present=trained),
                fmt_epsilon(row["lifetime-epsilon-prv"], present=trained),
                fmt_epsilon(row["lifetime-epsilon-rdp"], present=trained),
                str(row["accountant"]).upper(),
                fmt_number(row["budget"]),
                fmt_number(row["budget-left"]),
            )
        )
    return Table(header, tuple(rows))


def _ledger_cell(row: Mapping[str, Any]) -> str:
    if not row["ledger-available"]:
        return "not available to the coordinator"
    if row["ledger-agrees"] is None:
        return "—"
    if not row["ledger-agrees"]:
        return "does not match: see Site ledgers"
    repeats = row.get("repeated-rounds") or []
    if repeats:
        rounds = ", ".join(str(item["round"]) for item in repeats)
        return f"verified; round {rounds} trained again after a resume (both counted)"
    return "verified"


def _rounds_table(report: Mapping[str, Any]) -> Table:
    header = ("site", "rounds trained", "rounds declined", "ledger")
    rows = tuple(
        (
            str(row["site"]),
            str(row["rounds-trained"]),
            str(row["rounds-refused"]),
            _ledger_cell(row),
        )
        for row in report["summary"]
    )
    return Table(header, rows)


def statistics_section(report: Mapping[str, Any]) -> Section:
    """Details: which ε counts, the formal guarantee, per-site settings and ε, a glossary.

    Parameters
    ----------
    report
        The content built by :func:`fedlora.report.build.build_report`.

    Returns
    -------
    Section
        The ``details`` section.
    """
    guarantee = report["guarantee"]
    blocks: list[Block] = []
    if guarantee["sample-level"]:
        blocks.append(Text(_counting_text(report)))
        blocks.append(Text(f"Formally, each site that trained gives {guarantee['sample-level']}."))
    else:
        blocks.append(Text("No differential privacy in this run: no ε is measured."))
    if guarantee["client-level"]:
        blocks.append(Text(f"In addition, the run gives {guarantee['client-level']}."))
    blocks += [_settings_table(report), _epsilon_table(report), _rounds_table(report)]
    notes = [
        f"site {row['site']}: {', '.join(row['varying'])} changed between rounds; "
        "the tables show the last round's value"
        for row in report["summary"]
        if row["varying"]
    ]
    if notes:
        blocks.append(Bullets(tuple(notes)))
    blocks.append(Glossary(GLOSSARY))
    return Section("Details: the statistics", tuple(blocks), key="details")
