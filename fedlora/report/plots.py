"""The report's plots: ε per site as small multiples, and utility on axes from 0.

Drawn with matplotlib's Agg canvas through the object API (no pyplot, no global backend
switch). ``epsilon.png`` gives each site its own panel on one shared scale from 0, so that 5 or
20 sites stay legible and comparable; the budget is one dashed line per panel (each site has
one) and the only legend sits below the panels, off the data.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from fedlora.io import atomic_write_bytes
from fedlora.report.blocks import fmt_number, is_number
from fedlora.report.names import EPSILON_PNG, UTILITY_PNG

logger = logging.getLogger(__name__)

_DPI = 110
_WIDTH = 9.5
"""Inches: 1045 pixels at ``_DPI``, the width of the HTML page's column."""
_MAX_COLUMNS = 5
_PANEL_IN, _TOP_IN, _BOTTOM_IN = 1.8, 0.62, 0.75
"""Inches: one row of panels, the title above them, the axis label and legend below."""
_LINE = "#1f5fa8"
_BUDGET = "#555555"
_REFUSED = "#c9302c"


def _new_figure(
    width: float, height: float, layout: Literal["constrained"] | None = "constrained"
) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _as_float(value: Any) -> float:
    """A plottable value: ``nan`` (a gap) for a missing or infinite ε."""
    return float(value) if is_number(value) and math.isfinite(value) else math.nan


def _message(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, wrap=True)


