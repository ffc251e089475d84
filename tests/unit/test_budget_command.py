"""``fedlora budget``: the ledgers' spend at a glance, read-only, damaged ledgers listed."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from fedlora.cli.main import main
from fedlora.privacy.ledger import SiteLedger
from fedlora.privacy.ledger_entry import LedgerEntry
from fedlora.privacy.ledger_storage import LEDGER_FILE, mark_path
from fedlora.privacy.ledger_summary import ledger_summaries

FP_A = hashlib.sha256(b"dataset A").hexdigest()
FP_B = hashlib.sha256(b"dataset B").hexdigest()
LONG_SITE = "lakeside-university-hospital-cardiology"


def entry(run_id: str, round_: int, eps_prv: float, eps_rdp: float) -> LedgerEntry:
    return LedgerEntry(
        run_id=run_id,
        round=round_,
        steps=10,
        sample_rate=0.05,
        noise_multiplier=1.1,
        max_grad_norm=1.0,
        delta=1e-5,
        accountant="prv",
        epsilon_prv=eps_prv,
        epsilon_rdp=eps_rdp,
        time=f"2026-01-01T00:00:0{round_}.000+00:00",
    )


def make_ledger(root: Path, site: str, fingerprint: str, entries: list[LedgerEntry]) -> Path:
    directory = root / f"{site}-{fingerprint[:12]}"
    ledger = SiteLedger.open(
        directory, site=site, data_fingerprint=fingerprint, records=400, delta=1e-5
    )
    for item in entries:
        ledger.append(item)
    return directory


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "ledgers"
    make_ledger(
        root,
        "clinic-a",
        FP_A,
        [entry("run-1", 1, 1.2345678901, 1.5432109876), entry("run-1", 2, 2.0123456789, 2.6)],
    )
    make_ledger(root, LONG_SITE, FP_B, [entry("run-1", 1, 0.5, 0.7), entry("run-2", 1, 3.25, 4.5)])
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file and folder under ``root``: modification time, size and bytes."""
    return {
        str(p.relative_to(root)): (
            p.stat().st_mtime_ns,
            p.stat().st_size,
            p.read_bytes() if p.is_file() else b"",
        )
        for p in sorted(root.rglob("*"))
    }


