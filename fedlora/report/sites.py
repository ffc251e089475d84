"""One site's part of the report, gathered from the run's ``metrics.jsonl`` and its ledger.

Per site: its privacy entries round by round, the rounds it trained and refused, its budget,
and the summary row of the report's table. Values are the inputs' own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fedlora.report.ledgers import ledger_section

_VARYING_FIELDS = ("sample-rate", "noise-multiplier", "max-grad-norm", "delta", "accountant")


def site_names(config: Mapping[str, Any], metrics: Sequence[Mapping[str, Any]]) -> list[str]:
    """The sites of ``config.json`` in order, then any other site ``metrics.jsonl`` names."""
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


def refusal_records(metrics: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every refusal of every round, as ``{"round", "site", ...}`` with the site's reasons."""
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
    accountant = last.get("accountant", context["accountant"])
    counted = lifetime_keys[1] if accountant == "rdp" else lifetime_keys[0]
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
        "epsilon-used": lifetime.get(counted),
        "accountant": accountant,
        "budget": _site_budget(site, series, refusals, context["flat"]),
        "budget-left": last.get("budget-left"),
        "rounds-trained": len(context["trained"]),
        "rounds-refused": len(refusals),
        "ledger-available": bool(ledger["available"]),
        "ledger-agrees": ledger["agrees"],
        "repeated-rounds": ledger["repeated-rounds"],
        "varying": _varying(series),
    }


def site_detail(
    site: str,
    run_id: str,
    metrics: Sequence[Mapping[str, Any]],
    all_refusals: Sequence[Mapping[str, Any]],
    context: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything the report says about one site.

    Parameters
    ----------
    site
        The site's name.
    run_id
        This run's id (to tell this run's ledger entries from earlier runs').
    metrics
        The run's ``metrics.jsonl`` records.
    all_refusals
        :func:`refusal_records` of the run.
    context
        ``flat`` (the run's flat configuration) and ``accountant`` (its configured accountant).

    Returns
    -------
    dict
        ``row`` (the summary table's row), ``series`` (privacy entries per round), ``ledger``
        (:func:`fedlora.report.ledgers.ledger_section`), ``rounds-trained`` and
        ``rounds-refused``.
    """
    series = _privacy_series(metrics, site)
    refusals = [refusal for refusal in all_refusals if refusal["site"] == site]
    ledger = ledger_section(site, run_id, series)
    trained = _trained_rounds(metrics, site)
    row = _summary_row(site, series, refusals, ledger, {**context, "trained": trained})
    return {
        "row": row,
        "series": series,
        "ledger": ledger,
        "rounds-trained": trained,
        "rounds-refused": [int(refusal["round"]) for refusal in refusals],
    }
