"""The privacy report as a document: its sections in reading order, and Markdown.

:func:`report_sections` turns the content assembled by :func:`fedlora.report.build.build_report`
into the document model of :mod:`fedlora.report.blocks` that both renderings share:
:func:`render_markdown` here and the HTML page in :mod:`fedlora.report.render`. First the plain
summary (:mod:`fedlora.report.glance`), then the plots, then the statistics
(:mod:`fedlora.report.details`) and the tables behind them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fedlora.report.blocks import (
    Banner,
    Block,
    Bullets,
    Glossary,
    Image,
    Meter,
    Note,
    Protection,
    Section,
    Table,
    Text,
    fmt_epsilon,
    fmt_number,
)
from fedlora.report.details import statistics_section
from fedlora.report.glance import summary_section
from fedlora.report.names import EPSILON_PNG, UTILITY_PNG, repeated_note


def report_title(report: Mapping[str, Any]) -> str:
    """The report's title."""
    return f"Privacy report: run {report['run-id']}"


def report_sections(report: Mapping[str, Any]) -> list[Section]:
    """The report as titled sections of text, lists, tables and images, for rendering.

    Parameters
    ----------
    report
        The content built by :func:`build_report`.

    Returns
    -------
    list of Section
        The summary (warnings, guarantee, each site's budget, what is and is not protected),
        the plots, the statistics with a glossary, then ε per round, utility, refusals,
        central privacy, the site ledgers and the run's facts.
    """
    sections = [
        summary_section(report),
        _plots_section(report),
        statistics_section(report),
        _epsilon_section(report),
        _utility_section(report),
        _refusals_section(report),
    ]
    if report["central-privacy"] is not None:
        sections.append(_central_section(report["central-privacy"]))
    sections += [_ledgers_section(report), _run_section(report)]
    return sections


def _run_section(report: Mapping[str, Any]) -> Section:
    state = str(report["state"])
    if report.get("reason"):
        state += f" ({report['reason']})"
    rows = [
        ("run id", str(report["run-id"])),
        ("state", state),
        ("task", str(report["task"])),
        ("model", str(report["model"])),
        ("base fingerprint", str(report["base-fingerprint"])),
        (
            "rounds recorded",
            f"{fmt_number(report['rounds-recorded'])} of {fmt_number(report['rounds-configured'])}",
        ),
        ("sites", ", ".join(report["sites"]) or "none"),
        ("differential privacy", "on (DP-SGD at every site)" if report["dp"] else "OFF"),
        ("accountant that counts", str(report["accountant"])),
        ("DP mode", str(report["dp-mode"])),
        ("central (client-level) DP", str(report["central-dp"])),
        (
            "individual updates",
            "seen by the coordinator"
            if report.get("coordinator-saw-individual-updates", True)
            else "never seen by the coordinator: secure aggregation (it saw each round's sum)",
        ),
        ("report generated", str(report["generated"])),
    ]
    return Section("Run", (Table(("", ""), tuple(rows)),), key="run")


def _plots_section(report: Mapping[str, Any]) -> Section:
    metric = report["utility"]["metric"]
    return Section(
        "Over the rounds",
        (
            Image(EPSILON_PNG, "ε used per site after each round, with its budget"),
            Text(
                f"One panel per site: its ε used (lifetime, {report['accountant']} accountant) "
                "after each round it trained, on the same scale from 0 for every site; the "
                "dashed line is its budget; × marks a round it declined."
            ),
            Image(UTILITY_PNG, f"federated evaluation {metric} and loss per round"),
            Text(
                "How well the shared adapter does on the sites' held-out data after each round "
                "(round 0: before training), axes from 0."
            ),
        ),
        key="plots",
    )


def _epsilon_section(report: Mapping[str, Any]) -> Section:
    series = report["epsilon-series"]
    rounds = sorted({int(entry["round"]) for entries in series.values() for entry in entries})
    by_site = {
        site: {int(entry["round"]): entry.get("epsilon") for entry in entries}
        for site, entries in series.items()
    }
    rows = tuple(
        (str(number), *(_epsilon_at(by_site[site], number) for site in report["sites"]))
        for number in rounds
    )
    blocks: list[Block] = [
        Text(
            f"Lifetime ε after each round by the {report['accountant']} accountant "
            "(— : the site did not train that round)."
        ),
    ]
    if rows:
        blocks.append(Table(("round", *report["sites"]), rows))
    return Section("ε per round", tuple(blocks), key="epsilon")


def _epsilon_at(values: Mapping[int, Any], number: int) -> str:
    return fmt_epsilon(values[number]) if number in values else "—"


def _utility_section(report: Mapping[str, Any]) -> Section:
    utility = report["utility"]
    metric = utility["metric"]
    rows = tuple(
        (str(entry["round"]), fmt_number(entry["loss"]), fmt_number(entry[metric]))
        for entry in utility["rounds"]
    )
    return Section(
        "Utility",
        (
            Text("Example-weighted evaluation of the global adapter (round 0: before training)."),
            Table(("round", "loss", metric), rows),
        ),
        key="utility",
    )


