"""The privacy-utility table of ``bench/utility.py``: rows, the issue's goals, Markdown, plots.

Pure functions over the results ``bench/utility.py`` measures (no training here), so that the
table and the verdicts against the goals are unit-tested on hand-made results
(``tests/unit/test_bench_utility.py``).

A result is a dict with at least ``config`` (``untrained``, ``central``, ``federated``,
``dp-eps<E>``, ``local-<site>``) and the metric keys of :mod:`fedlora.evaluation` (``accuracy`` and
``macro-f1`` for classification; ``loss`` and ``exact-match`` for sft).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

UNTRAINED = "untrained"
CENTRAL = "central"
FEDERATED = "federated"
DP_PREFIX = "dp-eps"
LOCAL_PREFIX = "local-"
LOCAL_MEAN = "local-mean"

FED_VS_CENTRAL_POINTS = 2.0
"""Goal: federated non-DP within this many points of centralised non-DP."""
FED_OVER_LOCAL_POINTS = 5.0
"""Goal: federated non-DP at least this many points over the average local-only site."""
DP8_VS_CENTRAL_POINTS = 5.0
"""Goal: federated DP at ε 8 per site within this many points of centralised non-DP."""
SWEEP_POINTS = 3.0
"""The sweep's question: records per site for DP at ε 4 to come within this many points."""


def dp_config(epsilon: float) -> str:
    """The config name of federated DP at target ``epsilon`` per site (``dp-eps4``)."""
    return f"{DP_PREFIX}{epsilon:g}"


def headline(task: str) -> str:
    """The metric the goals are judged on: accuracy (classification) or exact match (sft)."""
    return "accuracy" if task == "classification" else "exact-match"


