"""The privacy-budget report of a run directory: what each site spent and what it guarantees.

:func:`build_report` reads ``runs/<run-id>/`` (``config.json``, ``status.json``,
``metrics.jsonl``) and, where the coordinator can read them (a simulation), the sites' privacy
ledgers, and assembles ``privacy_report.json``. :func:`write_report` writes it with
``report.md``, ``report.html`` and two plots into ``runs/<run-id>/report/``.

Numbers are copied from the inputs exactly: ε is never recomputed, rounded or given a margin
here (the Markdown and HTML renderings show 4 significant digits). ``null`` ε means infinite,
as in ``metrics.jsonl``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedlora.errors import LedgerError, RunDirError
from fedlora.io import atomic_write_json, atomic_write_text, read_json_lines
from fedlora.privacy.hashchain import finite_or_none
from fedlora.privacy.ledger import SiteLedger, read_ledger
from fedlora.privacy.ledger_entry import LedgerEntry
from fedlora.privacy.ledger_storage import LEDGER_FILE

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
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
_LEDGER_FIELDS: tuple[tuple[str, str], ...] = (
    ("steps", "steps"),
    ("sample-rate", "sample_rate"),
    ("noise-multiplier", "noise_multiplier"),
    ("max-grad-norm", "max_grad_norm"),
    ("delta", "delta"),
    ("accountant", "accountant"),
    ("epsilon-prv", "epsilon_prv"),
    ("epsilon-rdp", "epsilon_rdp"),
)
_VARYING_FIELDS = ("sample-rate", "noise-multiplier", "max-grad-norm", "delta", "accountant")


# ---- reading the run directory ---------------------------------------------------------


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunDirError(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(payload, dict):
        raise RunDirError(f"{what} {path} is not a JSON object")
    return payload


def _load_config(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} not found")
    path = run_dir / "config.json"
    if not path.exists():
        raise RunDirError(f"{run_dir} is not a run directory: it has no config.json")
    payload = _read_json_object(path, "run configuration")
    if not isinstance(payload.get("config"), dict):
        raise RunDirError(f"run configuration {path} has no 'config' object")
    return payload


def _load_status(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "status.json"
    try:
        return _read_json_object(path, "run status")
    except RunDirError as exc:
        logger.warning("%s; reporting the run as incomplete", exc)
        return {"state": "incomplete", "reason": "no readable status.json", "updated": None}


def _load_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = read_json_lines(path)
    for number, record in enumerate(records, start=1):
        _check_metrics_record(path, number, record)
    return records


def _check_metrics_record(path: Path, number: int, record: Mapping[str, Any]) -> None:
    where = f"{path} record {number}"
    if not isinstance(record.get("round"), int) or isinstance(record.get("round"), bool):
        raise RunDirError(f"{where} has no integer 'round'")
    for key in ("privacy", "refused", "sites"):
        if not isinstance(record.get(key, {}), dict):
            raise RunDirError(f"{where}: '{key}' is not a JSON object")


# ---- per-site data -----------------------------------------------------------------------


def _site_names(config: Mapping[str, Any], metrics: Sequence[Mapping[str, Any]]) -> list[str]:
    names = [str(name) for name in config.get("sites") or []]
    extra: set[str] = set()
    for record in metrics:
        for key in ("sites", "privacy", "refused"):
            extra.update(str(name) for name in record.get(key) or {})
    return names + sorted(extra - set(names))


def _privacy_series(metrics: Sequence[Mapping[str, Any]], site: str) -> list[dict[str, Any]]:
    series = []
    for record in metrics:
        entry = (record.get("privacy") or {}).get(site)
        if isinstance(entry, dict):
            series.append({**entry, "round": record["round"]})
    return series


def _refusals(metrics: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    refusals = []
    for record in metrics:
        for site, refusal in (record.get("refused") or {}).items():
            refusals.append({"round": record["round"], "site": site, **dict(refusal)})
    return refusals


def _trained_rounds(metrics: Sequence[Mapping[str, Any]], site: str) -> list[int]:
    rounds = []
    for record in metrics:
        site_entry = (record.get("sites") or {}).get(site) or {}
        if site in (record.get("privacy") or {}) or "train" in site_entry:
            rounds.append(int(record["round"]))
    return rounds


def _site_budget(
    site: str,
    series: Sequence[Mapping[str, Any]],
    refusals: Sequence[Mapping[str, Any]],
    flat: Mapping[str, Any],
) -> Any:
    for source in (*reversed(series), *reversed(refusals)):
        if source.get("budget-epsilon") is not None:
            return source["budget-epsilon"]
    for item in str(flat.get("site-budgets") or "").split(","):
        name, sep, value = item.partition("=")
        if sep and name.strip() == site:
            try:
                return float(value)
            except ValueError:
                break
    return flat.get("budget-epsilon")


def _varying(series: Sequence[Mapping[str, Any]]) -> list[str]:
    return [key for key in _VARYING_FIELDS if len({json.dumps(e.get(key)) for e in series}) > 1]


# ---- ledgers -------------------------------------------------------------------------------


def _as_epsilon(value: Any) -> float:
    """An ε as metrics.jsonl writes it (``None`` = infinite) as a float."""
    return math.inf if value is None else float(value)


def _same(key: str, reported: Any, recorded: Any) -> bool:
    if key.startswith("epsilon"):
        try:
            return _as_epsilon(reported) == _as_epsilon(recorded)
        except (TypeError, ValueError):
            return False
    if key == "accountant":
        return bool(reported == recorded)
    return (
        isinstance(reported, int | float)
        and not isinstance(reported, bool)
        and (reported == recorded)
    )


def _compare_entry(number: int, reported: Mapping[str, Any], entry: LedgerEntry) -> list[str]:
    problems = []
    for key, attribute in _LEDGER_FIELDS:
        recorded = getattr(entry, attribute)
        if key not in reported:
            problems.append(f"round {number}: metrics.jsonl has no {key}")
        elif not _same(key, reported[key], recorded):
            shown = None if isinstance(recorded, float) and math.isinf(recorded) else recorded
            problems.append(
                f"round {number}: {key} is {reported[key]!r} in metrics.jsonl "
                f"but {shown!r} in the ledger"
            )
    return problems


def _compare_ledger(
    ledger: SiteLedger, site: str, run_id: str, series: Sequence[Mapping[str, Any]]
) -> list[str]:
    problems = []
    last = series[-1] if series else {}
    if ledger.site != site:
        problems.append(f"the ledger belongs to site {ledger.site!r}")
    fingerprint = last.get("data-fingerprint")
    if fingerprint is not None and fingerprint != ledger.data_fingerprint:
        problems.append(
            f"the ledger is of data {ledger.data_fingerprint}, metrics.jsonl reports "
            f"data {fingerprint}"
        )
    if last.get("records") is not None and last["records"] != ledger.records:
        problems.append(
            f"records: {last['records']!r} in metrics.jsonl but {ledger.records} in the ledger"
        )
    recorded: dict[int, list[LedgerEntry]] = {}
    for entry in ledger.entries:
        if entry.run_id == run_id:
            recorded.setdefault(entry.round, []).append(entry)
    reported = {int(item["round"]): item for item in series}
    for number in sorted(set(recorded) | set(reported)):
        if number not in recorded:
            problems.append(f"round {number}: in metrics.jsonl but not in the ledger")
        elif number not in reported:
            problems.append(f"round {number}: in the ledger but not in metrics.jsonl")
        elif len(recorded[number]) > 1:
            problems.append(f"round {number}: recorded {len(recorded[number])} times in the ledger")
        else:
            problems.extend(_compare_entry(number, reported[number], recorded[number][0]))
    return problems


def _ledger_location(series: Sequence[Mapping[str, Any]]) -> str | None:
    """The site's ledger directory (or file) as its last privacy entry names it."""
    for entry in reversed(series):
        if entry.get("ledger"):
            return str(entry["ledger"])
    return None


