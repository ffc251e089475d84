"""The report for a compliance officer: plain first screen, details, plots, resumes, print.

Synthetic run directories with 5 and 20 sites and real ledgers (``tests/report_runs.py``).
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from fedlora.cli.main import main
from fedlora.privacy.ledger_entry import LedgerEntry
from fedlora.report import pdf as report_pdf
from fedlora.report.blocks import Meter, fmt_number
from fedlora.report.build import build_report, write_report
from fedlora.report.details import GLOSSARY
from fedlora.report.document import render_markdown, report_sections
from fedlora.report.glance import GUARANTEE_PLAIN
from fedlora.report.ledgers import cut_short
from fedlora.report.plots import epsilon_figure, utility_figure
from tests.report_runs import Plan, site_name, write_run


@pytest.fixture(scope="module")
def five(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("five"), Plan(sites=5, rounds=4, refuse_last=True))


@pytest.fixture(scope="module")
def five_out(five: Path) -> Path:
    """The 5-site run's report directory, written once."""
    return write_report(five)


@pytest.fixture(scope="module")
def twenty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("twenty"), Plan(sites=20, rounds=3))


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("resumed"), Plan(sites=3, rounds=4, resumed_round=2))


def _section_html(page: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', page, re.DOTALL)
    assert match, f"no section {key}"
    return match.group(1)


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- the first screen --------------------------------------------------------------------


def test_the_first_screen_gives_each_sites_budget_in_one_sentence(five: Path):
    report = build_report(five)
    summary = report_sections(report)[0]
    meters = [block for block in summary.blocks if isinstance(block, Meter)]
    last_privacy = _metrics(five)[-1]["privacy"]

    assert summary.key == "summary"
    assert [meter.label for meter in meters] == [site_name(i) for i in range(5)]
    for meter, row in zip(meters, report["summary"], strict=True):
        assert meter.text == (
            f"ε used {fmt_number(row['epsilon-used'])} of budget {fmt_number(row['budget'])} "
            f"(δ = {fmt_number(row['delta'])}); {fmt_number(row['budget-left'])} left"
        )
    first = report["summary"][0]
    assert first["epsilon-used"] == last_privacy[first["site"]]["epsilon-prv"]  # copied exactly
    assert meters[-1].detail == "trained 3 rounds, declined 1 at its budget"
    assert meters[0].detail == "trained 4 rounds"


def test_the_summary_is_plain_and_the_statistics_are_in_the_details(five: Path, five_out: Path):
    page = (five_out / "report.html").read_text(encoding="utf-8")
    summary = _section_html(page, "summary")
    details = _section_html(page, "details")

    assert page.index('id="summary"') < page.index('id="plots"') < page.index('id="details"')
    assert html.escape(GUARANTEE_PLAIN) in summary
    assert "Not protected" in summary and "Protected" in summary
    for item in build_report(five)["guarantee"]["not-protected"]:
        assert html.escape(item) in summary
    for jargon in ("σ", "RDP", "sample rate", "noise multiplier", "ledger"):
        assert jargon not in summary
    for header in ("ε PRV (this run)", "ε RDP (this run)", "ε PRV (lifetime)", "ε RDP (lifetime)"):
        assert html.escape(header) in details
    for header in ("<th>q</th>", "<th>σ</th>", "<th>C</th>", "<th>steps (this run)</th>"):
        assert header in details
    assert "The PRV accountant&#x27;s ε is the one that counts" in details
    for term, _ in GLOSSARY:
        assert f"<dt>{html.escape(term)}</dt>" in details


def test_the_accountant_that_counts_gives_epsilon_used(five: Path, tmp_path: Path):
    run_dir = Path(shutil.copytree(five, tmp_path / "run"))
    lines = _metrics(run_dir)
    for line in lines[1:]:
        for entry in (line.get("privacy") or {}).values():
            entry.update(accountant="rdp", ledger=str(tmp_path / "not-here"))
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (run_dir / "metrics.jsonl").write_text(text, encoding="utf-8")

    row = build_report(run_dir)["summary"][0]

    assert row["accountant"] == "rdp"
    assert row["epsilon-used"] == row["lifetime-epsilon-rdp"] != row["lifetime-epsilon-prv"]


def test_markdown_carries_the_same_first_screen(five: Path):
    markdown = render_markdown(build_report(five))
    head = markdown.split("## Over the rounds")[0]
    assert GUARANTEE_PLAIN in head
    assert head.count("- **") >= 5 and "ε used" in head and "**Not protected:**" in head


# ---- plots -------------------------------------------------------------------------------


def _panels(figure: Figure) -> list[Any]:
    return [axes for axes in figure.axes if axes.axison]


@pytest.mark.parametrize(("fixture", "count", "rows"), [("five", 5, 1), ("twenty", 20, 4)])
def test_epsilon_plot_has_one_panel_per_site_from_zero(
    fixture: str, count: int, rows: int, request: pytest.FixtureRequest
):
    report = build_report(request.getfixturevalue(fixture))
    figure = epsilon_figure(report)
    panels = _panels(figure)
    budgets = {row["site"]: row["budget"] for row in report["summary"]}

    assert [axes.get_title() for axes in panels] == report["sites"]
    assert len({round(axes.get_position().y0, 3) for axes in panels}) == rows
    for axes in panels:
        assert axes.get_ylim()[0] == 0 and axes.get_xlim()[0] == 0
        assert axes.get_ylim()[1] > max(budgets.values())  # every budget is on the scale
        dashed = [line for line in axes.get_lines() if line.get_linestyle() == "--"]
        assert [list(line.get_ydata()) for line in dashed] == [[budgets[axes.get_title()]] * 2]
        assert axes.get_legend() is None  # the one legend sits below the panels
    assert len(figure.legends) == 1


def test_utility_plot_axes_start_at_zero(five: Path):
    figure = utility_figure(build_report(five))
    metric, loss = figure.axes
    assert metric.get_ylim() == (0.0, 1.0)  # accuracy
    assert loss.get_ylim()[0] == 0
    assert "→" in loss.get_title()  # first and last value, read without the axis


def test_report_html_sent_alone_keeps_its_plots(five_out: Path, tmp_path: Path):
    out = five_out
    alone = tmp_path / "mail" / "report.html"
    alone.parent.mkdir()
    shutil.copy(out / "report.html", alone)

    page = alone.read_text(encoding="utf-8")
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"[^>]*data-file="([^"]+)"', page)

    assert sorted(name for _, name in images) == ["epsilon.png", "utility.png"]
    for data, name in images:
        assert base64.b64decode(data) == (out / name).read_bytes()
    assert len(re.findall(r"<img ", page)) == 2


def test_the_page_is_print_ready_and_has_no_script(five_out: Path):
    page = (five_out / "report.html").read_text(encoding="utf-8")
    assert "@media print" in page and "@page { size: A4" in page
    assert "<script" not in page


# ---- a resumed run -----------------------------------------------------------------------


def test_a_resumed_rounds_double_count_is_a_note_not_a_disagreement(resumed: Path):
    report = build_report(resumed)
    out = write_report(resumed)
    page = (out / "report.html").read_text(encoding="utf-8")
    markdown = (out / "report.md").read_text(encoding="utf-8")
    ledger = report["ledgers"][site_name(0)]

    assert report["warnings"] == []
    for entry in report["ledgers"].values():
        assert entry["agrees"] and not entry["disagreements"]
    assert [e["round"] for e in ledger["entries"]] == [1, 2, 2, 3, 4]
    assert ledger["repeated-rounds"] == [{"round": 2, "times": 2, "cut-short": 1}]
    assert len(report["notes"]) == 1
    assert report["notes"][0].startswith("Round 2 was trained twice by sites lakeside-medical")
    assert "ε used counts both" in report["notes"][0]
    assert html.escape(report["notes"][0]) in _section_html(page, "summary")
    for text in (page, markdown):
        assert "disagree" not in text.lower() and "WARNING" not in text
    # the spend is real: ε used is the ledger's last entry, which counts both attempts
    row = report["summary"][0]
    assert row["epsilon-used"] == ledger["entries"][-1]["epsilon-prv"]
    assert ledger["entries"][2]["epsilon-prv"] > ledger["entries"][1]["epsilon-prv"]


def _entry(number: int) -> LedgerEntry:
    return LedgerEntry(
        run_id="r", round=number, steps=1, sample_rate=0.1, noise_multiplier=1.0,
        max_grad_norm=1.0, delta=1e-3, accountant="prv", epsilon_prv=1.0, epsilon_rdp=1.0,
        time="t",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("rounds", "cut"),
    [
        ([1, 2, 3], set()),
        ([1, 2, 2, 3], {1}),
        ([1, 2, 3, 2, 3, 4], {1, 2}),
        ([1, 2, 3, 1, 2, 3], {0, 1, 2}),
        ([1, 2, 3, 3, 2], {1, 2, 3}),
    ],
)
def test_cut_short_finds_the_attempts_a_restart_superseded(rounds: list[int], cut: set[int]):
    assert cut_short([_entry(number) for number in rounds]) == cut


def test_a_real_mismatch_after_a_resume_is_still_flagged(resumed: Path, tmp_path: Path):
    run_dir = Path(shutil.copytree(resumed, tmp_path / "run"))
    lines = _metrics(run_dir)
    lines[2]["privacy"][site_name(0)]["epsilon-prv"] = 0.1  # round 2 as metrics.jsonl says
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (run_dir / "metrics.jsonl").write_text(text, encoding="utf-8")

    report = build_report(run_dir)

    problems = report["ledgers"][site_name(0)]["disagreements"]
    assert any("round 2: epsilon-prv" in problem for problem in problems)
    assert any("disagree" in warning for warning in report["warnings"])


# ---- PDF ---------------------------------------------------------------------------------


def test_pdf_without_a_browser_is_one_line(
    five: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    run_dir = Path(shutil.copytree(five, tmp_path / "run"))
    monkeypatch.setattr(report_pdf, "find_browser", lambda: None)

    assert main(["report", str(run_dir), "--pdf"]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pdf needs Chromium or Chrome on PATH" in err[0]
    assert (run_dir / "report" / "report.html").is_file()
    assert not (run_dir / "report" / "report.pdf").exists()
