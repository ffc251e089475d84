"""bench/utility_table.py: the privacy-utility table and the goals' verdicts, on hand-made results.

No training: the rows are written here with known numbers, so every gap and verdict is known.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "utility_table.py"
_SPEC = importlib.util.spec_from_file_location("utility_table", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
table = importlib.util.module_from_spec(_SPEC)  # bench/ is no package
sys.modules.setdefault("utility_table", table)
_SPEC.loader.exec_module(table)


def _classification_rows() -> list[dict[str, object]]:
    return [
        {"config": "central", "accuracy": 0.80, "macro-f1": 0.60, "rounds": 3, "steps": 114},
        {"config": "federated", "accuracy": 0.79, "macro-f1": 0.55, "bytes-per-round": 2048.0},
        {"config": "dp-eps1", "accuracy": 0.50, "macro-f1": 0.30, "epsilon": 0.998},
        {"config": "dp-eps8", "accuracy": 0.70, "macro-f1": 0.40, "epsilon": 7.996},
        {"config": "local-site-0", "accuracy": 0.60, "macro-f1": 0.20},
        {"config": "local-site-1", "accuracy": 0.70, "macro-f1": 0.40},
    ]


def test_local_mean_is_the_unweighted_mean_of_the_local_sites() -> None:
    rows = table.with_local_mean(_classification_rows(), "classification")
    mean = table.find(rows, table.LOCAL_MEAN)
    assert mean is not None
    assert mean["sites"] == 2
    assert mean["accuracy"] == pytest.approx(0.65)
    assert mean["macro-f1"] == pytest.approx(0.30)
    assert len(rows) == len(_classification_rows()) + 1
    shuffled = list(reversed(_classification_rows()))
    order = [row["config"] for row in table.with_local_mean(shuffled, "classification")]
    assert order == [
        "central",
        "federated",
        "dp-eps8",
        "dp-eps1",
        "local-site-0",
        "local-site-1",
        "local-mean",
    ]


def test_the_untrained_row_comes_first_and_is_no_local_site() -> None:
    rows = [*_classification_rows(), {"config": "untrained", "accuracy": 0.25}]
    ordered = table.with_local_mean(rows, "classification")
    assert ordered[0]["config"] == "untrained"
    mean = table.find(ordered, table.LOCAL_MEAN)
    assert mean is not None and mean["sites"] == 2


def test_no_local_mean_without_local_results() -> None:
    rows = [{"config": "central", "accuracy": 0.8}]
    assert table.with_local_mean(rows, "classification") == rows


def test_goals_measure_gaps_in_points_and_judge_them() -> None:
    rows = table.with_local_mean(_classification_rows(), "classification")
    fed_central, fed_local, dp8 = table.goals(rows, "classification")
    assert fed_central["measured"] == pytest.approx(-1.0)  # 79 vs 80: within 2 points
    assert fed_central["met"] is True
    assert fed_local["measured"] == pytest.approx(14.0)  # 79 vs mean(60, 70)
    assert fed_local["met"] is True
    assert dp8["measured"] == pytest.approx(-10.0)  # 70 vs 80: not within 5 points
    assert dp8["met"] is False


def test_goals_not_measured_when_a_side_did_not_run() -> None:
    rows = [{"config": "federated", "accuracy": 0.7}]
    verdicts = table.goals(rows, "classification")
    assert [entry["met"] for entry in verdicts] == [None, None, None]
    assert "not run" in table.markdown_goals(verdicts)
    assert "not measured" in table.markdown_goals(verdicts)


def test_sft_goals_use_exact_match() -> None:
    rows = [
        {"config": "central", "exact-match": 0.50, "loss": 1.0},
        {"config": "federated", "exact-match": 0.47, "loss": 1.1},
    ]
    fed_central = table.goals(rows, "sft")[0]
    assert fed_central["measured"] == pytest.approx(-3.0)
    assert fed_central["met"] is False


def test_sweep_threshold_needs_every_larger_size_within() -> None:
    points = [
        {"records": 14, "non-dp": 0.60, "dp": 0.59},  # lucky: within, but 28 is not
        {"records": 28, "non-dp": 0.70, "dp": 0.50},
        {"records": 56, "non-dp": 0.80, "dp": 0.78},
        {"records": 112, "non-dp": 0.90, "dp": 0.88},
    ]
    assert table.sweep_threshold(points) == 56
    assert table.sweep_threshold(points[:2]) is None
    assert table.sweep_threshold(points, within=25.0) == 14
    assert "from 56 records per site" in table.markdown_sweep(points, 56)
    assert "not within" in table.markdown_sweep(points[:2], None)


def test_sweep_threshold_ignores_sizes_where_non_dp_learned_nothing() -> None:
    at_chance = [{"records": 112, "non-dp": 0.125, "dp": 0.133}]  # both at chance (1/8)
    assert table.sweep_threshold(at_chance) == 112
    assert table.sweep_threshold(at_chance, chance=0.125) is None
    learned = [{"records": 112, "non-dp": 0.80, "dp": 0.79}]
    assert table.sweep_threshold(learned, chance=0.125) == 112


def test_markdown_table_shows_each_row_and_dashes_for_what_was_not_measured() -> None:
    rows = table.with_local_mean(_classification_rows(), "classification")
    text = table.markdown_table(rows, "classification")
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows)
    federated = next(line for line in lines if line.startswith("| federated "))
    assert "| 0.790 | 0.550 | — | — |" in federated  # no loss, no ε
    assert federated.endswith("| 2 |")  # 2048 bytes per round = 2 KiB
    dp8 = next(line for line in lines if line.startswith("| dp-eps8 "))
    assert "| 8.00 |" in dp8
    assert table.dp_config(4.0) == "dp-eps4"
