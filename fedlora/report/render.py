"""HTML and PNG renderings of the privacy report built by :mod:`fedlora.report.build`.

The HTML page is self-contained (inline CSS) and refers to the plots by relative file name;
every string from the run is escaped. Plots are drawn with matplotlib's Agg canvas through the
object API (no pyplot, no global backend switch).
"""

from __future__ import annotations

import html
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedlora.io import atomic_write_bytes
from fedlora.report.document import (
    Banner,
    Block,
    Bullets,
    Image,
    Table,
    report_sections,
    report_title,
)
from fedlora.report.names import EPSILON_PNG, UTILITY_PNG

logger = logging.getLogger(__name__)

_DPI = 110
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em;
     border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: left; }
th { background: #f3f3f3; }
td { font-variant-numeric: tabular-nums; }
.warning { background: #fff3cd; border: 2px solid #c9302c; color: #7a1c1a;
           padding: .6em 1em; margin: .6em 0; font-weight: bold; }
img { max-width: 100%; border: 1px solid #eee; }
"""


# ---- HTML --------------------------------------------------------------------------------


def _esc(text: object) -> str:
    return html.escape(str(text))


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{_esc(cell)}</th>" for cell in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(cell)}</td>" for cell in row) + "</tr>" for row in table.rows
    )
    thead = f"<thead><tr>{head}</tr></thead>" if any(table.header) else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _html_block(block: Block) -> str:
    if isinstance(block, Banner):
        return f'<div class="warning" role="alert">WARNING: {_esc(block.text)}</div>'
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_esc(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Image):
        return f'<p><img src="{_esc(block.file)}" alt="{_esc(block.alt)}"></p>'
    if isinstance(block, Table):
        return _html_table(block)
    return f"<p>{_esc(block.text)}</p>"


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page.

    Parameters
    ----------
    report
        The content built by :func:`fedlora.report.build.build_report`.

    Returns
    -------
    str
        The HTML document (inline CSS; plots referenced by relative file name).
    """
    title = _esc(report_title(report))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title>",
        f"<style>{_CSS}</style></head>",
        "<body>",
        f"<h1>{title}</h1>",
    ]
    for section in report_sections(report):
        parts.append(f"<section><h2>{_esc(section.title)}</h2>")
        parts.extend(_html_block(block) for block in section.blocks)
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---- plots -------------------------------------------------------------------------------


def _new_figure(width: float = 7.5, height: float = 4.2) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _as_float(value: Any) -> float:
    """A plottable value: ``nan`` (a gap) for a missing or infinite ε."""
    return (
        float(value)
        if isinstance(value, int | float) and not isinstance(value, bool)
        else (float("nan"))
    )


def _message(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, wrap=True)


def _plot_site(
    axes: Axes,
    site: str,
    entries: Sequence[Mapping[str, Any]],
    budget: Any,
    refusals: Sequence[Mapping[str, Any]],
) -> None:
    rounds = [int(entry["round"]) for entry in entries]
    values = [_as_float(entry.get("epsilon")) for entry in entries]
    (line,) = axes.plot(rounds, values, marker="o", label=site)
    if refusals:
        axes.plot(
            [int(refusal["round"]) for refusal in refusals],
            [_as_float(refusal.get("epsilon-spent")) for refusal in refusals],
            linestyle="none",
            marker="x",
            markersize=9,
            color=line.get_color(),
            label=f"{site} refused",
        )
    if isinstance(budget, int | float) and not isinstance(budget, bool):
        axes.axhline(
            float(budget),
            color=line.get_color(),
            linestyle="--",
            linewidth=1,
            label=f"{site} budget",
        )


def render_epsilon_png(report: Mapping[str, Any]) -> bytes:
    """``epsilon.png``: lifetime ε per site per round, each site's budget dashed.

    Parameters
    ----------
    report
        The content built by :func:`fedlora.report.build.build_report`.

    Returns
    -------
    bytes
        The PNG image.
    """
    figure = _new_figure()
    axes = figure.add_subplot()
    budgets = {row["site"]: row["budget"] for row in report["summary"]}
    series = report["epsilon-series"]
    for site in report["sites"]:
        refusals = [refusal for refusal in report["refusals"] if refusal["site"] == site]
        if series.get(site) or refusals:
            _plot_site(axes, site, series.get(site) or [], budgets.get(site), refusals)
    if not report["dp"]:
        _message(axes, "no differential privacy (run with --no-dp)")
    elif not any(series.values()):
        _message(axes, "no site trained with DP in this run")
    else:
        axes.legend(fontsize="small", ncols=2)
    axes.set_xlabel("round")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(f"lifetime ε ({report['accountant']})")
    axes.set_title("Privacy spent per site (lifetime of each dataset)")
    axes.grid(alpha=0.3)
    return _png_bytes(figure)


def render_utility_png(report: Mapping[str, Any]) -> bytes:
    """``utility.png``: the federated evaluation metric and loss per round.

    Parameters
    ----------
    report
        The content built by :func:`fedlora.report.build.build_report`.

    Returns
    -------
    bytes
        The PNG image.
    """
    utility = report["utility"]
    metric = str(utility["metric"])
    rounds = [int(entry["round"]) for entry in utility["rounds"]]
    figure = _new_figure(9.0, 3.8)
    for index, name in enumerate((metric, "loss"), start=1):
        axes = figure.add_subplot(1, 2, index)
        values = [_as_float(entry.get(name)) for entry in utility["rounds"]]
        if rounds:
            axes.plot(rounds, values, marker="o")
        else:
            _message(axes, "no evaluation recorded")
        axes.set_xlabel("round")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(name)
        axes.set_title(f"evaluation {name}")
        axes.grid(alpha=0.3)
    figure.suptitle("Utility of the global adapter (round 0: before training)")
    return _png_bytes(figure)


def write_plots(report: Mapping[str, Any], out: Path) -> list[Path]:
    """Write ``epsilon.png`` and ``utility.png`` into ``out`` atomically.

    Parameters
    ----------
    report
        The content built by :func:`fedlora.report.build.build_report`.
    out
        The report directory.

    Returns
    -------
    list of Path
        The two image files.
    """
    paths = []
    for name, render in ((EPSILON_PNG, render_epsilon_png), (UTILITY_PNG, render_utility_png)):
        path = out / name
        atomic_write_bytes(path, render(report))
        logger.debug("wrote %s", path)
        paths.append(path)
    return paths