def _ledger_section(site: str, run_id: str, series: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    location = _ledger_location(series)
    section: dict[str, Any] = {
        "path": location,
        "available": False,
        "status": "none",
        "note": "no ledger: the site recorded no DP training in this run",
        "agrees": None,
        "disagreements": [],
    }
    if location is None:
        return section
    path = Path(location).expanduser()
    if path.suffix != ".jsonl":
        path = path / LEDGER_FILE
    if not (path.is_file() and os.access(path, os.R_OK)):
        section.update(status="not-available", note=LEDGER_NOT_AVAILABLE)
        return section
    try:
        ledger = read_ledger(path)
    except LedgerError as exc:
        section.update(
            available=True, status="invalid", note=str(exc), agrees=False, disagreements=[str(exc)]
        )
        return section
    return {**section, **_verified_ledger(ledger, site, run_id, series)}


def _verified_ledger(
    ledger: SiteLedger, site: str, run_id: str, series: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    problems = _compare_ledger(ledger, site, run_id, series)
    for problem in problems:
        logger.info("site %s: ledger and metrics.jsonl disagree: %s", site, problem)
    last = ledger.entries[-1] if ledger.entries else None
    return {
        "available": True,
        "status": "verified",
        "note": "hash chain verified",
        "site": ledger.site,
        "data-fingerprint": ledger.data_fingerprint,
        "records": ledger.records,
        "entries": [entry.to_json() for entry in ledger.entries],
        "other-run-entries": sum(1 for entry in ledger.entries if entry.run_id != run_id),
        "lifetime-epsilon-prv": finite_or_none(last.epsilon_prv) if last else 0.0,
        "lifetime-epsilon-rdp": finite_or_none(last.epsilon_rdp) if last else 0.0,
        "agrees": not problems,
        "disagreements": problems,
    }


# ---- assembling --------------------------------------------------------------------------


def _summary_row(
    site: str,
    series: Sequence[Mapping[str, Any]],
    refusals: Sequence[Mapping[str, Any]],
    ledger: Mapping[str, Any],
    context: Mapping[str, Any],
) -> dict[str, Any]:
    last: Mapping[str, Any] = series[-1] if series else {}
    from_ledger = ledger["status"] == "verified"
    lifetime_keys = ("lifetime-epsilon-prv", "lifetime-epsilon-rdp")
    if not from_ledger:
        lifetime_keys = ("epsilon-prv", "epsilon-rdp")
    lifetime = ledger if from_ledger else last
    return {
        "site": site,
        "records": last.get("records", ledger.get("records")),
        "q": last.get("sample-rate"),
        "sigma": last.get("noise-multiplier"),
        "C": last.get("max-grad-norm"),
        "steps": sum(int(entry.get("steps") or 0) for entry in series),
        "delta": last.get("delta"),
        "epsilon-prv": last.get("run-epsilon-prv"),
        "epsilon-rdp": last.get("run-epsilon-rdp"),
        "lifetime-epsilon-prv": lifetime.get(lifetime_keys[0]),
        "lifetime-epsilon-rdp": lifetime.get(lifetime_keys[1]),
        "lifetime-source": "ledger" if from_ledger else ("metrics" if series else None),
        "accountant": last.get("accountant", context["accountant"]),
        "budget": _site_budget(site, series, refusals, context["flat"]),
        "budget-left": last.get("budget-left"),
        "rounds-trained": len(context["trained"]),
        "rounds-refused": len(refusals),
        "ledger-available": bool(ledger["available"]),
        "ledger-agrees": ledger["agrees"],
        "varying": _varying(series),
    }


def _site_detail(
    site: str,
    run_id: str,
    metrics: Sequence[Mapping[str, Any]],
    all_refusals: Sequence[Mapping[str, Any]],
    context: Mapping[str, Any],
) -> dict[str, Any]:
    series = _privacy_series(metrics, site)
    refusals = [refusal for refusal in all_refusals if refusal["site"] == site]
    ledger = _ledger_section(site, run_id, series)
    trained = _trained_rounds(metrics, site)
    row = _summary_row(site, series, refusals, ledger, {**context, "trained": trained})
    return {
        "row": row,
        "series": series,
        "ledger": ledger,
        "rounds-trained": trained,
        "rounds-refused": [int(refusal["round"]) for refusal in refusals],
    }


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


def _guarantee(dp: bool, central: Mapping[str, Any] | None) -> dict[str, Any]:
    client_level = None
    if central is not None:
        client_level = (
            "client-level (ε, δ)-DP with respect to each site's whole contribution (all of its "
            "records at once), composed over all rounds of this run: the coordinator clips each "
            "site's update and adds Gaussian noise to the aggregate "
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
        whole_site = (
            "a site's individual update as the coordinator sees it before adding noise: the "
            "client-level guarantee assumes an honest coordinator"
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
            warnings.append(f"site {site}: privacy ledger and metrics.jsonl disagree")
    if central_mode not in ("", "off") and not central_rounds:
        warnings.append(f"central-dp is {central_mode} but metrics.jsonl records no central ε")
    return warnings


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` (the report's "infinite"), strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


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
        utility per round, refusals, central privacy (or ``None``), the sites' ledgers and
        warnings. Every number is the input's own value; ``None`` ε means infinite.

    Raises
    ------
    RunDirError
        When the run directory or its ``config.json`` is missing or unreadable, or a line of
        ``metrics.jsonl`` is not a JSON object with an integer round (naming the line).
    """
    resolved = _load_config(run_dir)
    status = _load_status(run_dir)
    metrics = _load_metrics(run_dir)
    flat: dict[str, Any] = resolved["config"]
    run_id = str(resolved.get("run-id") or run_dir.name)
    dp = bool(flat.get("dp", True))
    central_mode = str(flat.get("central-dp", "off"))
    refusals = _refusals(metrics)
    context = {"flat": flat, "accountant": flat.get("accountant")}
    sites = {
        site: _site_detail(site, run_id, metrics, refusals, context)
        for site in _site_names(resolved, metrics)
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
        "sites": list(sites),
        "guarantee": _guarantee(dp, central),
        "summary": [detail["row"] for detail in sites.values()],
        "epsilon-series": {site: detail["series"] for site, detail in sites.items()},
        "rounds-trained": {site: detail["rounds-trained"] for site, detail in sites.items()},
        "rounds-refused": {site: detail["rounds-refused"] for site, detail in sites.items()},
        "utility": _utility(metrics, str(flat.get("task", ""))),
        "refusals": refusals,
        "central-privacy": central,
        "ledgers": {site: detail["ledger"] for site, detail in sites.items()},
        "warnings": warnings,
    }
    return dict(_json_safe(report))


# ---- writing -----------------------------------------------------------------------------


def write_report(run_dir: Path) -> Path:
    """Write the privacy report of a run into ``run_dir/report/``.

    Files: ``privacy_report.json``, ``report.md``, ``report.html``, ``epsilon.png`` and
    ``utility.png``, each written atomically.

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
    from fedlora.report import render as report_render
    from fedlora.report.document import render_markdown

    report = build_report(run_dir)
    out = run_dir / REPORT_DIR
    try:
        atomic_write_json(out / JSON_FILE, report)
        atomic_write_text(out / MARKDOWN_FILE, render_markdown(report))
        report_render.write_plots(report, out)
        atomic_write_text(out / HTML_FILE, report_render.render_html(report))
    except OSError as exc:
        raise RunDirError(f"cannot write the report into {out}: {exc}") from exc
    logger.info("privacy report of run %s written to %s", report["run-id"], out)
    return out
