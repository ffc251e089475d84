"""The report's first screen: each site's budget in one sentence, the guarantee, its limits.

Written for a reader who is not a statistician: the numbers are those of the report (ε used is
each site's lifetime ε by the accountant that counts), the statistics behind them are in
:mod:`fedlora.report.details`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedlora.report.blocks import (
    Banner,
    Block,
    Meter,
    Note,
    Protection,
    Section,
    Text,
    fmt_epsilon,
    fmt_number,
    is_number,
)

GUARANTEE_PLAIN = (
    "Each site's training records are protected by differential privacy: for any one record, "
    "everything the site sent, in this run and in every earlier run on the same data, is almost "
    "as likely to have come out without that record (at most e^ε times more likely, except "
    "with probability δ), so a smaller ε means stronger protection."
)
"""The one guarantee sentence of a DP run, in plain words."""
NO_GUARANTEE_PLAIN = (
    "This run trained without differential privacy: nothing limits what the shared adapters "
    "reveal about the sites' training records."
)
LOW_SHARE = 0.1
"""A site with less than this share of its budget left is marked as running low."""


def _state(used: Any, budget: Any, left: Any) -> tuple[float | None, str]:
    if not (is_number(used) and is_number(budget)) or budget <= 0:
        return None, "none"
    share = float(used) / float(budget)
    if share > 1 or (is_number(left) and left < 0):
        return share, "over"
    if is_number(left) and left < LOW_SHARE * budget:
        return share, "low"
    return share, "ok"


def _rounds_phrase(row: Mapping[str, Any]) -> str:
    trained, refused = int(row["rounds-trained"]), int(row["rounds-refused"])
    phrase = f"trained {trained} round{'s' if trained != 1 else ''}"
    if refused:
        phrase += f", declined {refused} at its budget"
    return phrase


def site_meter(row: Mapping[str, Any], refusals: list[Mapping[str, Any]], dp: bool) -> Meter:
    """One site's line: ``ε used X of budget Y (δ …); Z left`` and how it took part.

    Parameters
    ----------
    row
        The site's summary row of the report.
    refusals
        The site's refusals in this run (the ε it had spent, when it never trained).
    dp
        Whether the run trained with differential privacy.

    Returns
    -------
    Meter
        The sentence and the share of the budget used.
    """
    site = str(row["site"])
    if not dp:
        return Meter(site, "no differential privacy", None, "none", _rounds_phrase(row))
    budget = row["budget"]
    if row["lifetime-source"] is None:
        if refusals:
            spent = refusals[-1].get("epsilon-spent")
            used, state = _state(spent, budget, None)
            text = (
                f"ε used {fmt_epsilon(spent)} of budget {fmt_number(budget)}: declined every "
                f"round ({len(refusals)}), as one more would exceed its budget"
            )
            return Meter(site, text, used, "over" if state == "over" else "low")
        return Meter(site, "did not train in this run: no privacy spent here", None, "none")
    used_eps, left = row["epsilon-used"], row["budget-left"]
    text = f"ε used {fmt_epsilon(used_eps)}"
    text += f" of budget {fmt_number(budget)}" if budget is not None else " (no budget set)"
    text += f" (δ = {fmt_number(row['delta'])})"
    if left is not None:
        text += f"; {fmt_number(left)} left"
    if used_eps is None:
        text += " (ε is infinite: no privacy)"
    used, state = _state(used_eps, budget, left)
    return Meter(site, text, used, state, _rounds_phrase(row))


def _protection(report: Mapping[str, Any]) -> Protection:
    guarantee = report["guarantee"]
    protected = []
    if guarantee["sample-level"]:
        protected.append(
            "each single training record of each site that trained, in everything that site "
            "sent (its adapter updates): the guarantee above, per site at its own ε and δ"
        )
    central = report.get("central-privacy") or {}
    final = central.get("final")
    if guarantee["client-level"]:
        protected.append(
            "each site's whole contribution (all its records at once), in the released global "
            "adapters: client-level differential privacy"
            + (
                f", ε {fmt_epsilon(final.get('epsilon-prv'))} at δ {fmt_number(final.get('delta'))}"
                if final
                else ""
            )
        )
    if not protected:
        protected.append("nothing: no differential privacy in this run")
    return Protection(tuple(protected), tuple(guarantee["not-protected"]))


def _status_line(report: Mapping[str, Any]) -> str:
    state = str(report["state"])
    if report.get("reason"):
        state += f" ({report['reason']})"
    count = len(report["sites"])
    return (
        f"Run {report['run-id']}: {state}; {fmt_number(report['rounds-recorded'])} of "
        f"{fmt_number(report['rounds-configured'])} rounds; {count} site"
        f"{'s' if count != 1 else ''}."
    )


def summary_section(report: Mapping[str, Any]) -> Section:
    """The first screen: warnings, the guarantee, each site's budget, notes, what is covered.

    Parameters
    ----------
    report
        The content built by :func:`fedlora.report.build.build_report`.

    Returns
    -------
    Section
        The ``summary`` section.
    """
    blocks: list[Block] = [Banner(warning) for warning in report["warnings"]]
    blocks.append(Text(_status_line(report)))
    dp = bool(report["dp"])
    blocks.append(Text(GUARANTEE_PLAIN if dp else NO_GUARANTEE_PLAIN, lead=True))
    if dp:
        blocks.append(
            Text(
                "ε used is each site's whole lifetime spend on its data (this run and every "
                f"earlier run), by the {str(report['accountant']).upper()} accountant, which "
                "is the one that counts."
            )
        )
    for row in report["summary"]:
        refusals = [r for r in report["refusals"] if r["site"] == row["site"]]
        blocks.append(site_meter(row, refusals, dp))
    blocks.extend(Note(note) for note in report.get("notes", []))
    blocks.append(_protection(report))
    return Section("Summary", tuple(blocks), key="summary")
