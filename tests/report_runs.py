"""Synthetic run directories for the report's tests: any number of sites, real ledgers, no training.

The ε values are made up (monotone in the steps), not an accountant's: the report copies
numbers, it never recomputes them, so these tests need only consistent inputs. Each site's
ledger is a real hash-chained ledger that the report verifies against ``metrics.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlora.privacy.ledger import SiteLedger
from fedlora.privacy.ledger_entry import LedgerEntry

RUN_ID = "synthetic-run"
TIME = "2025-01-01T00:00:00.000+00:00"
NAMES = ("lakeside-medical", "mercy-general", "riverside-university", "st-elsewhere", "valley")


@dataclass(frozen=True)
class Plan:
    """What the synthetic run holds."""

    sites: int = 5
    rounds: int = 4
    resumed_round: int | None = None
    """A round cut short (after every site recorded it) and trained again after a resume."""
    refuse_last: bool = False
    """The last site declines the last round at its budget."""


def site_name(index: int) -> str:
    base = NAMES[index % len(NAMES)]
    return base if index < len(NAMES) else f"{base}-{index // len(NAMES) + 1}"


def _spec(index: int) -> dict[str, Any]:
    records = 80 + 7 * index
    return {
        "records": records,
        "q": round(16 / records, 6),
        "sigma": round(0.9 + 0.01 * index, 4),
        "steps": 5,
        "delta": 1 / (10 * records),
        "budget": 10.0 if index % 4 else 8.0,
    }


def _epsilon(steps: int, index: int) -> dict[str, float]:
    prv = round(0.5 + 0.18 * steps + 0.01 * index, 6)
    return {"prv": prv, "rdp": round(prv * 1.23, 6)}


class _Site:
    def __init__(self, root: Path, index: int) -> None:
        self.name = site_name(index)
        self.index = index
        self.spec = _spec(index)
        self.ledger = SiteLedger.open(
            root / "ledgers" / self.name,
            site=self.name,
            data_fingerprint=hashlib.sha256(self.name.encode()).hexdigest(),
            records=self.spec["records"],
        )

    def train(self, server_round: int) -> dict[str, Any]:
        """Record one attempt at ``server_round``; return its ``metrics.jsonl`` privacy entry."""
        spec = self.spec
        steps = sum(entry.steps for entry in self.ledger.entries) + spec["steps"]
        eps = _epsilon(steps, self.index)
        self.ledger.append(
            LedgerEntry(
                run_id=RUN_ID, round=server_round, steps=spec["steps"], sample_rate=spec["q"],
                noise_multiplier=spec["sigma"], max_grad_norm=1.0, delta=spec["delta"],
                accountant="prv", epsilon_prv=eps["prv"], epsilon_rdp=eps["rdp"], time=TIME,
            )
        )  # fmt: skip
        return {
            "site": self.name, "records": spec["records"], "round": server_round,
            "data-fingerprint": self.ledger.data_fingerprint, "budget-epsilon": spec["budget"],
            "accountant": "prv", "delta": spec["delta"], "run-id": RUN_ID,
            "sample-rate": spec["q"], "noise-multiplier": spec["sigma"], "max-grad-norm": 1.0,
            "steps": spec["steps"], "dp-mode": "hooks", "time": TIME,
            "ledger": str(self.ledger.path.parent),
            "epsilon-prv": eps["prv"], "epsilon-rdp": eps["rdp"], "epsilon": eps["prv"],
            "run-epsilon-prv": eps["prv"], "run-epsilon-rdp": eps["rdp"],
            "budget-left": spec["budget"] - eps["prv"],
        }  # fmt: skip

    def refusal(self) -> dict[str, Any]:
        spent = self.ledger.entries[-1].epsilon_prv
        steps = sum(entry.steps for entry in self.ledger.entries) + self.spec["steps"]
        return {
            "status": "budget-exhausted",
            "epsilon-spent": spent,
            "epsilon-next": _epsilon(steps, self.index)["prv"],
            "budget-epsilon": self.spec["budget"],
            "reason": f"site {self.name}: training this round would exceed its budget",
        }


def _record(server_round: int, sites: list[_Site], privacy: dict, refused: dict) -> dict:
    loss = round(2.2 - 0.15 * server_round, 4)
    evaluation = {"loss": loss, "accuracy": 0.5 + 0.05 * server_round, "num-examples": 40.0}
    record: dict[str, Any] = {
        "round": server_round,
        "sites": {
            site.name: {
                "eval": evaluation,
                **({"train": {"train-loss": loss}} if site.name in privacy else {}),
            }
            for site in sites
        },
        "eval": {**evaluation, "num-sites": len(sites)},
        "errors": [],
    }
    if server_round:
        record.update(privacy=privacy, refused=refused)
    return record


def write_run(root: Path, plan: Plan) -> Path:
    """Write ``root/runs/<RUN_ID>/`` (config, status, metrics) and the sites' ledgers.

    Returns
    -------
    Path
        The run directory.
    """
    run_dir = root / "runs" / RUN_ID
    run_dir.mkdir(parents=True)
    sites = [_Site(root, index) for index in range(plan.sites)]
    lines = [_record(0, sites, {}, {})]
    for server_round in range(1, plan.rounds + 1):
        privacy, refused = {}, {}
        for site in sites:
            if plan.refuse_last and site is sites[-1] and server_round == plan.rounds:
                refused[site.name] = site.refusal()
                continue
            if server_round == plan.resumed_round:
                site.train(server_round)  # the attempt the interruption cut short
            privacy[site.name] = site.train(server_round)
        lines.append(_record(server_round, sites, privacy, refused))
    config = {
        "run-id": RUN_ID,
        "config": {
            "task": "classification", "model": "tiny-bert", "rounds": plan.rounds, "dp": True,
            "accountant": "prv", "budget-epsilon": 10.0, "max-grad-norm": 1.0,
            "dp-mode": "hooks", "central-dp": "off",
        },
        "base-fingerprint": "sha256:abc",
        "sites": [site.name for site in sites],
    }  # fmt: skip
    (run_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    status = {"state": "complete", "reason": None, "updated": TIME}
    (run_dir / "status.json").write_text(json.dumps(status), encoding="utf-8")
    text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    (run_dir / "metrics.jsonl").write_text(text, encoding="utf-8")
    return run_dir