def run_json(root: Path, capsys, *extra: str) -> dict:
    assert main(["budget", "--ledger-root", str(root), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_summaries_carry_the_exact_recorded_epsilons(root: Path):
    by_site = {s.site: s for s in ledger_summaries(root)}
    a, b = by_site["clinic-a"], by_site[LONG_SITE]
    assert a.verified and b.verified
    assert (a.epsilon_prv, a.epsilon_rdp) == (2.0123456789, 2.6)  # the last entry's, exactly
    assert (b.epsilon_prv, b.epsilon_rdp) == (3.25, 4.5)
    assert (a.runs, a.rounds, b.runs, b.rounds) == (1, 2, 2, 2)
    assert a.delta == 1e-5 and a.data_fingerprint == FP_A


def test_json_output(root: Path, capsys):
    payload = run_json(root, capsys, "--budget-epsilon", "8", "--site-budget", "clinic-a=3")
    assert payload["ledger-root"] == str(root) and payload["budget-epsilon"] == 8.0
    by_site = {item["site"]: item for item in payload["ledgers"]}
    a, b = by_site["clinic-a"], by_site[LONG_SITE]
    assert a["epsilon-prv"] == 2.0123456789 and a["epsilon-rdp"] == 2.6
    assert a["budget-epsilon"] == 3.0 and a["remaining-epsilon"] == 3.0 - 2.0123456789
    assert b["budget-epsilon"] == 8.0 and b["remaining-epsilon"] == 8.0 - 3.25
    assert a["verified"] is True and a["problem"] is None and a["delta"] == 1e-5
    assert (b["runs"], b["rounds"], b["state"]) == (2, 2, "active")


def test_default_budget_is_the_run_configs(root: Path, capsys):
    from fedlora.config import RunConfig

    payload = run_json(root, capsys)
    assert {item["budget-epsilon"] for item in payload["ledgers"]} == {RunConfig().budget_epsilon}


def test_table_at_80_columns_wraps_site_names(root: Path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["budget", "--ledger-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    first_column = "".join(line.split()[0] for line in out.splitlines() if line.strip())
    assert LONG_SITE in first_column  # folded onto more lines, never cut
    assert "2.012" in out and "2.600" in out and "yes" in out
    assert "NOT verified" not in out and " NO " not in out


def test_damaged_ledger_is_listed_not_verified(root: Path, capsys):
    path = root / f"clinic-a-{FP_A[:12]}" / LEDGER_FILE
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    edited = json.loads(lines[1]) | {"epsilon-prv": 0.001}  # spend edited down
    lines[1] = json.dumps(edited) + "\n"
    path.write_text("".join(lines), encoding="utf-8")

    payload = run_json(root, capsys)
    by_site = {item["site"]: item for item in payload["ledgers"]}
    damaged = by_site["clinic-a"]
    assert damaged["verified"] is False
    assert "line 2" in damaged["problem"] and "hash chain broken" in damaged["problem"]
    assert damaged["epsilon-prv"] is None and damaged["remaining-epsilon"] is None
    assert damaged["data-fingerprint"] == FP_A
    assert by_site[LONG_SITE]["verified"] is True  # the listing goes on

    assert main(["budget", "--ledger-root", str(root)]) == 0
    out = capsys.readouterr().out
    words = " ".join(out.split())
    assert "NOT verified clinic-a" in words and "hash chain broken" in words


def test_unreadable_and_missing_ledgers_do_not_crash(root: Path, capsys):
    (root / f"clinic-a-{FP_A[:12]}" / LEDGER_FILE).write_bytes(b"\xff\xfe garbage\n")
    gone = root / f"{LONG_SITE}-{FP_B[:12]}"
    (gone / LEDGER_FILE).unlink()
    payload = run_json(root, capsys)
    states = {(item["site"], item["state"], item["verified"]) for item in payload["ledgers"]}
    assert states == {("clinic-a", "active", False), (LONG_SITE, "missing", False)}
    missing = next(i for i in payload["ledgers"] if i["state"] == "missing")
    assert "deleted or moved" in missing["problem"] and missing["data-fingerprint"] == FP_B
    assert mark_path(gone, FP_B).exists()


def test_retired_ledger_is_listed(tmp_path: Path, capsys):
    root = tmp_path / "ledgers"
    directory = make_ledger(root, "clinic-a", FP_A, [entry("run-1", 1, 1.5, 1.75)])
    SiteLedger.open(
        directory, site="clinic-a", data_fingerprint=FP_B, records=10, delta=1e-5, start_new=True
    )
    payload = run_json(root, capsys)
    rows = {(item["data-fingerprint"], item["state"]): item for item in payload["ledgers"]}
    assert rows[(FP_A, "retired")]["epsilon-prv"] == 1.5
    assert rows[(FP_B, "active")]["epsilon-prv"] == 0.0 and rows[(FP_B, "active")]["rounds"] == 0


def test_nothing_is_written(root: Path, capsys):
    # A damaged ledger too: its refusal must not write either.
    path = root / f"clinic-a-{FP_A[:12]}" / LEDGER_FILE
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:1] + lines[2:]), encoding="utf-8")  # a line removed
    past = 1_000_000_000_000_000_000
    for item in root.rglob("*"):
        os.utime(item, ns=(past, past))
    before = snapshot(root)
    assert main(["budget", "--ledger-root", str(root)]) == 0
    assert main(["budget", "--ledger-root", str(root), "--json"]) == 0
    capsys.readouterr()
    assert snapshot(root) == before


def test_empty_root_says_so_in_one_line(tmp_path: Path, capsys):
    for root in (tmp_path / "empty", tmp_path / "does-not-exist"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        assert main(["budget", "--ledger-root", str(root)]) == 0
        out = capsys.readouterr().out
        assert out == f"no privacy ledgers under {root}\n"
    assert not (tmp_path / "does-not-exist").exists()
    assert run_json(tmp_path / "empty", capsys)["ledgers"] == []


def test_default_root_is_the_user_data_folder(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("FEDLORA_HOME", str(tmp_path / "home"))
    make_ledger(tmp_path / "home" / "ledgers", "clinic-a", FP_A, [entry("run-1", 1, 0.25, 0.5)])
    assert main(["budget", "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)["ledgers"]
    assert item["epsilon-prv"] == 0.25


@pytest.mark.parametrize(
    "flags", [["--site-budget", "clinic-a"], ["--budget-epsilon", "0"], ["--site-budget", "a=-1"]]
)
def test_bad_budget_flags_are_one_line_errors(tmp_path: Path, capsys, flags):
    assert main(["budget", "--ledger-root", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedlora: error: ") and err.count("\n") == 1
