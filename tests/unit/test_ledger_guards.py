"""Issue 14: a site's budget holds for every sequence of runs, restarts and failures.

Concurrent runs on one ledger (finding 3), a changed δ (4), a failed append (9), where the
ledgers live and a rolled-back ledger (10), and a run that cannot finish (11). The DP round is
the real ``train_with_privacy`` path (policy, lock, ledger, guard, append) with the DP-SGD steps
replaced by a stub: what is tested is the accounting, not the training.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, RecordDict

import fedlora.clients.private_round
from fedlora.clients.private_round import Declined, PrivateRound, train_with_privacy
from fedlora.clients.site_policy import site_policy
from fedlora.clients.training import TrainResult
from fedlora.config import RunConfig
from fedlora.errors import LedgerError
from fedlora.privacy.accounting import CALIBRATION_TOLERANCE, Release, epsilon
from fedlora.privacy.hashchain import GENESIS, append_chained
from fedlora.privacy.ledger import SiteLedger, read_ledger
from fedlora.privacy.ledger_entry import LedgerEntry
from fedlora.privacy.ledger_storage import LEDGER_FILE, data_fingerprint
from fedlora.protocol import BUDGET_EXHAUSTED
from fedlora.sites import SiteSpec
from tests.conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[2]
SIGMA = 1.1
RECORDS = 20
BATCH = 10  # q = 0.5, 2 steps a round
DELTA = 1e-4


def eps(rounds: int, *, sigma: float = SIGMA, delta: float = DELTA) -> float:
    return epsilon([Release(sigma, BATCH / RECORDS, 2 * rounds)], delta=delta, accountant="rdp")


def config(**changes: Any) -> RunConfig:
    settings: dict[str, Any] = {
        "sites": 1,
        "rounds": 1,
        "batch_size": BATCH,
        "noise_multiplier": SIGMA,
        "delta": DELTA,
        "accountant": "rdp",
        "budget_epsilon": 100.0,
    }
    settings.update(changes)
    return RunConfig(**settings)


def site_file(tmp_path: Path, records: int = RECORDS) -> SiteSpec:
    rows = [{"prompt": f"Ward {i} beds?", "response": f"{i * 2} beds."} for i in range(records)]
    return SiteSpec("clinic", write_jsonl(tmp_path / "clinic.jsonl", rows))


def context(node: dict[str, Any]) -> Context:
    return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})


@pytest.fixture
def stub_training(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Replace the DP-SGD steps; returns the σ of every round that trained."""
    trained: list[float] = []

    def train(_model: object, dataset: Any, *, settings: Any, **_kwargs: object) -> TrainResult:
        trained.append(settings.noise_multiplier)
        return TrainResult(loss=0.0, steps=settings.steps, num_examples=len(dataset))

    monkeypatch.setattr(fedlora.clients.private_round, "dp_train_locally", train)
    return trained


def run_round(
    site: SiteSpec,
    run_config: RunConfig,
    node: dict[str, Any],
    *,
    server_round: int = 1,
    run_id: str = "run-a",
    records: int = RECORDS,
) -> PrivateRound | Declined:
    return train_with_privacy(
        None,  # type: ignore[arg-type]  # only the stubbed training would use it
        [None] * records,  # type: ignore[arg-type]  # the training split: only its size counts
        site=site,
        config=run_config,
        context=context(node),
        run_id=run_id,
        server_round=server_round,
        pad_id=0,
        device=None,  # type: ignore[arg-type]
        bf16=False,
    )


# --- finding 3: two processes on one ledger -------------------------------------------------

