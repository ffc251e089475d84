"""Every bad input is one line on stderr, exit code 2, and no run directory."""

from pathlib import Path

import pytest

from fedlora.cli import main
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
    assert not [p for p in out.glob("*") if p.name != ".scenario-data"], (
        "a run directory was created"
    )


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
    import simulations.runner
    from fedlora.errors import FedloraError

    def stop(*_args, **_kwargs):
        raise FedloraError("stopped by the test")

    monkeypatch.setattr(simulations.runner, "simulate", stop)
    code, err = _run(["--no-dp"], capsys, tmp_path / "runs")

    assert code == 2
    warning, error = err.strip().splitlines()
    assert warning.startswith("fedlora: warning: differential privacy is OFF (--no-dp)")
    assert error == "fedlora: error: stopped by the test"