def _top(values: Sequence[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return max(finite, default=1.0) * 1.12 or 1.0


def _site_panel(
    axes: Axes,
    entries: Sequence[Mapping[str, Any]],
    budget: Any,
    refusals: Sequence[Mapping[str, Any]],
) -> None:
    rounds = [int(entry["round"]) for entry in entries]
    axes.plot(rounds, [_as_float(e.get("epsilon")) for e in entries], marker="o", ms=4, color=_LINE)
    if refusals:
        axes.plot(
            [int(refusal["round"]) for refusal in refusals],
            [_as_float(refusal.get("epsilon-spent")) for refusal in refusals],
            linestyle="none", marker="x", markersize=8, color=_REFUSED,
        )  # fmt: skip
    if is_number(budget):
        axes.axhline(float(budget), color=_BUDGET, linestyle="--", linewidth=1)
        axes.annotate(
            f"budget {fmt_number(budget)}",
            (0.02, float(budget)),
            xycoords=("axes fraction", "data"),
            xytext=(0, 2),
            textcoords="offset points",
            fontsize=7,
            color=_BUDGET,
            va="bottom",
        )
    if not entries and not refusals:
        _message(axes, "did not train")


def _short(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def epsilon_figure(report: Mapping[str, Any]) -> Figure:
    """``epsilon.png``'s figure: each site's ε used (lifetime) per round in its own panel.

    Every panel shares one y-axis from 0 to just above the largest budget or ε, so panels
    compare at a glance; up to 5 panels per row; the site's budget dashed, declined rounds ×.

    Parameters
    ----------
    report
        The content built by :func:`fedlora.report.build.build_report`.

    Returns
    -------
    Figure
        The figure (one visible panel per site, or one message panel).
    """
    sites = list(report["sites"])
    series = report["epsilon-series"]
    if not report["dp"] or not sites or not any(series.values()):
        figure = _new_figure(_WIDTH, 2.6)
        axes = figure.add_subplot()
        axes.set_axis_off()
        _message(
            axes,
            "no differential privacy (run with --no-dp)"
            if not report["dp"]
            else "no site trained with DP in this run",
        )
        return figure
    budgets = {row["site"]: row["budget"] for row in report["summary"]}
    refused = {site: [r for r in report["refusals"] if r["site"] == site] for site in sites}
    columns = min(len(sites), _MAX_COLUMNS)
    rows = math.ceil(len(sites) / columns)
    height = _TOP_IN + _BOTTOM_IN + _PANEL_IN * rows
    # a fixed layout: constrained layout takes twice as long to draw 20 panels
    figure = _new_figure(_WIDTH, height, layout=None)
    figure.subplots_adjust(
        left=0.6 / _WIDTH, right=1 - 0.15 / _WIDTH, top=1 - _TOP_IN / height,
        bottom=_BOTTOM_IN / height, wspace=0.08, hspace=0.4,
    )  # fmt: skip
    grid = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    values = [_as_float(b) for b in budgets.values()]
    values += [_as_float(e.get("epsilon")) for entries in series.values() for e in entries]
    values += [_as_float(r.get("epsilon-spent")) for r in report["refusals"]]
    last_round = max(
        [int(e["round"]) for entries in series.values() for e in entries]
        + [int(r["round"]) for r in report["refusals"]]
    )
    for index, axes in enumerate(grid.flat):
        if index >= len(sites):
            axes.set_axis_off()
            continue
        site = sites[index]
        _site_panel(axes, series.get(site) or [], budgets.get(site), refused[site])
        axes.set_title(_short(site), fontsize=9)
        axes.set_ylim(0, _top(values))
        axes.set_xlim(0, last_round + 0.5)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
        if index % columns == 0:
            axes.set_ylabel("ε used", fontsize=8)
        if index + columns >= len(sites):  # the lowest panel of its column
            axes.tick_params(labelbottom=True)
            axes.set_xlabel("round", fontsize=8)
    handles = [
        Line2D([], [], color=_LINE, marker="o", ms=4, label="ε used after the round"),
        Line2D([], [], color=_BUDGET, linestyle="--", label="the site's budget"),
        Line2D([], [], color=_REFUSED, marker="x", linestyle="none", label="round declined"),
    ]
    figure.legend(
        handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncols=3, fontsize=8,
        frameon=False,
    )  # fmt: skip
    figure.suptitle(
        f"Privacy spent per site: lifetime ε ({report['accountant']}), one panel per site",
        fontsize=10,
        y=1 - 0.08 / height,
        va="top",
    )
    return figure


def render_epsilon_png(report: Mapping[str, Any]) -> bytes:
    """``epsilon.png`` (:func:`epsilon_figure`) as PNG bytes."""
    return _png_bytes(epsilon_figure(report))


def _change(values: Sequence[float]) -> str:
    finite = [value for value in values if math.isfinite(value)]
    if len(finite) < 2:
        return ""
    first, last = finite[0], finite[-1]
    text = f"{fmt_number(first)} → {fmt_number(last)}"
    if first:
        text += f" ({(last - first) / abs(first):+.1%})"
    return text


def utility_figure(report: Mapping[str, Any]) -> Figure:
    """``utility.png``'s figure: the federated evaluation metric and loss per round, from 0.

    Parameters
    ----------
    report
        The content built by :func:`fedlora.report.build.build_report`.

    Returns
    -------
    Figure
        Two panels: the task's metric and the loss.
    """
    utility = report["utility"]
    metric = str(utility["metric"])
    rounds = [int(entry["round"]) for entry in utility["rounds"]]
    figure = _new_figure(_WIDTH, 3.4)
    for index, name in enumerate((metric, "loss"), start=1):
        axes = figure.add_subplot(1, 2, index)
        values = [_as_float(entry.get(name)) for entry in utility["rounds"]]
        if rounds:
            axes.plot(rounds, values, marker="o", color=_LINE)
            axes.set_xlim(min(rounds) - 0.3, max(rounds) + 0.3)
        else:
            _message(axes, "no evaluation recorded")
        axes.set_ylim(0, 1.0 if name == "accuracy" else _top(values))
        axes.set_xlabel("round")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(name)
        change = _change(values)
        axes.set_title(f"evaluation {name}" + (f": {change}" if change else ""), fontsize=10)
        axes.grid(alpha=0.3)
    figure.suptitle("Utility of the shared adapter (round 0: before training)", fontsize=10)
    return figure


def render_utility_png(report: Mapping[str, Any]) -> bytes:
    """``utility.png`` (:func:`utility_figure`) as PNG bytes."""
    return _png_bytes(utility_figure(report))


def write_plots(report: Mapping[str, Any], out: Path) -> dict[str, bytes]:
    """Write ``epsilon.png`` and ``utility.png`` into ``out`` atomically.

    Parameters
    ----------
    report
        The content built by :func:`fedlora.report.build.build_report`.
    out
        The report directory.

    Returns
    -------
    dict
        File name to PNG bytes, for the HTML page to embed.
    """
    images = {}
    for name, render in ((EPSILON_PNG, render_epsilon_png), (UTILITY_PNG, render_utility_png)):
        images[name] = render(report)
        atomic_write_bytes(out / name, images[name])
        logger.debug("wrote %s", out / name)
    return images