RACER = textwrap.dedent(
    """
    import contextlib, json, sys, time
    from pathlib import Path
    from flwr.app import Context, RecordDict
    import fedlora.clients.private_round, fedlora.privacy.ledger
    from fedlora.clients.training import TrainResult
    from fedlora.config import RunConfig
    from fedlora.sites import SiteSpec

    ledger_dir, data, budget, name, start, unlocked, train_s = sys.argv[1:8]
    if unlocked == "1":  # today's behaviour: no lock between the check and the append
        fedlora.privacy.ledger.ledger_lock = lambda *a, **k: contextlib.nullcontext()
    decided = []

    def train(_model, dataset, *, settings, **_kwargs):
        decided.append("allowed")
        time.sleep(float(train_s))  # the other run checks its budget while this one trains
        return TrainResult(loss=0.0, steps=settings.steps, num_examples=len(dataset))

    fedlora.clients.private_round.dp_train_locally = train
    config = RunConfig(sites=1, rounds=1, batch_size=10, noise_multiplier=1.1, delta=1e-4,
                       accountant="rdp", budget_epsilon=float(budget))
    context = Context(run_id=1, node_id=1, node_config={"ledger-dir": ledger_dir},
                      state=RecordDict(), run_config={})
    Path(start + "." + name).touch()  # imported: ready to race
    while not Path(start).exists():
        time.sleep(0.01)
    try:
        outcome = fedlora.clients.private_round.train_with_privacy(
            None, [None] * 20, site=SiteSpec("clinic", Path(data)), config=config,
            context=context, run_id=name, server_round=1, pad_id=0, device=None, bf16=False)
        declined = isinstance(outcome, fedlora.clients.private_round.Declined)
        result = "declined" if declined else "trained"
    except Exception as exc:
        result = f"error: {exc}"
    print(json.dumps({"checked": decided, "result": result}))
    """
)


