"""The privacy-budget report of a run directory: what each site spent and what it guarantees.

:func:`build_report` reads ``runs/<run-id>/`` through :class:`fedlora.rundir.RunDirectoryReader`
and, where the coordinator can read them (a simulation), the sites' privacy ledgers
(:mod:`fedlora.report.ledgers`), and assembles ``privacy_report.json``. :func:`write_report`
writes it with ``report.md``, ``report.html`` (self-contained, print-ready) and two plots into
``runs/<run-id>/report/``.

Numbers are copied from the inputs exactly: ε is never recomputed, rounded or given a margin
here (the Markdown and HTML renderings show 4 significant digits). ``null`` ε means infinite,
as in the run's metrics.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedlora.errors import RunDirError
from fedlora.io import atomic_write_json, atomic_write_text
from fedlora.report.document import render_markdown
from fedlora.report.names import (
    GUARANTEE,
    HTML_FILE,
    JSON_FILE,
    MARKDOWN_FILE,
    NO_DP_WARNING,
    REPORT_VERSION,
    repeated_note,
)
from fedlora.report.sites import refusal_records, site_detail, site_names
from fedlora.rundir import METRICS_FILE, STATUS_FILE, RunDirectoryReader

__all__ = ["HTML_FILE", "JSON_FILE", "MARKDOWN_FILE", "build_report", "write_report"]

logger = logging.getLogger(__name__)

_NOT_PROTECTED_COMMON = (
    "the base model, and anything it already contains: only the sites' training records are "
    "covered",
    "evaluation metrics (loss, accuracy, perplexity) that sites send in clear: they are "
    "computed on held-out data and are not covered by the DP guarantee",
    "the data itself at the site: its storage, access control and copies are the site's "
    "responsibility",
    "timing, the number of records, steps and rounds, and whether a site took part in or "
    "refused a round (a refusal reveals that a budget was reached)",
    "a person with several records, or records shared by several sites: the unit of privacy "
    "is one record of one site",
)


def _utility(metrics: Sequence[Mapping[str, Any]], task: str) -> dict[str, Any]:
    metric = "accuracy" if task == "classification" else "perplexity"
    rounds = []
    for record in metrics:
        evaluation = record.get("eval") or {}
        rounds.append(
            {
                "round": record["round"],
                "loss": evaluation.get("loss"),
                metric: evaluation.get(metric),
                "num-examples": evaluation.get("num-examples"),
                "num-sites": evaluation.get("num-sites"),
            }
        )
    return {"metric": metric, "rounds": rounds}


def _central(metrics: Sequence[Mapping[str, Any]], mode: str) -> dict[str, Any] | None:
    rounds = [
        {**dict(record["central-privacy"]), "round": record["round"]}
        for record in metrics
        if isinstance(record.get("central-privacy"), dict)
    ]
    if not rounds:
        return None if mode in ("", "off") else {"mode": mode, "rounds": [], "final": None}
    return {"mode": rounds[-1].get("mode", mode), "rounds": rounds, "final": rounds[-1]}


def _guarantee(dp: bool, central: Mapping[str, Any] | None, secure: bool) -> dict[str, Any]:
    client_level = None
    if central is not None:
        clipping = (
            "each site clips its own update before masking it (secure aggregation) and the "
            "coordinator adds Gaussian noise to their sum "
            if secure
            else "the coordinator clips each site's update and adds Gaussian noise to the "
            "aggregate "
        )
        client_level = (
            "client-level (ε, δ)-DP with respect to each site's whole contribution (all of its "
            f"records at once), composed over all rounds of this run: {clipping}"
            f"(central-dp = {central['mode']}; see central-privacy for ε, δ, σ and the clip "
            "norm). It protects the released global adapters, not a site's update as the "
            "coordinator receives it"
        )
    if central is None:
        whole_site = (
            "membership of a whole site in the federation, and properties of a site's data as a "
            "whole: there is no client-level (central) DP in this run"
        )
    else:
        seen = "the sum of the sites' updates" if secure else "a site's individual update"
        whole_site = (
            f"{seen} as the coordinator sees it before adding noise: the client-level "
            "guarantee assumes an honest coordinator"
        )
    return {
        "dp": dp,
        "sample-level": GUARANTEE if dp else None,
        "client-level": client_level,
        "not-protected": [
            *([] if dp else ["the sites' training records: no differential privacy"]),
            whole_site,
            *_NOT_PROTECTED_COMMON,
        ],
    }


def _infinite(entry: Mapping[str, Any], keys: Sequence[str]) -> bool:
    """Whether any ε under ``keys`` that ``entry`` has is infinite (``None`` or ``inf``)."""
    return any(key in entry and (entry[key] is None or entry[key] == math.inf) for key in keys)


def _warnings(
    dp: bool, sites: Mapping[str, Mapping[str, Any]], central_mode: str, central_rounds: int
) -> list[str]:
    warnings = [] if dp else [NO_DP_WARNING]
    for site, detail in sites.items():
        row, ledger = detail["row"], detail["ledger"]
        if dp and len(detail["series"]) < len(detail["rounds-trained"]):
            warnings.append(f"site {site} trained rounds without a privacy record")
        lifetime = ("lifetime-epsilon-prv", "lifetime-epsilon-rdp")
        per_round = ("epsilon", "epsilon-prv", "epsilon-rdp")
        if (row["lifetime-source"] and _infinite(row, lifetime)) or any(
            _infinite(entry, per_round) for entry in detail["series"]
        ):
            warnings.append(f"site {site}: ε is infinite (noise multiplier 0): no privacy")
        if ledger["status"] == "invalid":
            warnings.append(f"site {site}: privacy ledger is invalid: {ledger['note']}")
        elif ledger["agrees"] is False:
            warnings.append(f"site {site}: privacy ledger and {METRICS_FILE} disagree")
    if central_mode not in ("", "off") and not central_rounds:
        warnings.append(f"central-dp is {central_mode} but {METRICS_FILE} records no central ε")
    return warnings


def _notes(sites: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One note per round that sites trained again after a resume (grouped by history)."""
    grouped: dict[tuple[int, int, int], list[str]] = {}
    for site, detail in sites.items():
        for item in detail["ledger"]["repeated-rounds"]:
            key = (item["round"], item["times"], item["cut-short"])
            grouped.setdefault(key, []).append(site)
    return [
        repeated_note(names, {"round": number, "times": times, "cut-short": cut})
        for (number, times, cut), names in sorted(grouped.items())
    ]


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` (the report's "infinite"), strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _read_status(reader: RunDirectoryReader) -> dict[str, Any]:
    try:
        return reader.read_status()
    except RunDirError as exc:
        logger.warning("%s; reporting the run as incomplete", exc)
        return {"state": "incomplete", "reason": f"no readable {STATUS_FILE}", "updated": None}


def build_report(run_dir: Path) -> dict[str, Any]:
    """Assemble the privacy report of a run directory (the content of ``privacy_report.json``).

    Parameters
    ----------
    run_dir
        A run directory ``runs/<run-id>/`` with ``config.json`` and (usually) ``status.json``
        and ``metrics.jsonl``.

    Returns
    -------
    dict
        Run summary, the guarantee in words, one summary row per site, per-site per-round ε,
        utility per round, refusals, central privacy (or ``None``), the sites' ledgers,
        warnings and notes (rounds a site trained again after a resume: real, counted spend).
        Every number is the input's own value; ``None`` ε means infinite.

    Raises
    ------
    RunDirError
        When the run directory or its ``config.json`` is missing or unreadable, or a line of
        ``metrics.jsonl`` is not a JSON object with an integer round (naming the line).
    """
    reader = RunDirectoryReader(run_dir)
    resolved = reader.read_config()
    status = _read_status(reader)
    metrics = reader.read_metrics()
    flat: dict[str, Any] = resolved["config"]
    run_id = str(resolved.get("run-id") or run_dir.name)
    dp = bool(flat.get("dp", True))
    central_mode = str(flat.get("central-dp", "off"))
    refusals = refusal_records(metrics)
    context = {"flat": flat, "accountant": flat.get("accountant")}
    sites = {
        site: site_detail(site, run_id, metrics, refusals, context)
        for site in site_names(resolved, metrics)
    }
    central = _central(metrics, central_mode)
    warnings = _warnings(dp, sites, central_mode, len(central["rounds"]) if central else 0)
    for warning in warnings:
        logger.warning("run %s: %s", run_id, warning)
    report = {
        "report-version": REPORT_VERSION,
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run-id": run_id,
        "run-dir": str(run_dir),
        "state": status.get("state"),
        "reason": status.get("reason"),
        "updated": status.get("updated"),
        "task": flat.get("task"),
        "model": flat.get("model"),
        "base-fingerprint": resolved.get("base-fingerprint"),
        "rounds-configured": flat.get("rounds"),
        "rounds-recorded": max((int(r["round"]) for r in metrics), default=None),
        "dp": dp,
        "accountant": flat.get("accountant"),
        "dp-mode": flat.get("dp-mode"),
        "budget-epsilon": flat.get("budget-epsilon"),
        "max-grad-norm": flat.get("max-grad-norm"),
        "central-dp": central_mode,
        "secure-aggregation": bool(flat.get("secure-aggregation", False)),
        "coordinator-saw-individual-updates": not flat.get("secure-aggregation", False),
        "sites": list(sites),
        "guarantee": _guarantee(dp, central, bool(flat.get("secure-aggregation", False))),
        "summary": [detail["row"] for detail in sites.values()],
        "epsilon-series": {site: detail["series"] for site, detail in sites.items()},
        "rounds-trained": {site: detail["rounds-trained"] for site, detail in sites.items()},
        "rounds-refused": {site: detail["rounds-refused"] for site, detail in sites.items()},
        "utility": _utility(metrics, str(flat.get("task", ""))),
        "refusals": refusals,
        "central-privacy": central,
        "ledgers": {site: detail["ledger"] for site, detail in sites.items()},
        "warnings": warnings,
        "notes": _notes(sites),
    }
    return dict(_json_safe(report))


def write_report(run_dir: Path) -> Path:
    """Write the privacy report of a run into ``run_dir/report/``.

    Files: ``privacy_report.json``, ``report.md``, ``report.html`` (the plots embedded, so it
    can be sent alone), ``epsilon.png`` and ``utility.png``, each written atomically.

    Parameters
    ----------
    run_dir
        The run directory ``runs/<run-id>/``.

    Returns
    -------
    Path
        ``run_dir / "report"``.

    Raises
    ------
    RunDirError
        As :func:`build_report`, or when the report directory cannot be written.
    """
    # matplotlib is heavy: the ServerApp imports this module, and only draws at the run's end
    from fedlora.report import plots as report_plots
    from fedlora.report import render as report_render

    report = build_report(run_dir)
    out = RunDirectoryReader(run_dir).report_path
    try:
        atomic_write_json(out / JSON_FILE, report)
        atomic_write_text(out / MARKDOWN_FILE, render_markdown(report))
        images = report_plots.write_plots(report, out)
        atomic_write_text(out / HTML_FILE, report_render.render_html(report, images))
    except OSError as exc:
        raise RunDirError(f"cannot write the report into {out}: {exc}") from exc
    logger.info("privacy report of run %s written to %s", report["run-id"], out)
    return out
