"""The report's file names and fixed wording, shared by the assembly and both renderings.

They sit below :mod:`fedlora.report.build`, :mod:`fedlora.report.document` and
:mod:`fedlora.report.render`, so that the renderings never import the module that calls them.
"""

from __future__ import annotations

REPORT_VERSION = 1
JSON_FILE = "privacy_report.json"
MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"
EPSILON_PNG = "epsilon.png"
UTILITY_PNG = "utility.png"

GUARANTEE = (
    "sample-level (ε, δ)-DP per site with respect to that site's own records (each record's "
    "influence on everything the site sent), composed over all rounds of this run and over "
    "the dataset's lifetime"
)
"""The local (DP-SGD) guarantee, in words."""
NO_DP_WARNING = "no differential privacy: run with --no-dp"
LEDGER_NOT_AVAILABLE = "ledger on the site, not available to the coordinator"


def _names(sites: list[str]) -> str:
    return sites[0] if len(sites) == 1 else ", ".join(sites[:-1]) + " and " + sites[-1]


def repeated_note(sites: list[str], item: dict[str, int]) -> str:
    """The report's note on a round that sites trained again after the run was resumed.

    Parameters
    ----------
    sites
        The sites (one or more) with this same history of the round.
    item
        ``{"round", "times", "cut-short"}`` from :func:`fedlora.report.ledgers.repeated_rounds`.

    Returns
    -------
    str
        What happened, and that every attempt's privacy spend is real and counted.
    """
    number, times, cut = item["round"], item["times"], item["cut-short"]
    who = f"{'site' if len(sites) == 1 else 'sites'} {_names(sites)}"
    if times > cut:
        count = "twice" if times == 2 else f"{times} times"
        every = "both" if times == 2 else f"all {times}"
        return (
            f"Round {number} was trained {count} by {who}: the run stopped during that round "
            "and was resumed, and the round ran again. Every attempt spent privacy, so ε used "
            f"counts {every}; this is expected after a resume, not an error."
        )
    return (
        f"Round {number} was trained by {who} before the run stopped during it, and not again "
        "after the resume. That spend is real and is counted in ε used."
    )