def race(tmp_path: Path, *, unlocked: bool) -> list[dict[str, Any]]:
    """Two real processes each open, check, 'train' (2 s and 4 s) and append on one ledger."""
    site = site_file(tmp_path)
    ledger_dir, start = tmp_path / "ledger", tmp_path / "start"
    fingerprint = data_fingerprint(site.train_file)
    SiteLedger.open(ledger_dir, site="clinic", data_fingerprint=fingerprint, records=20)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    budget = (eps(1) + eps(2)) / 2  # room for exactly one round
    arguments = [str(ledger_dir), str(site.train_file), str(budget)]
    flag = "1" if unlocked else "0"
    # Both check the same history within the first one's training; their appends (if both
    # train) are 2 s apart, so neither append can interleave with the other's re-read.
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, *arguments, name, str(start), flag, train_s],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for name, train_s in (("run-a", "2.0"), ("run-b", "4.0"))
    ]
    ready = [Path(f"{start}.{name}") for name in ("run-a", "run-b")]
    deadline = time.monotonic() + 300
    while not all(path.exists() for path in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    start.touch()  # both imported torch & co; let them race
    outputs = [racer.communicate(timeout=300)[0] for racer in racers]
    return [json.loads(output.strip().splitlines()[-1]) for output in outputs]


def test_concurrent_runs_on_one_ledger_train_exactly_the_budget(tmp_path: Path):
    results = race(tmp_path, unlocked=False)

    assert sorted(r["result"] for r in results) == ["declined", "trained"]
    ledger = read_ledger(tmp_path / "ledger")  # one valid chain
    assert len(ledger.entries) == 1
    assert ledger.entries[0].epsilon_rdp == pytest.approx(eps(1), rel=1e-12)


def test_without_the_lock_both_pass_the_check_and_the_stale_append_is_refused(tmp_path: Path):
    results = race(tmp_path, unlocked=True)

    # Both budget checks passed on the same history: the lock is what makes them atomic.
    assert [r["checked"] for r in results] == [["allowed"], ["allowed"]]
    outcomes = sorted(r["result"] for r in results)
    assert outcomes[1] == "trained"
    assert outcomes[0].startswith("error: ") and "changed since it was read" in outcomes[0]
    assert len(read_ledger(tmp_path / "ledger").entries) == 1  # the chain did not fork


def test_a_held_ledger_is_refused_after_the_wait_naming_its_holder(tmp_path: Path):
    kwargs: dict[str, Any] = {"site": "s", "data_fingerprint": "f" * 64, "records": 4}
    busy = r"in use by another run \(pid \d+ run-a round 1\)"
    with (
        SiteLedger.locked(tmp_path, **kwargs, delta=DELTA, holder="run-a round 1"),
        pytest.raises(LedgerError, match=busy),
        SiteLedger.locked(tmp_path, **kwargs, delta=DELTA, wait=0.2),
    ):
        pass  # pragma: no cover


# --- finding 4: δ is fixed when the ledger opens --------------------------------------------


def test_the_open_line_records_the_ledgers_delta(tmp_path: Path):
    SiteLedger.open(tmp_path, site="s", data_fingerprint="f" * 64, records=4, delta=DELTA)
    opening = json.loads((tmp_path / LEDGER_FILE).read_text().splitlines()[0])
    assert (opening["version"], opening["delta"]) == (2, DELTA)


def test_a_larger_delta_cannot_refund_a_spent_budget(tmp_path: Path, stub_training: list[float]):
    site = site_file(tmp_path)
    node = {"ledger-dir": str(tmp_path / "ledger")}
    budget = (eps(1) + eps(2)) / 2
    assert isinstance(run_round(site, config(budget_epsilon=budget), node), PrivateRound)

    # At δ = 0.5 the history's ε would be far smaller and a second round would "fit".
    with pytest.raises(LedgerError, match=r"fixed at delta 0\.0001.*sets delta 0\.5"):
        run_round(site, config(budget_epsilon=budget, delta=0.5), node, run_id="run-b")
    declined = run_round(site, config(budget_epsilon=budget, delta=None), node, run_id="run-b")

    assert isinstance(declined, Declined)  # δ unset: the ledger's δ, and the budget holds
    assert declined.detail["epsilon-next"] == pytest.approx(eps(2), rel=1e-12)
    assert stub_training == [SIGMA]


def test_a_version_1_ledger_takes_the_delta_of_its_first_round(tmp_path: Path):
    fingerprint = "f" * 64
    head = append_chained(
        tmp_path / LEDGER_FILE,
        {"kind": "open", "version": 1, "site": "s", "data-fingerprint": fingerprint}
        | {"records": 20, "time": "t"},
        GENESIS,
        label="privacy ledger",
    )
    first = LedgerEntry("old", 1, 2, 0.5, SIGMA, 1.0, 1e-3, "rdp", 1.0, 1.0, "t")
    append_chained(tmp_path / LEDGER_FILE, {"kind": "round", **first.to_json()}, head, label="x")

    ledger = SiteLedger.open(tmp_path, site="s", data_fingerprint=fingerprint, records=20)

    assert ledger.delta == 1e-3
    with pytest.raises(LedgerError, match="refusing an entry at delta"):
        ledger.append(LedgerEntry("new", 1, 2, 0.5, SIGMA, 1.0, 0.5, "rdp", 0.5, 0.5, "t"))


def test_a_deployed_sites_delta_does_not_depend_on_the_coordinators_test_fraction(
    tmp_path: Path, stub_training: list[float]
):
    site = site_file(tmp_path)
    node = {
        "train-file": str(site.train_file),
        "site-name": "clinic",
        "ledger-dir": str(tmp_path / "ledger"),
        "budget-epsilon": 100.0,
    }
    # test-fraction 0.9 leaves 2 of the file's 20 records to train on
    outcome = run_round(site, config(test_fraction=0.9, delta=0.9), node, records=2)

    assert isinstance(outcome, PrivateRound)
    assert outcome.privacy["delta"] == 0.1 / RECORDS  # the whole file's records


# --- finding 9: a failed append leaves the ledger as it was ---------------------------------


def _ledger_with_a_round(directory: Path) -> SiteLedger:
    ledger = SiteLedger.open(directory, site="s", data_fingerprint="f" * 64, records=4)
    ledger.append(LedgerEntry("run-a", 1, 2, 0.5, SIGMA, 1.0, DELTA, "rdp", 1.0, 1.0, "t"))
    return ledger


def test_enospc_mid_append_leaves_the_ledger_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    ledger = _ledger_with_a_round(tmp_path)
    path = tmp_path / LEDGER_FILE
    before = path.read_bytes()
    real_write = os.write

    def disk_full(fd: int, data: Any) -> int:
        real_write(fd, bytes(data)[: len(data) // 2])  # half the line reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    nxt = LedgerEntry("run-a", 2, 2, 0.5, SIGMA, 1.0, DELTA, "rdp", 1.5, 1.5, "t")
    with pytest.raises(LedgerError, match="No space left on device"):
        ledger.append(nxt)
    monkeypatch.setattr(os, "write", real_write)

    assert path.read_bytes() == before
    assert len(ledger.entries) == 1  # the round is not spent: nothing left the site
    ledger.append(nxt)  # space freed: the next append works
    assert [e.round for e in read_ledger(tmp_path).entries] == [1, 2]


def test_a_file_size_limit_mid_append_leaves_the_ledger_byte_identical(tmp_path: Path):
    # A real short write by the kernel (RLIMIT_FSIZE), in a process of its own.
    _ledger_with_a_round(tmp_path)
    path = tmp_path / LEDGER_FILE
    before = path.read_bytes()
    code = textwrap.dedent(
        """
        import resource, signal, sys
        from pathlib import Path
        from fedlora.errors import LedgerError
        from fedlora.privacy.ledger_entry import LedgerEntry
        from fedlora.privacy.ledger import SiteLedger
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        ledger = SiteLedger.open(Path(sys.argv[1]), site="s", data_fingerprint="f" * 64,
                                 records=4)
        limit = (Path(sys.argv[1]) / "privacy-ledger.jsonl").stat().st_size + 40
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        try:
            ledger.append(LedgerEntry("run-a", 2, 2, 0.5, 1.1, 1.0, 1e-4, "rdp", 1.5, 1.5, "t"))
        except LedgerError as exc:
            print("refused:", exc)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env
    )

    assert "refused: cannot append" in done.stdout, done.stderr
    assert path.read_bytes() == before
    ledger = SiteLedger.open(tmp_path, site="s", data_fingerprint="f" * 64, records=4)
    ledger.append(LedgerEntry("run-a", 2, 2, 0.5, SIGMA, 1.0, DELTA, "rdp", 1.5, 1.5, "t"))
    assert len(read_ledger(tmp_path).entries) == 2


# --- finding 10: spend does not depend on where outputs go ----------------------------------


def test_default_ledger_root_is_one_per_user_folder(monkeypatch: pytest.MonkeyPatch):
    from fedlora.privacy.ledger_storage import default_ledger_root

    monkeypatch.setenv("FEDLORA_HOME", "/srv/fl")
    assert default_ledger_root() == Path("/srv/fl/ledgers")
    monkeypatch.delenv("FEDLORA_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", "/xdg")
    assert default_ledger_root() == Path("/xdg/fedlora/ledgers")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert default_ledger_root() == Path("/home/u/.local/share/fedlora/ledgers")


def test_a_new_output_folder_keeps_the_datas_spend(
    tmp_path: Path, stub_training: list[float], _ledgers_in_tmp: Path
):
    site = site_file(tmp_path)
    budget = (eps(1) + eps(2)) / 2
    first = run_round(site, config(budget_epsilon=budget, out=str(tmp_path / "a")), {})
    again = run_round(
        site, config(budget_epsilon=budget, out=str(tmp_path / "b")), {}, run_id="run-b"
    )

    assert isinstance(first, PrivateRound) and isinstance(again, Declined)
    assert Path(first.privacy["ledger"]).is_relative_to(_ledgers_in_tmp / "ledgers")
    policy = site_policy(
        config(out="elsewhere"), {}, site, records=RECORDS,
        data_fingerprint=data_fingerprint(site.train_file),
    )  # fmt: skip
    assert policy.ledger_dir.resolve() == Path(first.privacy["ledger"])


def test_a_rolled_back_ledger_is_refused_by_its_high_water_mark(
    tmp_path: Path, stub_training: list[float]
):
    site = site_file(tmp_path)
    node = {"ledger-dir": str(tmp_path / "ledger")}
    budget = (eps(2) + eps(3)) / 2
    for server_round in (1, 2):
        run_round(site, config(budget_epsilon=budget, rounds=2), node, server_round=server_round)
    path = tmp_path / "ledger" / LEDGER_FILE
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # e.g. restored from last night's backup

    with pytest.raises(LedgerError, match="has 2 lines but its high-water mark records 3"):
        run_round(site, config(budget_epsilon=budget), node, run_id="run-b")
    path.unlink()  # deleted outright
    with pytest.raises(LedgerError, match=r"is missing .* high-water mark records 3 lines"):
        run_round(site, config(budget_epsilon=budget), node, run_id="run-b")
    assert len(stub_training) == 2


def test_the_privacy_reply_carries_the_ledger_head(tmp_path: Path, stub_training: list[float]):
    site = site_file(tmp_path)
    outcome = run_round(site, config(), {"ledger-dir": str(tmp_path / "l")})

    assert isinstance(outcome, PrivateRound)
    ledger = read_ledger(tmp_path / "l")
    assert (outcome.privacy["ledger-lines"], outcome.privacy["ledger-head"]) == (2, ledger.head)


# --- finding 11: a run never spends budget it cannot finish ---------------------------------


def test_a_run_that_cannot_finish_is_declined_before_round_1_with_the_numbers(
    tmp_path: Path, stub_training: list[float]
):
    site = site_file(tmp_path)
    budget = (eps(1) + eps(2)) / 2  # one round fits, the planned two do not

    declined = run_round(
        site, config(budget_epsilon=budget, rounds=2), {"ledger-dir": str(tmp_path / "l")}
    )

    assert isinstance(declined, Declined) and declined.status == BUDGET_EXHAUSTED
    detail = declined.detail
    assert detail["epsilon-planned"] == pytest.approx(eps(2), rel=1e-12)
    assert (detail["rounds-planned"], detail["budget-left"]) == (2, budget)
    assert "fewer rounds" in detail["reason"] and "fit-budget" in detail["reason"]
    assert stub_training == []


def test_fit_budget_raises_the_noise_until_the_whole_run_fits(
    tmp_path: Path, stub_training: list[float]
):
    site = site_file(tmp_path)
    budget = (eps(1) + eps(2)) / 2
    fitting = config(budget_epsilon=budget, rounds=2, fit_budget=True)
    node = {"ledger-dir": str(tmp_path / "l")}

    outcomes = [run_round(site, fitting, node, server_round=r) for r in (1, 2)]

    assert all(isinstance(o, PrivateRound) for o in outcomes)
    assert stub_training[0] == stub_training[1] > SIGMA
    final = read_ledger(tmp_path / "l").entries[-1].epsilon_rdp
    assert budget - CALIBRATION_TOLERANCE <= final <= budget


def test_a_resumed_run_counts_the_rounds_it_already_trained(
    tmp_path: Path, stub_training: list[float]
):
    site = site_file(tmp_path)
    node = {"ledger-dir": str(tmp_path / "l")}
    three = config(budget_epsilon=(eps(3) + eps(4)) / 2, rounds=3)
    run_round(site, three, node, server_round=1)
    run_round(site, three, node, server_round=2)

    # Resumed at round 2 (cut short after its ledger entry): 2 spent + 2 planned > budget.
    resumed = run_round(site, three, node, server_round=2)
    assert isinstance(resumed, Declined)
    assert resumed.detail["epsilon-planned"] == pytest.approx(eps(4), rel=1e-12)
    # Resumed at round 3: 2 spent + 1 planned fits.
    assert isinstance(run_round(site, three, node, server_round=3), PrivateRound)
