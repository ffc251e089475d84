"""When every site declines for its budget, the error names what is left and the ways forward.

Issue 17, item 11: the fifth ``make demo`` ended "every site declined ... Error 2" with no
hint. The message is one line (exit 2); one detail line per site comes before it.
"""

from __future__ import annotations

from pathlib import Path

from fedlora.cli.declined import budget_error, budget_refusals, ledger_deltas, site_lines
from fedlora.config import RunConfig
from fedlora.privacy.ledger import SiteLedger
from fedlora.privacy.ledger_storage import data_fingerprint

REASON = (
    "stopped before round 1 of 3: every site declined to train because the round would "
    "exceed its privacy budget"
)


def _refusal(spent: float, planned: float, budget: float = 10.0) -> dict[str, object]:
    return {
        "status": "budget-exhausted",
        "epsilon-spent": spent,
        "epsilon-next": spent + (planned - spent) / 3,
        "epsilon-planned": planned,
        "rounds-planned": 3,
        "budget-epsilon": budget,
        "budget-left": budget - spent,
        "reason": "…",
    }


REFUSED = {"lakeside-medical": _refusal(7.9876, 11.9), "mercy-general": _refusal(10.0, 14.0)}
DELTAS = {"lakeside-medical": 0.00083333, "mercy-general": 0.001}


def test_the_error_line_names_each_sites_budget_left_and_the_ways_forward() -> None:
    assert budget_error(REASON, REFUSED, DELTAS) == (
        f"{REASON}; budget left: lakeside-medical 2.012 of 10 at δ 0.000833, mercy-general 0 "
        "of 10 at δ 0.001; ways forward: `fedlora budget` lists every ledger's spend; fit the "
        "run into what is left: a lower --target-epsilon, fewer --rounds, or --fit-budget "
        "(more noise per round); raise --budget-epsilon / --site-budget only if your privacy "
        "policy allows it; or train on other data, which has its own ledger (for a built-in "
        "scenario, another --seed generates other data); the same data keeps its spend "
        "across runs"
    )
    assert "\n" not in budget_error(REASON, REFUSED, DELTAS)


def test_nothing_left_anywhere_offers_no_fitting() -> None:
    spent = {"mercy-general": _refusal(10.0, 14.0)}
    message = budget_error(REASON, spent, {})
    assert "--fit-budget" not in message and "--target-epsilon" not in message
    assert "budget left: mercy-general 0 of 10; ways forward: `fedlora budget`" in message


def test_one_detail_line_per_site() -> None:
    assert site_lines(REFUSED, DELTAS) == [
        "site lakeside-medical: ε 7.988 spent of its budget 10 at δ 0.000833, 2.012 left; "
        "this run's 3 round(s) would bring it to 11.9",
        "site mercy-general: ε 10 spent of its budget 10 at δ 0.001, nothing left; this "
        "run's 3 round(s) would bring it to 14",
    ]


def test_only_budget_refusals_of_the_last_round_count() -> None:
    metrics = [
        {"round": 1, "refused": {"a": _refusal(1.0, 5.0)}},
        {"round": 2, "refused": {"b": _refusal(9.0, 12.0), "c": {"status": "other"}}},
    ]
    assert list(budget_refusals(metrics)) == ["b"]
    assert budget_refusals([]) == {}


def test_the_delta_is_that_of_the_sites_ledger_for_its_data(tmp_path: Path) -> None:
    root = tmp_path / "ledgers"
    data = tmp_path / "clinic.jsonl"
    data.write_text('{"prompt": "q", "response": "a"}\n')
    other = tmp_path / "other.jsonl"
    other.write_text('{"prompt": "r", "response": "b"}\n')
    for path, delta in ((data, 1e-3), (other, 5e-4)):
        fingerprint = data_fingerprint(path)
        SiteLedger.open(
            root / f"clinic-{fingerprint[:12]}",
            site="clinic",
            data_fingerprint=fingerprint,
            records=100,
            delta=delta,
        )
    config = RunConfig(ledger_root=str(root))
    assert ledger_deltas(config, {"clinic": data}) == {"clinic": 1e-3}
    assert ledger_deltas(config, {"clinic": other}) == {"clinic": 5e-4}
    assert ledger_deltas(config, {"clinic": tmp_path / "gone.jsonl"}) == {}
