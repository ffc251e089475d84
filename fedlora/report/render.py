"""The privacy report as one HTML page that can be sent alone, read on screen and printed.

The page is self-contained: inline CSS, the plots embedded as ``data:`` URIs (sent alone, it
keeps them), no script and nothing fetched. Print CSS lays it out for A4 paper, so printing it
(or ``fedlora report --pdf``) gives a document a person can file. Every string from the run is
escaped.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from typing import Any

from fedlora.report.blocks import (
    Banner,
    Block,
    Bullets,
    Glossary,
    Image,
    Meter,
    Note,
    Protection,
    Section,
    Table,
)
from fedlora.report.document import report_sections, report_title

_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.2em auto;
       max-width: 1100px; padding: 0 1em; color: #1d1d1d; line-height: 1.4; }
h1 { font-size: 1.5em; margin: 0 0 .3em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }
#summary h2 { margin-top: .2em; }
p { margin: .45em 0; }
.guarantee { font-size: 1.05em; margin: .5em 0; background: #eef4fb; border-left: 4px solid #1f5fa8;
             padding: .45em .8em; }
.meters { display: grid; grid-template-columns: repeat(auto-fill, minmax(31em, 1fr));
          gap: .3em 1.6em; margin: .6em 0; }
.meter { break-inside: avoid; }
.meter-head { display: flex; align-items: center; gap: .6em; }
.meter-name { font-weight: 600; flex: 0 0 auto; max-width: 60%; overflow-wrap: anywhere; }
.bar { flex: 0 0 8em; height: .7em; background: #e3e3e3; border-radius: 2px;
       margin-left: auto; overflow: hidden; }
.bar span { display: block; height: 100%; background: #1f5fa8; }
.meter.low .bar span { background: #d08a00; } .meter.over .bar span { background: #c9302c; }
.meter-text { font-size: .9em; }
.meter-detail { font-size: .85em; color: #555; flex: 1 1 auto; min-width: 0; }
.protection { display: grid; grid-template-columns: 1fr 1fr; gap: 1.6em; font-size: .92em; }
.protection h3 { font-size: 1em; margin: .6em 0 .2em; }
.protection ul { margin: 0; padding-left: 1.2em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .6em 0; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .22em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td { font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.warning { background: #fff3cd; border: 2px solid #c9302c; color: #7a1c1a;
           padding: .5em 1em; margin: .5em 0; font-weight: bold; }
.note { background: #f1f6ee; border-left: 4px solid #4a7a2c; padding: .45em .8em;
        margin: .5em 0; }
figure { margin: .8em 0; } img { max-width: 100%; height: auto; }
dl.glossary div { display: grid; grid-template-columns: 13em 1fr; gap: 1em; margin: .25em 0; }
dl.glossary dt { font-weight: 600; } dl.glossary dd { margin: 0; }
footer { margin-top: 2em; font-size: .85em; color: #555; }
@page { size: A4; margin: 14mm 12mm; }
@media print {
  body { max-width: none; margin: 0; padding: 0; font-size: 10pt; }
  .scroll { overflow: visible; }
  .meters { grid-template-columns: 1fr 1fr; } .bar { flex-basis: 5em; }
  .bar, .bar span, .warning, .note, .guarantee, th {
    -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  h2 { break-after: avoid; } figure, tr, .note, .warning, dl.glossary div { break-inside: avoid; }
  section#plots, section#details { break-before: page; }
  table { font-size: 8pt; } footer .screen-only { display: none; }
}
"""


def _esc(text: object) -> str:
    return html.escape(str(text))


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{_esc(cell)}</th>" for cell in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(cell)}</td>" for cell in row) + "</tr>" for row in table.rows
    )
    thead = f"<thead><tr>{head}</tr></thead>" if any(table.header) else ""
    return f'<div class="scroll"><table>{thead}<tbody>{body}</tbody></table></div>'


def _html_meter(meter: Meter) -> str:
    bar = ""
    if meter.used is not None:
        width = max(0.0, min(meter.used, 1.0)) * 100
        bar = (
            f'<span class="bar" role="img" aria-label="{meter.used:.0%} of the budget used">'
            f'<span style="width: {width:.1f}%"></span></span>'
        )
    return (
        f'<div class="meter {_esc(meter.state)}"><div class="meter-head">'
        f'<span class="meter-name">{_esc(meter.label)}</span>'
        f'<span class="meter-detail">{_esc(meter.detail)}</span>{bar}</div>'
        f'<div class="meter-text">{_esc(meter.text)}</div></div>'
    )


def _html_list(items: tuple[str, ...]) -> str:
    return "<ul>" + "".join(f"<li>{_esc(item)}</li>" for item in items) + "</ul>"


def _html_image(image: Image, images: Mapping[str, bytes]) -> str:
    data = images.get(image.file)
    src = f"data:image/png;base64,{base64.b64encode(data).decode()}" if data else image.file
    return (
        f'<figure><img src="{_esc(src)}" alt="{_esc(image.alt)}" data-file="{_esc(image.file)}">'
        "</figure>"
    )


def _html_block(block: Block, images: Mapping[str, bytes]) -> str:
    if isinstance(block, Banner):
        return f'<div class="warning" role="alert">WARNING: {_esc(block.text)}</div>'
    if isinstance(block, Note):
        return f'<div class="note" role="note"><b>Note:</b> {_esc(block.text)}</div>'
    if isinstance(block, Bullets):
        return _html_list(block.items)
    if isinstance(block, Image):
        return _html_image(block, images)
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Meter):
        return _html_meter(block)
    if isinstance(block, Protection):
        return (
            '<div class="protection"><div><h3>Protected</h3>'
            f"{_html_list(block.protected)}</div><div><h3>Not protected</h3>"
            f"{_html_list(block.not_protected)}</div></div>"
        )
    if isinstance(block, Glossary):
        terms = "".join(
            f"<div><dt>{_esc(term)}</dt><dd>{_esc(text)}</dd></div>" for term, text in block.terms
        )
        return f'<h3>Glossary</h3><dl class="glossary">{terms}</dl>'
    lead = ' class="guarantee"' if block.lead else ""
    return f"<p{lead}>{_esc(block.text)}</p>"


def _html_section(section: Section, images: Mapping[str, bytes]) -> list[str]:
    key = f' id="{_esc(section.key)}"' if section.key else ""
    parts = [f"<section{key}><h2>{_esc(section.title)}</h2>"]
    meters: list[str] = []
    for block in section.blocks:
        if isinstance(block, Meter):
            meters.append(_html_block(block, images))
            continue
        if meters:
            parts.append('<div class="meters">' + "".join(meters) + "</div>")
            meters = []
        parts.append(_html_block(block, images))
    if meters:
        parts.append('<div class="meters">' + "".join(meters) + "</div>")
    parts.append("</section>")
    return parts


def render_html(report: Mapping[str, Any], images: Mapping[str, bytes] | None = None) -> str:
    """The report as one self-contained, print-ready HTML page.

    Parameters
    ----------
    report
        The content built by :func:`fedlora.report.build.build_report`.
    images
        PNG bytes by file name (``epsilon.png``, ``utility.png``), embedded as ``data:``
        URIs; a plot missing here is linked by its relative file name instead.

    Returns
    -------
    str
        The HTML document.
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
        parts.extend(_html_section(section, images or {}))
    parts.append(
        f"<footer>Generated {_esc(report['generated'])} by fedlora from {_esc(report['run-dir'])}."
        ' <span class="screen-only">To file it: print this page or save it as PDF from the '
        "browser, or run <code>fedlora report RUN_DIR --pdf</code>.</span></footer>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
