"""``fedlora simulate`` when every site declines for its budget, end to end (issue 17, items 9, 11).

The run stops before round 1; the progress line says the sites declined (budget), the summary
prints where the scenario's generated data are, and the error is one line naming each site's
budget left at its ledger's δ and the ways forward, after one detail line per site.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from fedlora.cli.main import main


def test_every_site_declining_ends_in_one_line_with_budgets_left_and_ways_forward(
    tmp_path, capsys
) -> None:
    out = tmp_path / "runs"
    code = main(
        [
            "simulate", "--sites", "2", "--rounds", "2", "--examples-per-site", "24",
            "--budget-epsilon", "1", "--engine", "inprocess", "--out", str(out),
            "--run-id", "declined",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2
    errors = [line for line in captured.err.splitlines() if line.startswith("fedlora: ")]
    final = errors[-1]
    assert final.startswith("fedlora: error: ")
    sites = sorted(json.loads((out / "declined" / "config.json").read_text())["sites"])
    assert len(sites) == 2
    for site in sites:
        assert re.search(rf"{site} 1 of 1 at δ [0-9.e-]+[,;]", final), final
        detail = [line for line in errors[:-1] if line.startswith(f"fedlora: site {site}: ")]
        assert len(detail) == 1, errors
        assert re.match(
            rf"fedlora: site {site}: ε 0 spent of its budget 1 at δ [0-9.e-]+, 1 left; this "
            r"run's 2 round\(s\) would bring it to [0-9.]+$",
            detail[0],
        ), detail[0]
    assert "ways forward: `fedlora budget` lists every ledger's spend; fit the run" in final
    assert "declined (budget)" in captured.out
    assert " failed" not in captured.out
    scenario = re.search(r"^scenario data: (\S+) \(generated", captured.out, re.MULTILINE)
    assert scenario is not None, captured.out
    folder = Path(scenario.group(1))
    assert folder.parent == out / ".scenario-data" and folder.is_dir()
    assert sorted(path.name for path in folder.iterdir()) == sites