def _refusals_section(report: Mapping[str, Any]) -> Section:
    refusals = report["refusals"]
    if not refusals:
        return Section("Refusals", (Text("No site refused a round."),), key="refusals")
    rows = tuple(
        (
            str(refusal["round"]),
            str(refusal["site"]),
            fmt_epsilon(refusal.get("epsilon-spent")),
            fmt_epsilon(refusal.get("epsilon-next")),
            fmt_number(refusal.get("budget-epsilon")),
            str(refusal.get("reason") or refusal.get("status") or ""),
        )
        for refusal in refusals
    )
    header = ("round", "site", "ε spent", "ε after the round", "budget", "reason")
    return Section("Refusals", (Table(header, rows),), key="refusals")


def _central_section(central: Mapping[str, Any]) -> Section:
    rows = tuple(
        (
            str(entry["round"]),
            str(entry.get("mode", central["mode"])),
            fmt_number(entry.get("noise-multiplier")),
            fmt_number(entry.get("clip-norm")),
            fmt_number(entry.get("sample-rate")),
            fmt_number(entry.get("delta")),
            fmt_epsilon(entry.get("epsilon-prv")),
            fmt_epsilon(entry.get("epsilon-rdp")),
        )
        for entry in central["rounds"]
    )
    header = ("round", "mode", "σ", "clip norm", "q", "δ", "ε PRV", "ε RDP")
    return Section(
        "Central (client-level) privacy",
        (Text("Client-level ε of the aggregate after each round."), Table(header, rows)),
        key="central",
    )


def _ledgers_section(report: Mapping[str, Any]) -> Section:
    blocks: list[Block] = []
    for site, ledger in report["ledgers"].items():
        status = f"{site}: {ledger['note']}"
        if ledger["path"]:
            status += f" ({ledger['path']})"
        blocks.append(Text(status))
        if ledger["disagreements"]:
            blocks.append(Bullets(tuple(ledger["disagreements"])))
        blocks.extend(Note(repeated_note([site], item)) for item in ledger["repeated-rounds"])
        if ledger["status"] == "verified" and ledger["entries"]:
            blocks.append(_ledger_table(ledger["entries"]))
    return Section("Site ledgers", tuple(blocks), key="ledgers")


def _ledger_table(entries: Iterable[Mapping[str, Any]]) -> Table:
    header = ("run", "round", "steps", "q", "σ", "C", "δ", "ε PRV", "ε RDP", "time")
    rows = tuple(
        (
            str(entry["run-id"]),
            str(entry["round"]),
            fmt_number(entry["steps"]),
            fmt_number(entry["sample-rate"]),
            fmt_number(entry["noise-multiplier"]),
            fmt_number(entry["max-grad-norm"]),
            fmt_number(entry["delta"]),
            fmt_epsilon(entry["epsilon-prv"]),
            fmt_epsilon(entry["epsilon-rdp"]),
            str(entry["time"]),
        )
        for entry in entries
    )
    return Table(header, rows)


# ---- Markdown ----------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_block(block: Block) -> str:
    if isinstance(block, Banner):
        return f"> **WARNING: {block.text}**"
    if isinstance(block, Note):
        return f"> **Note:** {block.text}"
    if isinstance(block, Meter):
        detail = f" ({block.detail})" if block.detail else ""
        return f"- **{block.label}**: {block.text}{detail}"
    if isinstance(block, Protection):
        protected = "\n".join(f"- {item}" for item in block.protected)
        exposed = "\n".join(f"- {item}" for item in block.not_protected)
        return f"**Protected:**\n\n{protected}\n\n**Not protected:**\n\n{exposed}"
    if isinstance(block, Glossary):
        return "**Glossary**\n\n" + "\n".join(f"- **{t}**: {d}" for t, d in block.terms)
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Image):
        return f"![{block.alt}]({block.file})"
    if isinstance(block, Table):
        lines = [
            "| " + " | ".join(_md_cell(cell) for cell in block.header) + " |",
            "|" + "|".join("---" for _ in block.header) + "|",
        ]
        lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in block.rows]
        return "\n".join(lines)
    return f"**{block.text}**" if block.lead else block.text


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown (plots referenced by relative file name).

    Parameters
    ----------
    report
        The content built by :func:`build_report`.

    Returns
    -------
    str
        The Markdown document.
    """
    parts = [f"# {report_title(report)}"]
    for section in report_sections(report):
        parts.append(f"## {section.title}")
        previous: Block | None = None
        for block in section.blocks:
            text = _md_block(block)
            if isinstance(block, Meter) and isinstance(previous, Meter):
                parts[-1] += "\n" + text  # one list, not one list per site
            else:
                parts.append(text)
            previous = block
    return "\n\n".join(parts) + "\n"
