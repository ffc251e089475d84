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
