"""The privacy-budget report, from a synthetic run directory with real site ledgers."""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from fedlora.cli.main import main
from fedlora.errors import RunDirError
from fedlora.privacy.accounting import Release, epsilons
from fedlora.privacy.ledger import SiteLedger
from fedlora.privacy.ledger_entry import LedgerEntry
from fedlora.privacy.ledger_storage import LEDGER_FILE
from fedlora.report.build import build_report, write_report
from fedlora.report.names import GUARANTEE, LEDGER_NOT_AVAILABLE, NO_DP_WARNING

RUN_ID = "run-1"
ROUNDS = 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SITES: dict[str, dict[str, Any]] = {
    "clinic-a": {"records": 100, "q": 0.16, "sigma": 1.1, "steps": 7, "delta": 1e-3},
    "clinic-b <&>": {"records": 50, "q": 0.32, "sigma": 0.8, "steps": 4, "delta": 2e-3},
}
EVAL = [(0.91, 0.5), (0.72, 0.625), (0.61, 0.71875), (0.55, 0.75)]


@cache
def _eps(sigma: float, q: float, steps: int, delta: float) -> dict[str, float]:
    return dict(epsilons([Release(sigma, q, steps)], delta=delta))


def _fingerprint(site: str) -> str:
    return hashlib.sha256(site.encode()).hexdigest()


def _privacy_entry(site: str, spec: dict[str, Any], **values: Any) -> dict[str, Any]:
    return {
        "site": site,
        "records": spec["records"],
        "data-fingerprint": _fingerprint(site),
        "budget-epsilon": spec["budget"],
        "accountant": "prv",
        "delta": spec["delta"],
        "run-id": RUN_ID,
        "sample-rate": spec["q"],
        "noise-multiplier": spec["sigma"],
        "max-grad-norm": 1.0,
        "steps": spec["steps"],
        "dp-mode": "hooks",
        "time": "2025-01-01T00:00:00.000+00:00",
        **values,
    }


def _train_site(ledger: SiteLedger, site: str, spec: dict[str, Any], server_round: int) -> dict:
    """Record one round in the ledger; return the metrics.jsonl privacy entry."""
    prior = sum(e.steps for e in ledger.entries)
    run_prior = sum(e.steps for e in ledger.entries if e.run_id == RUN_ID)
    args = (spec["sigma"], spec["q"])
    lifetime = _eps(*args, prior + spec["steps"], spec["delta"])
    run = _eps(*args, run_prior + spec["steps"], spec["delta"])
    ledger.append(_ledger_entry(RUN_ID, server_round, spec, lifetime))
    return _privacy_entry(
        site,
        spec,
        ledger=str(ledger.path.parent),
        round=server_round,
        **{
            "epsilon-prv": lifetime["prv"],
            "epsilon-rdp": lifetime["rdp"],
            "run-epsilon-prv": run["prv"],
            "run-epsilon-rdp": run["rdp"],
            "epsilon": lifetime["prv"],
            "budget-left": spec["budget"] - lifetime["prv"],
        },
    )


def _ledger_entry(
    run_id: str, server_round: int, spec: dict[str, Any], eps: dict[str, float]
) -> LedgerEntry:
    return LedgerEntry(
        run_id=run_id,
        round=server_round,
        steps=spec["steps"],
        sample_rate=spec["q"],
        noise_multiplier=spec["sigma"],
        max_grad_norm=1.0,
        delta=spec["delta"],
        accountant="prv",
        epsilon_prv=eps["prv"],
        epsilon_rdp=eps["rdp"],
        time="2025-01-01T00:00:00.000+00:00",
    )


def _open_ledger(root: Path, site: str, spec: dict[str, Any]) -> SiteLedger:
    ledger = SiteLedger.open(
        root / "ledgers" / site.split()[0],
        site=site,
        data_fingerprint=_fingerprint(site),
        records=spec["records"],
    )
    if site == "clinic-a":  # an earlier run on the same data: lifetime ε > this run's ε
        eps = _eps(spec["sigma"], spec["q"], spec["steps"], spec["delta"])
        ledger.append(_ledger_entry("old-run", 1, spec, eps))
    return ledger


def _site_budgets() -> dict[str, float]:
    b = SITES["clinic-b <&>"]
    two = _eps(b["sigma"], b["q"], 2 * b["steps"], b["delta"])["prv"]
    three = _eps(b["sigma"], b["q"], 3 * b["steps"], b["delta"])["prv"]
    return {"clinic-a": 50.0, "clinic-b <&>": (two + three) / 2}


