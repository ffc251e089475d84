"""The privacy report as a document: titled sections of text, tables and images, and Markdown.

:func:`report_sections` turns the content assembled by :func:`fedlora.report.build.build_report`
into a small document model that both renderings share: :func:`render_markdown` here and the HTML
page in :mod:`fedlora.report.render`. Numbers are shown to 4 significant digits; ``∞`` for an
infinite ε.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fedlora.report.names import EPSILON_PNG, NO_DP_WARNING, UTILITY_PNG

# ---- document model shared by the Markdown and HTML renderings ----------------------------


@dataclass(frozen=True)
class Text:
    """A paragraph."""

    text: str


@dataclass(frozen=True)
class Banner:
    """A warning banner."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """A bulleted list."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A table of already-formatted cells."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    """A picture next to the report, by relative file name."""

    file: str
    alt: str


Block = Text | Banner | Bullets | Table | Image


@dataclass(frozen=True)
class Section:
    """A titled part of the report."""

    title: str
    blocks: tuple[Block, ...]


def fmt_number(value: Any) -> str:
    """A number to 4 significant digits for display; ``—`` for a missing value."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fmt_epsilon(value: Any, *, present: bool = True) -> str:
    """An ε for display: ``∞`` for ``None`` (infinite) when the value is expected."""
    if value is None:
        return "∞" if present else "—"
    return fmt_number(value)


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
        Warnings first, then run, guarantee, sites, ε, utility, refusals, central privacy
        and ledgers.
    """
    sections = []
    if report["warnings"]:
        sections.append(Section("Warnings", tuple(Banner(w) for w in report["warnings"])))
    sections += [
        _run_section(report),
        _guarantee_section(report),
        _sites_section(report),
        _epsilon_section(report),
        _utility_section(report),
        _refusals_section(report),
    ]
    if report["central-privacy"] is not None:
        sections.append(_central_section(report["central-privacy"]))
    sections.append(_ledgers_section(report))
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
        ("accountant", f"{report['accountant']} (budgets and refusals use it)"),
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
    return Section("Run", (Table(("", ""), tuple(rows)),))


def _guarantee_section(report: Mapping[str, Any]) -> Section:
    guarantee = report["guarantee"]
    blocks: list[Block] = []
    if guarantee["sample-level"]:
        blocks.append(Text(f"Each site that trained gives {guarantee['sample-level']}."))
        blocks.append(
            Text(
                "ε is reported at each site's own δ by both Opacus accountants (PRV and RDP); "
                "lifetime ε counts every run recorded in the site's ledger for the same data. "
                "A site refuses a round that would take its lifetime ε past its budget."
            )
        )
    else:
        blocks.append(
            Text(
                f"None ({NO_DP_WARNING}): no formal privacy guarantee covers the sites' "
                "training records."
            )
        )
    if guarantee["client-level"]:
        blocks.append(Text(f"In addition, the run gives {guarantee['client-level']}."))
    blocks.append(Text("Not protected:"))
    blocks.append(Bullets(tuple(guarantee["not-protected"])))
    return Section("Guarantee", tuple(blocks))


def _ledger_cell(row: Mapping[str, Any]) -> str:
    if not row["ledger-available"]:
        return "not available"
    return {True: "agrees", False: "DISAGREES", None: "—"}[row["ledger-agrees"]]


def _sites_section(report: Mapping[str, Any]) -> Section:
    header = (
        "site", "records", "q", "σ", "C", "steps", "δ", "ε PRV (run)", "ε RDP (run)",
        "ε PRV (lifetime)", "ε RDP (lifetime)", "accountant", "budget", "budget left",
        "rounds trained", "rounds refused", "ledger",
    )  # fmt: skip
    rows = []
    for row in report["summary"]:
        trained = row["lifetime-source"] is not None
        rows.append(
            (
                str(row["site"]),
                fmt_number(row["records"]),
                fmt_number(row["q"]),
                fmt_number(row["sigma"]),
                fmt_number(row["C"]),
                fmt_number(row["steps"]),
                fmt_number(row["delta"]),
                fmt_epsilon(row["epsilon-prv"], present=trained),
                fmt_epsilon(row["epsilon-rdp"], present=trained),
                fmt_epsilon(row["lifetime-epsilon-prv"], present=trained),
                fmt_epsilon(row["lifetime-epsilon-rdp"], present=trained),
                str(row["accountant"]),
                fmt_number(row["budget"]),
                fmt_number(row["budget-left"]),
                str(row["rounds-trained"]),
                str(row["rounds-refused"]),
                _ledger_cell(row),
            )
        )
    notes = [
        f"site {row['site']}: {', '.join(row['varying'])} changed between rounds; "
        "the table shows the last round's value"
        for row in report["summary"]
        if row["varying"]
    ]
    blocks: list[Block] = [Table(header, tuple(rows))]
    if notes:
        blocks.append(Bullets(tuple(notes)))
    return Section("Sites", tuple(blocks))


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
        Image(EPSILON_PNG, "lifetime ε per site per round, budgets dashed"),
        Text(
            f"Lifetime ε after each round by the {report['accountant']} accountant "
            "(— : the site did not train that round)."
        ),
    ]
    if rows:
        blocks.append(Table(("round", *report["sites"]), rows))
    return Section("ε per round", tuple(blocks))


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
            Image(UTILITY_PNG, f"federated evaluation {metric} and loss per round"),
            Text("Example-weighted evaluation of the global adapter (round 0: before training)."),
            Table(("round", "loss", metric), rows),
        ),
    )


def _refusals_section(report: Mapping[str, Any]) -> Section:
    refusals = report["refusals"]
    if not refusals:
        return Section("Refusals", (Text("No site refused a round."),))
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
    return Section("Refusals", (Table(header, rows),))


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
        if ledger["status"] == "verified" and ledger["entries"]:
            blocks.append(_ledger_table(ledger["entries"]))
    return Section("Site ledgers", tuple(blocks))


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
    return block.text


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
        parts.extend(_md_block(block) for block in section.blocks)
    return "\n\n".join(parts) + "\n"