def _points(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else 100.0 * value


def _order(row: Mapping[str, Any]) -> tuple[int, float, str]:
    """untrained, central, federated, DP by falling ε, the local sites, in that order."""
    config = str(row["config"])
    if config.startswith(DP_PREFIX):
        return (2, -float(config[len(DP_PREFIX) :]), config)
    rank = {UNTRAINED: -1, CENTRAL: 0, FEDERATED: 1}.get(config, 3)
    return (rank, 0.0, config)


def with_local_mean(results: Sequence[Mapping[str, Any]], task: str) -> list[dict[str, Any]]:
    """``results`` plus one ``local-mean`` row averaging the local-only sites' metrics.

    The mean is unweighted (each site's own model, on the same held-out data): it answers
    "what does the average hospital get alone". No row is added without local results.
    """
    rows = sorted((dict(result) for result in results), key=_order)
    local = [row for row in rows if str(row["config"]).startswith(LOCAL_PREFIX)]
    local = [row for row in local if row["config"] != LOCAL_MEAN]
    if not local:
        return rows
    keys = ("accuracy", "macro-f1", "loss") if task == "classification" else ("loss", "exact-match")
    mean: dict[str, Any] = {"config": LOCAL_MEAN, "sites": len(local)}
    for key in keys:
        values = [float(row[key]) for row in local if key in row]
        if len(values) == len(local):
            mean[key] = sum(values) / len(values)
    rows.append(mean)
    return rows


def find(rows: Sequence[Mapping[str, Any]], config: str) -> Mapping[str, Any] | None:
    """The row of ``config``, or None."""
    return next((row for row in rows if row["config"] == config), None)


def goals(rows: Sequence[Mapping[str, Any]], task: str) -> list[dict[str, Any]]:
    """The issue's three utility goals, judged on ``rows`` (which include ``local-mean``).

    Returns
    -------
    list[dict]
        One entry per goal: ``goal`` (its words), ``measured`` (the gap in points, positive
        when the first side is better, None when a side was not run), ``target`` and ``met``
        (None when not measurable).
    """
    metric = headline(task)

    def value(config: str) -> float | None:
        row = find(rows, config)
        return None if row is None or metric not in row else _points(float(row[metric]))

    def gap(first: str, second: str) -> float | None:
        a, b = value(first), value(second)
        return None if a is None or b is None else a - b

    fed_central = gap(FEDERATED, CENTRAL)
    fed_local = gap(FEDERATED, LOCAL_MEAN)
    dp8_central = gap(dp_config(8), CENTRAL)
    return [
        {
            "goal": f"federated non-DP within {FED_VS_CENTRAL_POINTS:g} points of centralised",
            "measured": fed_central,
            "target": -FED_VS_CENTRAL_POINTS,
            "met": None if fed_central is None else fed_central >= -FED_VS_CENTRAL_POINTS,
        },
        {
            "goal": f"federated non-DP >= {FED_OVER_LOCAL_POINTS:g} points over average local",
            "measured": fed_local,
            "target": FED_OVER_LOCAL_POINTS,
            "met": None if fed_local is None else fed_local >= FED_OVER_LOCAL_POINTS,
        },
        {
            "goal": f"federated DP ε 8 within {DP8_VS_CENTRAL_POINTS:g} points of centralised",
            "measured": dp8_central,
            "target": -DP8_VS_CENTRAL_POINTS,
            "met": None if dp8_central is None else dp8_central >= -DP8_VS_CENTRAL_POINTS,
        },
    ]


def sweep_threshold(
    points: Sequence[Mapping[str, Any]], within: float = SWEEP_POINTS, chance: float = 0.0
) -> int | None:
    """Fewest records per site at which DP comes within ``within`` points of non-DP.

    ``points`` hold ``records``, ``non-dp`` and ``dp`` (accuracies in [0, 1]) per sweep size.
    The answer is the smallest size from which on every larger size also stays within (a
    single lucky small size does not count); None when the largest size is not within. A size
    where non-DP itself is not more than ``within`` points over ``chance`` does not count: DP
    "within" a model that learned nothing says nothing.
    """
    ordered = sorted(points, key=lambda point: int(point["records"]))
    answer: int | None = None
    for point in reversed(ordered):
        plain, private = 100.0 * float(point["non-dp"]), 100.0 * float(point["dp"])
        if plain - private > within or plain - 100.0 * chance <= within:
            break
        answer = int(point["records"])
    return answer


def _cell(row: Mapping[str, Any], key: str, digits: int = 3) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], task: str) -> str:
    """One Markdown table: a row per config, the task's metrics, ε, rounds, steps, time, bytes."""
    metrics = (
        ("accuracy", "macro-f1", "loss") if task == "classification" else ("exact-match", "loss")
    )
    header = ["config", *metrics, "ε per site", "rounds", "steps", "wall s", "KiB / round"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        kib = row.get("bytes-per-round")
        cells = [
            str(row["config"]),
            *(_cell(row, metric) for metric in metrics),
            _cell(row, "epsilon", 2),
            _cell(row, "rounds"),
            _cell(row, "steps"),
            _cell(row, "wall-s", 0),
            "—" if kib is None else f"{float(kib) / 1024:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_goals(entries: Sequence[Mapping[str, Any]]) -> str:
    """The goals as a Markdown table: measured gap in points and the verdict."""
    lines = ["| goal | measured (points) | verdict |", "| --- | --- | --- |"]
    for entry in entries:
        measured = entry["measured"]
        shown = "not run" if measured is None else f"{measured:+.1f}"
        met = entry["met"]
        verdict = "not measured" if met is None else ("met" if met else "NOT met")
        lines.append(f"| {entry['goal']} | {shown} | {verdict} |")
    return "\n".join(lines)


def markdown_sweep(points: Sequence[Mapping[str, Any]], threshold: int | None) -> str:
    """The records-per-site sweep as a Markdown table and its answer."""
    lines = [
        "| train records per site | non-DP accuracy | DP ε 4 accuracy | gap (points) |",
        "| --- | --- | --- | --- |",
    ]
    for point in sorted(points, key=lambda p: int(p["records"])):
        gap = 100.0 * (float(point["non-dp"]) - float(point["dp"]))
        lines.append(
            f"| {point['records']} | {float(point['non-dp']):.3f} | {float(point['dp']):.3f} "
            f"| {gap:.1f} |"
        )
    answer = (
        f"DP at ε 4 is within {SWEEP_POINTS:g} points of non-DP from {threshold} records per site"
        if threshold is not None
        else f"DP at ε 4 is not within {SWEEP_POINTS:g} points of non-DP at any size measured"
    )
    return "\n".join(lines) + f"\n\n{answer}."


def plot_epsilon(rows: Sequence[Mapping[str, Any]], task: str, path: Path) -> None:
    """Metric vs ε per site (DP runs), with centralised, federated and local-mean as lines."""
    from matplotlib.figure import Figure

    metric = headline(task)
    dp = sorted(
        (float(row["epsilon"]), float(row[metric]))
        for row in rows
        if str(row["config"]).startswith(DP_PREFIX) and metric in row
    )
    figure = Figure(figsize=(5, 3.4))
    axes = figure.subplots()
    if dp:
        axes.plot([e for e, _ in dp], [v for _, v in dp], "o-", label="federated DP")
    styles = {CENTRAL: "k--", FEDERATED: "b:", LOCAL_MEAN: "r-."}
    for config, style in styles.items():
        row = find(rows, config)
        if row is not None and metric in row:
            axes.axhline(float(row[metric]), linestyle=style[1:], color=style[0], label=config)
    axes.set_xlabel("ε per site (δ = 0.1 / site records)")
    axes.set_ylabel(metric)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)


def plot_sweep(points: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Accuracy vs train records per site, non-DP and DP at ε 4."""
    from matplotlib.figure import Figure

    ordered = sorted(points, key=lambda point: int(point["records"]))
    sizes = [int(point["records"]) for point in ordered]
    figure = Figure(figsize=(5, 3.4))
    axes = figure.subplots()
    axes.plot(sizes, [float(p["non-dp"]) for p in ordered], "o-", label="non-DP")
    axes.plot(sizes, [float(p["dp"]) for p in ordered], "s-", label="DP ε 4")
    axes.set_xscale("log")
    axes.minorticks_off()
    axes.set_xticks(sizes, [str(size) for size in sizes])
    axes.set_xlabel("train records per site")
    axes.set_ylabel("accuracy")
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
