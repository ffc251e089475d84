"""Every bad input is one line on stderr, exit code 2, and nothing written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedlora.cli.main import main
from fedlora.errors import FedloraError
from tests.conftest import write_jsonl


def _run(argv: list[str], capsys, out: Path) -> tuple[int, str]:
    code = main(["simulate", "--quiet", "--out", str(out), *argv])
    return code, capsys.readouterr().err


def _assert_refused(code: int, err: str, out: Path, message: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fedlora: error: ")
    assert message in lines[0]
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    assert not left, f"a refusal left {left} in {out}"


@pytest.fixture
def no_training(monkeypatch):
    """Fail a test that gets as far as starting the federation, instead of running it."""
    import fedlora.simulations.runner

    def start(*_args, **_kwargs):
        raise FedloraError("the federation was started")

    monkeypatch.setattr(fedlora.simulations.runner, "ServerApp", start)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rounds", "0"], "rounds must be >= 1, got 0"),
        (["--sites", "0"], "sites must be >= 1, got 0"),
        (["--alpha", "0"], "alpha must be > 0"),
        (["--alpha", "-1"], "alpha must be > 0"),
        (["--model", "tiny-mamba"], "unknown model 'tiny-mamba'"),
        (["--model", "./models/missing"], "model directory not found: ./models/missing"),
        (["--scenario", "airports"], "unknown scenario 'airports'"),
        (["--strategy", "fedsgd"], "unknown strategy 'fedsgd'"),
        (
            ["--task", "classification", "--model", "tiny-bert", "--lora-r", "0"],
            "lora-r must be >= 1",
        ),
    ],
)
def test_bad_settings(tmp_path, capsys, argv, message):
    code, err = _run(argv, capsys, tmp_path / "runs")
    _assert_refused(code, err, tmp_path / "runs", message)


def test_missing_data_file(tmp_path, capsys):
    code, err = _run(["--data", str(tmp_path / "absent.jsonl")], capsys, tmp_path / "runs")
    _assert_refused(code, err, tmp_path / "runs", "absent.jsonl: data file not found")


def test_unreadable_data_file(tmp_path, capsys):
    path = tmp_path / "site.jsonl"
    path.write_bytes(b"\xff\xfe\x00bad")
    code, err = _run(["--data", str(path)], capsys, tmp_path / "runs")
    _assert_refused(code, err, tmp_path / "runs", "cannot read data file")


def test_malformed_jsonl_line(tmp_path, capsys):
    good = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "response": "a"}] * 3)
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"prompt": "q", "response": "a"}\n{"prompt": oops}\n')
    code, err = _run(["--data", str(good), "--data", str(bad)], capsys, tmp_path / "runs")
    _assert_refused(code, err, tmp_path / "runs", "b.jsonl:2: malformed JSON")


@pytest.mark.parametrize(
    ("task", "row", "field"),
    [
        ("sft", {"response": "a"}, "prompt"),
        ("classification", {"text": "t"}, "label"),
        ("classification", {"label": "x"}, "text"),
    ],
)
def test_missing_field(tmp_path, capsys, task, row, field):
    path = write_jsonl(tmp_path / "a.jsonl", [row])
    argv = ["--task", task, "--data", str(path)] + (
        ["--labels", "x,y", "--model", "tiny-bert"] if task == "classification" else []
    )
    code, err = _run(argv, capsys, tmp_path / "runs")
    _assert_refused(code, err, tmp_path / "runs", f"a.jsonl:1: missing field '{field}'")


def test_label_outside_the_label_set(tmp_path, capsys):
    path = write_jsonl(
        tmp_path / "a.jsonl", [{"text": "t", "label": "x"}, {"text": "u", "label": "maybe"}]
    )
    code, err = _run(
        [
            "--task",
            "classification",
            "--model",
            "tiny-bert",
            "--labels",
            "x,y",
            "--data",
            str(path),
        ],
        capsys,
        tmp_path / "runs",
    )
    _assert_refused(
        code, err, tmp_path / "runs", "a.jsonl:2: label 'maybe' is not in the label set (x, y)"
    )


def test_empty_site_dataset(tmp_path, capsys):
    good = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "response": "a"}] * 3)
    (tmp_path / "empty.jsonl").write_text("")
    code, err = _run(
        ["--data", str(good), "--data", str(tmp_path / "empty.jsonl")], capsys, tmp_path / "runs"
    )
    _assert_refused(code, err, tmp_path / "runs", "empty.jsonl: site dataset is empty")


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = _run([], capsys, blocker / "runs")
    assert code == 2
    assert "cannot create output folder" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--noise-multiplier", "-0.5"], "--noise-multiplier must be >= 0, got -0.5"),
        (["--max-grad-norm", "0"], "max-grad-norm must be > 0"),
        (["--delta", "1.5"], "--delta must be in (0, 1)"),
        (["--delta", "-0.1"], "--delta must be in (0, 1)"),
        (["--target-epsilon", "0"], "--target-epsilon must be > 0"),
        (["--target-epsilon", "-2"], "--target-epsilon must be > 0"),
        (["--budget-epsilon", "0"], "budget-epsilon must be > 0"),
        (["--site-budget", "mercy-general"], "site-budgets items must be name=epsilon"),
        (["--central-dp", "fixed", "--central-clip-norm", "0"], "central-clip-norm must be > 0"),
        (
            ["--sites", "2", "--target-epsilon", "0.001", "--rounds", "50"],
            "is unreachable for",
        ),
    ],
)
def test_bad_privacy_settings(tmp_path, capsys, argv, message):
    code, err = _run(argv, capsys, tmp_path / "runs")
    _assert_refused(code, err, tmp_path / "runs", message)


def test_no_dp_run_is_warned_about_before_it_starts(tmp_path, capsys, monkeypatch):
    import fedlora.simulations.runner
    from fedlora.errors import FedloraError

    def stop(*_args, **_kwargs):
        raise FedloraError("stopped by the test")

    monkeypatch.setattr(fedlora.simulations.runner, "simulate", stop)
    code, err = _run(["--no-dp"], capsys, tmp_path / "runs")

    assert code == 2
    warning, error = err.strip().splitlines()
    assert warning.startswith("fedlora: warning: differential privacy is OFF (--no-dp)")
    assert error == "fedlora: error: stopped by the test"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sites", "100000000"], "sites must be <= 1,000, got 100,000,000"),
        (["--examples-per-site", "1e12"], "examples-per-site must be <= 1,000,000, got 1,"),
        (["--examples-per-site", "1000000000000"], "examples-per-site must be <= 1,000,000"),
        (["--sites", "1000", "--examples-per-site", "5000"], "sites × examples-per-site"),
        (["--rounds", "1e9"], "rounds must be <= 100,000"),
        (["--batch-size", "10000000"], "batch-size must be <= 65,536"),
        (["--max-length", "1e7"], "max-length must be <= 32,768"),
        (["--lora-r", "1e6"], "lora-r must be <= 4,096"),
    ],
)
def test_absurd_sizes_are_refused(tmp_path, capsys, argv, message):
    code, err = _run(argv, capsys, tmp_path / "runs")
    _assert_refused(code, err, tmp_path / "runs", message)


def test_absurd_sizes_are_refused_at_once(tmp_path):
    # Before torch, Flower or any data: the refusal costs a fraction of a second.
    probe = (
        "import sys\n"
        "from fedlora.cli.main import main\n"
        "codes = [main(['simulate', '--quiet', '--out', sys.argv[1], *argv.split()])\n"
        "         for argv in ('--sites 100000000', '--examples-per-site 1e12')]\n"
        "heavy = sorted({'torch', 'flwr', 'transformers'} & set(sys.modules))\n"
        "print(codes, heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "runs")], capture_output=True, text=True
    )
    assert result.stdout.strip() == "[2, 2] []", result.stderr
    assert len(result.stderr.strip().splitlines()) == 2, result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", ["inf", "nan"])
@pytest.mark.parametrize(
    "flag",
    ["--budget-epsilon", "--lr", "--max-grad-norm", "--central-clip-norm", "--server-lr"],
)
def test_non_finite_numbers_are_refused(tmp_path, capsys, flag, value):
    code, err = _run([flag, value], capsys, tmp_path / "runs")
    _assert_refused(
        code, err, tmp_path / "runs", f"{flag[2:]} must be a finite number, got {value}"
    )


def test_infinite_target_epsilon_is_refused(tmp_path, capsys):
    code, err = _run(["--target-epsilon", "inf"], capsys, tmp_path / "runs")
    _assert_refused(code, err, tmp_path / "runs", "target-epsilon must be a finite number")


@pytest.mark.parametrize(
    "run_id", ["../../escape", "..", ".hidden", "a/b", "/tmp/abs", "x" * 200, "a b"]
)
def test_unsafe_run_id_is_refused_and_nothing_is_written(tmp_path, capsys, no_training, run_id):
    out = tmp_path / "deep" / "runs"
    code, err = _run(["--run-id", run_id], capsys, out)
    _assert_refused(code, err, out, "--run-id")
    assert "is not a valid run id" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


def test_resume_of_an_unsafe_run_directory_is_refused(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    code = main(["simulate", "--quiet", "--resume", f"{tmp_path}/runs/.."])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "is not a valid run id" in err


def test_resume_of_a_missing_run_directory_is_refused(tmp_path, capsys):
    code = main(["simulate", "--quiet", "--resume", str(tmp_path / "runs" / "nope")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"fedlora: error: run directory {tmp_path / 'runs' / 'nope'} not found"


@pytest.mark.parametrize("below", ["", "sub"])
def test_ledger_root_that_is_a_file_is_refused_before_anything_runs(
    tmp_path, capsys, no_training, below
):
    blocker = tmp_path / "ledgers"
    blocker.write_text("not a folder")
    root = blocker / below if below else blocker
    code, err = _run(["--ledger-root", str(root)], capsys, tmp_path / "runs")
    _assert_refused(code, err, tmp_path / "runs", f"{blocker} is not a folder")
    assert "ledger-root" in err


def test_refusal_after_data_generation_leaves_no_scenario_data_and_no_ledgers(
    tmp_path, capsys, no_training
):
    out, ledgers = tmp_path / "deep" / "runs", tmp_path / "ledgers"
    argv = ["--sites", "2", "--target-epsilon", "0.001", "--rounds", "50"]
    code, err = _run([*argv, "--ledger-root", str(ledgers)], capsys, out)
    _assert_refused(code, err, out, "is unreachable for")
    assert list(tmp_path.iterdir()) == []  # no run, no .scenario-data, no ledgers, no out


def test_a_refusal_keeps_scenario_data_of_earlier_runs(tmp_path, capsys, no_training):
    earlier = tmp_path / "runs" / ".scenario-data" / "hospitals-sft-0123" / "site" / "train.jsonl"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("{}\n")
    argv = ["--sites", "2", "--target-epsilon", "0.001", "--rounds", "50"]
    code, err = _run(argv, capsys, tmp_path / "runs")
    assert code == 2
    assert "is unreachable for" in err
    assert [p.name for p in (tmp_path / "runs" / ".scenario-data").iterdir()] == [
        "hospitals-sft-0123"
    ]


def test_generated_scenario_data_are_kept_once_checked(tmp_path, capsys, no_training):
    code, err = _run(["--sites", "2"], capsys, tmp_path / "runs")
    assert code == 2
    assert "the federation was started" in err
    [folder] = (tmp_path / "runs" / ".scenario-data").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["mercy-general", "st-elsewhere"]
    assert (folder / "st-elsewhere" / "train.jsonl").stat().st_size > 0


def test_deeply_nested_json_line_is_one_line(tmp_path, capsys):
    good = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "response": "a"}] * 3)
    deep = tmp_path / "deep.jsonl"
    deep.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n" + "[" * 100_000 + "\n")
    code, err = _run(["--data", str(good), "--data", str(deep)], capsys, tmp_path / "runs")
    _assert_refused(code, err, tmp_path / "runs", "deep.jsonl:2: malformed JSON: nested too deeply")