def _metrics_line(server_round: int, privacy: dict, refused: dict) -> dict[str, Any]:
    loss, accuracy = EVAL[server_round]
    sites = {
        site: {
            "bytes-sent": 10,
            "bytes-received": 10 if site in privacy else 0,
            "eval": {"loss": loss, "accuracy": accuracy, "num-examples": 20.0},
            **({"train": {"train-loss": loss, "num-examples": 80.0}} if site in privacy else {}),
        }
        for site in SITES
    }
    record: dict[str, Any] = {
        "round": server_round,
        "sites": sites,
        "eval": {"loss": loss, "accuracy": accuracy, "num-examples": 40.0, "num-sites": 2},
        "errors": [],
    }
    if server_round:
        record["privacy"] = privacy
        record["refused"] = refused
    return record


def _write_run(root: Path) -> Path:
    run_dir = root / "runs" / RUN_ID
    run_dir.mkdir(parents=True)
    budgets = _site_budgets()
    specs = {site: {**spec, "budget": budgets[site]} for site, spec in SITES.items()}
    ledgers = {site: _open_ledger(root, site, spec) for site, spec in specs.items()}
    lines = [_metrics_line(0, {}, {})]
    for server_round in range(1, ROUNDS + 1):
        privacy, refused = {}, {}
        for site, spec in specs.items():
            if site == "clinic-b <&>" and server_round == ROUNDS:
                refused[site] = _refusal(ledgers[site], spec)
            else:
                privacy[site] = _train_site(ledgers[site], site, spec, server_round)
        lines.append(_metrics_line(server_round, privacy, refused))
    _write_json(run_dir / "config.json", _config(dp=True))
    _write_json(run_dir / "status.json", {"state": "complete", "reason": None, "updated": "x"})
    _write_metrics(run_dir, lines)
    return run_dir


def _refusal(ledger: SiteLedger, spec: dict[str, Any]) -> dict[str, Any]:
    spent = ledger.entries[-1].epsilon_prv
    steps = sum(e.steps for e in ledger.entries) + spec["steps"]
    return {
        "status": "budget-exhausted",
        "epsilon-spent": spent,
        "epsilon-next": _eps(spec["sigma"], spec["q"], steps, spec["delta"])["prv"],
        "budget-epsilon": spec["budget"],
        "reason": "the round would exceed the site's privacy budget",
    }


def _config(*, dp: bool, central: str = "off") -> dict[str, Any]:
    return {
        "run-id": RUN_ID,
        "config": {
            "task": "classification",
            "model": "tiny-bert",
            "rounds": ROUNDS,
            "dp": dp,
            "accountant": "prv",
            "budget-epsilon": 10.0,
            "max-grad-norm": 1.0,
            "dp-mode": "hooks",
            "central-dp": central,
        },
        "base-fingerprint": "sha256:abc",
        "sites": list(SITES),
        "versions": {"fedlora": "0.1.0"},
    }


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload), encoding="utf-8")


