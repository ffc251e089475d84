"""The terminal summary of ``fedlora simulate``, rendered as at 80 columns (issue 17, item 9).

A stopped run's "after" cells come from its last evaluated round; site names are never cut;
the last round's doubled traffic is starred and explained; a budget refusal is "declined
(budget)" on the progress line, not "failed".
"""

from __future__ import annotations

import io
import math
from typing import Any

from rich.console import Console

from fedlora.console import (
    EVAL_FOOTNOTE,
    ProgressDisplay,
    summary_table,
    traffic_footnote,
    traffic_table,
)
from fedlora.progress import RoundObserver

NAMES = ("lakeside-medical", "pinecrest-credit-union", "st-elsewhere")


def _site_eval(loss: float, examples: int) -> dict[str, Any]:
    return {"eval": {"loss": loss, "perplexity": 2.0**loss, "num-examples": examples}}


def _round(number: int, losses: dict[str, float] | None, **extra: Any) -> dict[str, Any]:
    sites = {name: _site_eval(loss, 20) for name, loss in (losses or {}).items()}
    total = 20 * len(sites)
    evaluation = {"num-examples": total, "num-sites": len(sites)}
    if sites:
        evaluation["loss"] = sum(losses.values()) / len(losses)  # type: ignore[union-attr]
    return {
        "round": number,
        "sites": sites,
        "eval": evaluation,
        "bytes-sent": 3 * 15336,
        "bytes-received": 3 * 15336 if number else 0,
        "errors": [],
        "refused": {},
        "duration-s": 1.5,
        **extra,
    }


def _render(*renderables: Any) -> str:
    console = Console(width=80, record=True, file=io.StringIO(), color_system=None)
    for item in renderables:
        console.print(item)
    return console.export_text()


def _stopped_run() -> list[dict[str, Any]]:
    """Round 1 trained and evaluated; every site declined round 2 (no evaluation)."""
    return [
        _round(0, {"lakeside-medical": 7.61, "pinecrest-credit-union": 7.62, "st-elsewhere": 7.63}),
        _round(1, {"lakeside-medical": 7.11, "pinecrest-credit-union": 7.12, "st-elsewhere": 7.13}),
        _round(2, None, refused={name: {"status": "budget-exhausted"} for name in NAMES}),
    ]


def test_a_stopped_runs_after_cells_are_its_last_evaluated_round() -> None:
    text = _render(summary_table(_stopped_run(), "sft"))
    assert "after round 1 (the last evaluated; round 2 has no evaluation)" in " ".join(text.split())
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows["lakeside-medical"][1:] == [
        "20",
        "7.6100",
        f"{2**7.61:.2f}",
        "7.1100",
        f"{2**7.11:.2f}",
    ]
    # The weighted row's perplexity is exp of the weighted loss.
    weighted = ["60", "7.6200", f"{math.exp(7.62):.2f}", "7.1200", f"{math.exp(7.12):.2f}"]
    assert rows["weighted"][1:] == weighted
    assert "-" not in rows["st-elsewhere"]


def test_a_run_stopped_before_any_round_says_so_and_shows_dashes() -> None:
    metrics = _stopped_run()
    del metrics[1]
    metrics[1]["round"] = 1
    text = _render(summary_table(metrics, "sft"))
    assert "(no round's adapter was evaluated)" in " ".join(text.split())
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows["st-elsewhere"][1:] == ["20", "7.6300", f"{2**7.63:.2f}", "-", "-"]
    assert rows["weighted"][1] == "60"


def test_site_names_are_whole_at_80_columns() -> None:
    text = _render(summary_table(_stopped_run(), "sft"))
    assert "…" not in text
    for name in NAMES:
        assert any(line.split()[:1] == [name] for line in text.splitlines()), (name, text)
    assert " ".join(text.split()).count("perplexity before") == 0  # headers on two lines
    assert text.count("perplexity") == 2 and text.count("examples") == 1
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80


def test_a_site_name_too_long_for_the_line_folds_whole() -> None:
    long_name = "lakeside-university-hospital-cardiology-department-north"
    metrics = _stopped_run()
    for record in metrics[:2]:
        record["sites"][long_name] = record["sites"].pop("lakeside-medical")
    text = _render(summary_table(metrics, "sft"))
    assert "…" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.split()[0].startswith("lakeside"))
    first, second = lines[start].split(), lines[start + 1].split()
    assert len(second) == 1  # the rest of the name, alone on the next line
    assert first[0] + second[0] == long_name
    assert first[1:] == ["20", "7.6100", f"{2**7.61:.2f}", "7.1100", f"{2**7.11:.2f}"]


def test_the_last_rounds_doubled_traffic_is_starred_and_explained() -> None:
    metrics = [
        _round(0, {"a": 1.0}),
        _round(1, {"a": 0.9}),
        _round(2, {"a": 0.8}, **{"eval-duration-s": 0.5}),
    ]
    metrics[2]["bytes-sent"] *= 2  # the final evaluation's own exchange
    text = _render(traffic_table(metrics))
    rows = [line.replace("│", " ").split() for line in text.splitlines() if "KiB" in line]
    assert [row[:3] for row in rows] == [["1", "44.9", "KiB"], ["2", "89.9", "KiB*"]]
    assert rows[1][-1] == "2.0*"  # its seconds include the evaluation exchange too
    assert traffic_footnote(metrics) == EVAL_FOOTNOTE
    assert EVAL_FOOTNOTE.startswith("* includes the final evaluation")
    assert traffic_footnote(_stopped_run()) is None  # no evaluation exchange: nothing starred
    assert "*" not in _render(traffic_table(_stopped_run()))


def test_a_budget_refusal_is_declined_on_the_progress_line_not_failed() -> None:
    console = Console(width=80, file=io.StringIO(), color_system=None)
    display = ProgressDisplay(console)
    display.on_start(rounds=3, sites=2)
    display.on_phase(server_round=1, phase="train", expected=2)
    display.on_declined(
        server_round=1, phase="train", site="st-elsewhere", status="budget-exhausted"
    )
    phase = display.progress.tasks[-1]
    assert phase.fields["loss"].endswith("st-elsewhere declined (budget)")
    assert phase.fields["sites"] == "sites 1/2" and phase.completed == 1
    display.on_reply(server_round=1, phase="train", site="lakeside-medical", metrics=None)
    assert display.progress.tasks[-1].fields["loss"].endswith("lakeside-medical failed")


def test_an_observer_that_does_not_know_declines_still_counts_them() -> None:
    seen = []

    class Counting(RoundObserver):
        def on_reply(self, *, server_round, phase, site, metrics):  # type: ignore[no-untyped-def]
            seen.append((server_round, phase, site, metrics))

    Counting().on_declined(server_round=2, phase="train", site="a", status="budget-exhausted")
    assert seen == [(2, "train", "a", None)]
