"""A round's ``metrics.jsonl`` line, built from what the exchanges with the sites brought back.

A round's line is written in two steps (:mod:`fedlora.server.federation`): when its adapter is
aggregated, with ``"eval": null``, and again, complete, when the sites' evaluation of that
adapter arrives (:func:`with_evaluation`). Per-site entries hold the train and eval metrics and
the bytes each way; ``train`` and ``eval`` are example-weighted means over the sites.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping
from typing import Any

from fedlora.server.exchange import PhaseResult


def round_record(
    server_round: int,
    started: float,
    trained: PhaseResult | None,
    evaluated: PhaseResult | None = None,
    *,
    strategy_metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A round's ``metrics.jsonl`` line; ``"eval": null`` until ``evaluated`` is known.

    ``duration-s`` runs from ``started`` (building the round's train messages) to this call:
    the training (with the previous round's evaluation it carried) and the aggregation.
    ``strategy_metrics``: the strategy's own entries (``Strategy.round_metrics``), appended.
    """
    sites: dict[str, dict[str, Any]] = {}
    if trained is not None:
        for site, reply in trained.replies.items():
            _site_entry(sites, site)["train"] = dict(reply.metrics)
        _add_bytes(sites, trained)
    record: dict[str, Any] = {
        "round": server_round,
        "sites": sites,
        "train": _weighted(sites, "train", ("train-loss",)) if trained else None,
        "eval": None,
        "bytes-sent": 0,
        "bytes-received": 0,
        "errors": list(trained.errors) if trained else [],
        "privacy": trained.privacy if trained else {},
        "refused": trained.refused if trained else {},
        "rejected": trained.rejected if trained else {},
        "duration-s": round(time.monotonic() - started, 3),
    }
    if trained is not None and trained.secure_aggregation is not None:
        record["secure-aggregation"] = trained.secure_aggregation
    record.update(strategy_metrics or {})
    _total_bytes(record)
    return record if evaluated is None else with_evaluation(record, evaluated)


def _site_entry(sites: dict[str, dict[str, Any]], site: str) -> dict[str, Any]:
    return sites.setdefault(site, {"bytes-sent": 0, "bytes-received": 0})


def _add_bytes(sites: dict[str, dict[str, Any]], phase_result: PhaseResult) -> None:
    for site, size in phase_result.bytes_sent.items():
        _site_entry(sites, site)["bytes-sent"] += size
    for site, size in phase_result.bytes_received.items():
        _site_entry(sites, site)["bytes-received"] += size


def _total_bytes(record: dict[str, Any]) -> None:
    record["bytes-sent"] = sum(entry["bytes-sent"] for entry in record["sites"].values())
    record["bytes-received"] = sum(entry["bytes-received"] for entry in record["sites"].values())


def with_evaluation(
    record: dict[str, Any], evaluated: PhaseResult, seconds: float | None = None
) -> dict[str, Any]:
    """``record`` completed with the sites' held-out metrics of its adapter.

    ``seconds``: the evaluation's own exchange, when it had one (``eval-duration-s``); an
    evaluation carried by the next round's train replies took its time in that round.
    """
    done = copy.deepcopy(record)  # the pending line stays as it was written
    for site, metrics in evaluated.evaluations.items():
        _site_entry(done["sites"], site)["eval"] = metrics
    _add_bytes(done["sites"], evaluated)
    _total_bytes(done)
    done["eval"] = _weighted(done["sites"], "eval", ("loss", "accuracy"))
    done["errors"] = [*done["errors"], *evaluated.errors]
    if seconds is not None:
        done["eval-duration-s"] = round(seconds, 3)
    return done


def _weighted(sites: dict[str, dict[str, Any]], key: str, names: tuple[str, ...]) -> dict[str, Any]:
    """Example-weighted means of ``names`` over the sites that reported ``key`` metrics."""
    reports = [entry[key] for entry in sites.values() if key in entry]
    total = sum(report["num-examples"] for report in reports)
    result: dict[str, Any] = {"num-examples": total, "num-sites": len(reports)}
    for name in names:
        values = [(report[name], report["num-examples"]) for report in reports if name in report]
        if values and total > 0:
            result[name] = sum(value * weight for value, weight in values) / sum(
                w for _, w in values
            )
    return result


def carried_evaluation(trained: PhaseResult, sites: Iterable[str]) -> PhaseResult:
    """The evaluation the train replies carried, naming each of ``sites`` that sent none."""
    carried = PhaseResult(evaluations=dict(trained.evaluations))
    for site in sorted(set(sites) - set(carried.evaluations)):
        reason = "no evaluation: its next train reply carried none"
        carried.errors.append({"site": site, "phase": "evaluate", "reason": reason})
    return carried


def retried_errors(trained: PhaseResult, attempt: int) -> list[dict[str, str]]:
    """What a train attempt that is retried leaves in the round's ``errors``.

    Its errors, its rejected updates, and a line saying that attempt ``attempt`` (from 0)
    was retried.
    """
    return [
        *trained.errors,
        *(
            {"site": site, "phase": "train", "reason": f"update rejected: {why}"}
            for site, why in trained.rejected.items()
        ),
        {"site": "*", "phase": "train", "reason": f"attempt {attempt + 1} retried"},
    ]