def _write_metrics(run_dir: Path, lines: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    (run_dir / "metrics.jsonl").write_text(text, encoding="utf-8")


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_run(tmp_path_factory.mktemp("report"))


@pytest.fixture
def run_dir(tmp_path: Path, template: Path) -> Path:
    """A private copy of the run directory (the ledgers stay where the metrics say)."""
    return Path(shutil.copytree(template, tmp_path / RUN_ID))


def _row(report: dict[str, Any], site: str) -> dict[str, Any]:
    return next(row for row in report["summary"] if row["site"] == site)


# ---- JSON content ------------------------------------------------------------------------


def test_summary_rows_copy_the_inputs_exactly(run_dir: Path):
    report = build_report(run_dir)
    metrics = _read_metrics(run_dir)
    assert report["run-id"] == RUN_ID
    assert report["state"] == "complete"
    assert (report["task"], report["model"], report["dp"]) == ("classification", "tiny-bert", True)
    assert report["sites"] == list(SITES)
    for site, spec in SITES.items():
        entries = [line["privacy"][site] for line in metrics if site in line.get("privacy", {})]
        last = entries[-1]
        row = _row(report, site)
        assert row["records"] == spec["records"]
        assert (row["q"], row["sigma"], row["C"]) == (spec["q"], spec["sigma"], 1.0)
        assert row["delta"] == spec["delta"]
        assert row["steps"] == spec["steps"] * len(entries)
        assert row["epsilon-prv"] == last["run-epsilon-prv"]
        assert row["epsilon-rdp"] == last["run-epsilon-rdp"]
        assert row["lifetime-epsilon-prv"] == last["epsilon-prv"]
        assert row["lifetime-epsilon-rdp"] == last["epsilon-rdp"]
        assert row["lifetime-source"] == "ledger"
        assert row["budget"] == last["budget-epsilon"]
        assert row["budget-left"] == last["budget-left"]
        assert row["accountant"] == "prv"
        assert row["ledger-available"] is True
        assert row["ledger-agrees"] is True
        series = report["epsilon-series"][site]
        assert series == entries
    a, b = _row(report, "clinic-a"), _row(report, "clinic-b <&>")
    assert (a["rounds-trained"], a["rounds-refused"]) == (3, 0)
    assert (b["rounds-trained"], b["rounds-refused"]) == (2, 1)
    assert a["lifetime-epsilon-prv"] > a["epsilon-prv"]  # the earlier run counts for the data


def test_ledger_entries_refusals_and_utility(run_dir: Path):
    report = build_report(run_dir)
    metrics = _read_metrics(run_dir)
    ledger = report["ledgers"]["clinic-a"]
    assert ledger["status"] == "verified"
    assert [e["run-id"] for e in ledger["entries"]] == ["old-run", RUN_ID, RUN_ID, RUN_ID]
    assert ledger["other-run-entries"] == 1
    assert ledger["disagreements"] == []
    assert report["refusals"] == [
        {"round": ROUNDS, "site": "clinic-b <&>", **metrics[ROUNDS]["refused"]["clinic-b <&>"]}
    ]
    assert report["utility"]["metric"] == "accuracy"
    assert [(u["round"], u["loss"], u["accuracy"]) for u in report["utility"]["rounds"]] == [
        (index, loss, accuracy) for index, (loss, accuracy) in enumerate(EVAL)
    ]
    assert report["central-privacy"] is None
    assert report["guarantee"]["sample-level"] == GUARANTEE
    assert report["guarantee"]["client-level"] is None
    assert report["warnings"] == []


def test_disagreement_between_metrics_and_ledger_is_flagged(run_dir: Path):
    lines = _read_metrics(run_dir)
    entry = lines[2]["privacy"]["clinic-a"]
    entry["epsilon-prv"] = entry["epsilon-prv"] * 0.5
    entry["steps"] += 1
    _write_metrics(run_dir, lines)

    report = build_report(run_dir)

    assert _row(report, "clinic-a")["ledger-agrees"] is False
    assert _row(report, "clinic-b <&>")["ledger-agrees"] is True
    problems = report["ledgers"]["clinic-a"]["disagreements"]
    assert any("round 2: epsilon-prv" in p for p in problems)
    assert any("round 2: steps" in p for p in problems)
    assert any("disagree" in w and "clinic-a" in w for w in report["warnings"])


def test_round_missing_from_metrics_is_a_disagreement(run_dir: Path):
    lines = _read_metrics(run_dir)
    del lines[1]["privacy"]["clinic-a"]
    _write_metrics(run_dir, lines)
    problems = build_report(run_dir)["ledgers"]["clinic-a"]["disagreements"]
    assert "round 1: in the ledger but not in metrics.jsonl" in problems


def test_unreadable_ledger_falls_back_to_metrics(run_dir: Path, tmp_path: Path):
    lines = _read_metrics(run_dir)
    for line in lines[1:]:
        line["privacy"]["clinic-a"]["ledger"] = str(tmp_path / "elsewhere" / "clinic-a")
    _write_metrics(run_dir, lines)

    report = build_report(run_dir)

    row = _row(report, "clinic-a")
    assert row["ledger-available"] is False
    assert row["ledger-agrees"] is None
    assert row["lifetime-source"] == "metrics"
    assert row["lifetime-epsilon-prv"] == lines[-1]["privacy"]["clinic-a"]["epsilon-prv"]
    assert report["ledgers"]["clinic-a"]["note"] == LEDGER_NOT_AVAILABLE


def test_tampered_ledger_is_reported_invalid(run_dir: Path, tmp_path: Path):
    lines = _read_metrics(run_dir)
    source = Path(lines[1]["privacy"]["clinic-a"]["ledger"]) / LEDGER_FILE
    copy = tmp_path / "tampered"
    copy.mkdir()
    (copy / LEDGER_FILE).write_text(source.read_text().replace('"steps":7', '"steps":1', 1))
    for line in lines[1:]:
        line["privacy"]["clinic-a"]["ledger"] = str(copy)
    _write_metrics(run_dir, lines)

    report = build_report(run_dir)

    assert report["ledgers"]["clinic-a"]["status"] == "invalid"
    assert "hash chain broken" in report["ledgers"]["clinic-a"]["note"]
    assert _row(report, "clinic-a")["ledger-agrees"] is False


def test_central_privacy_gives_the_client_level_guarantee(run_dir: Path):
    config = json.loads((run_dir / "config.json").read_text())
    config["config"]["central-dp"] = "fixed"
    _write_json(run_dir / "config.json", config)
    lines = _read_metrics(run_dir)
    central = {
        "mode": "fixed",
        "noise-multiplier": 1.0,
        "clip-norm": 0.1,
        "delta": 1e-5,
        "sample-rate": 1.0,
        "epsilon-prv": 12.345678,
        "epsilon-rdp": 13.5,
    }
    for line in lines[1:]:
        line["central-privacy"] = central
    _write_metrics(run_dir, lines)

    report = build_report(run_dir)

    assert report["central-privacy"]["final"] == {**central, "round": ROUNDS}
    assert len(report["central-privacy"]["rounds"]) == ROUNDS
    assert report["guarantee"]["client-level"].startswith("client-level (ε, δ)-DP")
    markdown = (write_report(run_dir) / "report.md").read_text()
    assert "client-level (ε, δ)-DP" in markdown
    assert "12.35" in markdown


def test_infinite_epsilon_is_null_in_json_and_infinity_in_markdown(run_dir: Path):
    lines = _read_metrics(run_dir)
    entry = lines[ROUNDS]["privacy"]["clinic-a"]
    entry.update({"epsilon": math.inf, "epsilon-rdp": None, "budget-left": -math.inf})
    _write_metrics(run_dir, lines)  # json.dumps writes Infinity, as append_metrics would

    out = write_report(run_dir)

    text = (out / "privacy_report.json").read_text()
    assert "Infinity" not in text
    report = json.loads(text)
    assert report["epsilon-series"]["clinic-a"][-1]["epsilon"] is None
    assert report["ledgers"]["clinic-a"]["agrees"] is False  # the ledger has a finite RDP ε
    assert any("infinite" in w for w in report["warnings"])
    assert "∞" in (out / "report.md").read_text(encoding="utf-8")


# ---- files -------------------------------------------------------------------------------


def test_write_report_writes_every_file(run_dir: Path):
    out = write_report(run_dir)

    assert out == run_dir / "report"
    written = json.loads((out / "privacy_report.json").read_text())
    assert written["summary"] == build_report(run_dir)["summary"]
    for name in ("epsilon.png", "utility.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert len(data) > 5_000
    markdown = (out / "report.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert GUARANTEE in markdown
    assert html.escape(GUARANTEE) in page
    for site in SITES:
        assert site in markdown
        assert html.escape(site) in page
    assert "clinic-b <&>" not in page  # escaped
    assert "(utility.png)" in markdown
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 2
    assert all(src.startswith("data:image/png;base64,") for src in sources)  # sent alone
    without_images = re.sub(r'src="data:[^"]*"', "", page)
    assert "<style>" in page and "http" not in without_images.replace("http-equiv", "")
    assert "WARNING" not in markdown


def test_dp_off_run_carries_the_warning(tmp_path: Path):
    run_dir = tmp_path / "no-dp"
    run_dir.mkdir()
    _write_json(run_dir / "config.json", _config(dp=False))
    _write_json(run_dir / "status.json", {"state": "complete", "reason": None, "updated": "x"})
    lines = [_metrics_line(r, {}, {}) for r in range(ROUNDS + 1)]
    for line in lines:
        line.pop("privacy", None)
        line.pop("refused", None)
    lines[1]["sites"]["clinic-a"]["train"] = {"train-loss": 0.7, "num-examples": 80.0}
    _write_metrics(run_dir, lines)

    out = write_report(run_dir)

    report = json.loads((out / "privacy_report.json").read_text())
    assert report["dp"] is False
    assert report["guarantee"]["sample-level"] is None
    assert NO_DP_WARNING in report["warnings"]
    assert _row(report, "clinic-a")["rounds-trained"] == 1
    assert NO_DP_WARNING in (out / "report.md").read_text()
    assert NO_DP_WARNING in (out / "report.html").read_text()
    assert (out / "epsilon.png").read_bytes().startswith(PNG_MAGIC)


# ---- errors ------------------------------------------------------------------------------


def test_missing_run_dir_is_refused(tmp_path: Path):
    with pytest.raises(RunDirError, match="not found"):
        build_report(tmp_path / "absent")


def test_missing_config_is_refused(tmp_path: Path):
    with pytest.raises(RunDirError, match=r"no config\.json"):
        build_report(tmp_path)


def test_malformed_metrics_line_is_named(run_dir: Path):
    text = (run_dir / "metrics.jsonl").read_text().splitlines()
    text[2] = text[2][: len(text[2]) // 2]
    (run_dir / "metrics.jsonl").write_text("\n".join(text) + "\n")
    with pytest.raises(RunDirError, match=r"metrics\.jsonl line 3 is not valid JSON"):
        build_report(run_dir)


# ---- CLI ---------------------------------------------------------------------------------


def test_cli_report_writes_the_files(run_dir: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["report", str(run_dir)]) == 0
    assert str(run_dir / "report" / "report.html") in capsys.readouterr().out
    for name in ("privacy_report.json", "report.md", "report.html", "epsilon.png", "utility.png"):
        assert (run_dir / "report" / name).is_file()


def test_cli_report_on_a_missing_dir_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    assert main(["report", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("fedlora: error: run directory ")
