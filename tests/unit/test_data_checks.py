"""The user's data files are checked before anything heavy loads (issue 17, item 10).

Non-string text fields are refused with file and line, one data set given twice is refused
in one line, a tiny site is warned about with its numbers, a file of the other task's fields
says which ``--task`` fits, and all of it happens before torch, transformers or Flower load.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from fedlora.cli.main import main
from fedlora.config import RunConfig
from fedlora.errors import DataError
from fedlora.records import collect_labels, load_examples
from fedlora.simulations.checks import check_own_data, check_sites_data
from fedlora.sites import SiteSpec, sites_from_files
from tests.conftest import write_jsonl

SFT = [{"prompt": f"question {i}?", "response": f"answer {i}."} for i in range(30)]


def _refused(argv: list[str], capsys, out: Path) -> str:
    code = main(["simulate", "--quiet", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fedlora: error: ")
    assert not out.exists(), "a refusal left an output folder"
    return lines[0]


TEXT = "must be text (a JSON string), got the"


@pytest.mark.parametrize(
    ("task", "row", "message"),
    [
        ("sft", {"prompt": "q", "response": 42}, f"field 'response' {TEXT} number 42"),
        ("sft", {"prompt": ["q"], "response": "a"}, f"field 'prompt' {TEXT} array [\"q\"]"),
        (
            "sft",
            {"instruction": "do", "input": True, "output": "a"},
            f"field 'input' {TEXT} boolean true",
        ),
        (
            "sft",
            {"instruction": {"x": 1}, "output": "a"},
            f"field 'instruction' {TEXT} object {{\"x\": 1}}",
        ),
        ("classification", {"text": 3.5, "label": "a"}, f"field 'text' {TEXT} number 3.5"),
        (
            "classification",
            {"text": "t", "label": 1.5},
            "field 'label' must be a JSON string or a whole number, got the number 1.5",
        ),
    ],
)
def test_a_non_string_field_is_refused_with_file_and_line(tmp_path, task, row, message):
    good = {"prompt": "q", "response": "a"} if task == "sft" else {"text": "t", "label": "a"}
    path = write_jsonl(tmp_path / "site.jsonl", [good, row])
    with pytest.raises(DataError) as refused:
        load_examples(path, task, labels=("a", "1"))
    assert str(refused.value) == f"{path}:2: {message}"


def test_a_whole_number_label_is_a_label(tmp_path):
    path = write_jsonl(
        tmp_path / "site.jsonl", [{"text": "t", "label": 1}, {"text": "u", "label": "0"}]
    )
    assert collect_labels([path]) == ("0", "1")
    assert [e.label for e in load_examples(path, "classification", ("0", "1"))] == [1, 0]


def test_the_cli_refuses_the_issues_response_42_in_one_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", [*SFT[:3], {"prompt": "q", "response": 42}])
    line = _refused(["--data", str(path)], capsys, tmp_path / "runs")
    assert line == f"fedlora: error: {path}:4: field 'response' {TEXT} number 42"


def test_one_file_given_twice_is_refused_in_one_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "clinic_a.jsonl", SFT)
    line = _refused(["--data", str(path), "--data", str(path)], capsys, tmp_path / "runs")
    assert f"{path} holds the same data as {path}" in line
    assert "give each data set once (one data set is one site, with one privacy ledger)" in line


def test_a_copy_of_a_file_under_another_name_is_the_same_data(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", SFT)
    copy = tmp_path / "elsewhere" / "b.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    config = RunConfig(data_files=(str(first), str(copy)))
    with pytest.raises(
        DataError, match=r"b\.jsonl holds the same data as .*a\.jsonl \(SHA-256 [0-9a-f]{12}…\)"
    ):
        check_own_data(config)
    other = write_jsonl(tmp_path / "c.jsonl", SFT[:-1])
    check_own_data(RunConfig(data_files=(str(first), str(other))))  # other data: two sites


def test_a_tiny_site_is_warned_about_with_its_numbers(tmp_path, caplog):
    tiny = write_jsonl(tmp_path / "tiny.jsonl", SFT[:3])
    big = write_jsonl(tmp_path / "big.jsonl", SFT)
    config = RunConfig(data_files=(str(tiny), str(big)))
    with caplog.at_level(logging.WARNING, logger="fedlora.simulations.checks"):
        counts = check_sites_data(config, sites_from_files(config.data_files))
    assert counts == [2, 24]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(
        f"site tiny has only 2 training record(s) (3 in {tiny}): DP noise drowns"
    )
    assert "δ = 0.0333 (0.1 / 3 records) is large" in warnings[0]


def test_a_delta_not_below_one_over_records_is_warned_about(tmp_path, caplog):
    path = write_jsonl(tmp_path / "site.jsonl", SFT[:20])
    config = RunConfig(data_files=(str(path),), delta=0.1)
    with caplog.at_level(logging.WARNING, logger="fedlora.simulations.checks"):
        check_sites_data(config, [SiteSpec("site", path)])
    assert [r.getMessage() for r in caplog.records] == [
        "site site: δ = 0.1 is not below 1 / records = 0.05: (ε, δ)-DP at this δ allows "
        "publishing δ × 20 = 2 of its records outright"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedlora.simulations.checks"):
        check_sites_data(config.replace(delta=0.01), [SiteSpec("site", path)])
        check_sites_data(config, [SiteSpec("site", path)], warn=False)
    assert not caplog.records


HINT = "the fields of --task {0} data: run with --task {0})"


@pytest.mark.parametrize(
    ("task", "row", "message"),
    [
        (
            "sft",
            {"text": "t", "label": "a"},
            "missing field 'prompt' (the record has 'text' and 'label', "
            + HINT.format("classification"),
        ),
        (
            "classification",
            {"prompt": "q", "response": "a", "label": "x"},
            "missing field 'text' (the record has 'prompt' and 'response', " + HINT.format("sft"),
        ),
        (
            "classification",
            {"instruction": "q", "output": "a"},
            "missing field 'label' (the record has 'instruction' and 'output', "
            + HINT.format("sft"),
        ),
    ],
)
def test_the_other_tasks_fields_name_the_task_that_fits(tmp_path, capsys, task, row, message):
    path = write_jsonl(tmp_path / "site.jsonl", [row])
    line = _refused(["--task", task, "--data", str(path)], capsys, tmp_path / "runs")
    assert line == f"fedlora: error: {path}:1: {message}"


_PROBE = """
import sys
from fedlora.cli.main import main
code = main(["simulate", "--quiet", "--out", sys.argv[1], *sys.argv[2:]])
heavy = sorted({"torch", "flwr", "transformers", "opacus", "peft"} & set(sys.modules))
print(code, heavy)
"""


@pytest.mark.parametrize(
    "fault", ["response-42", "same-file-twice", "wrong-task", "malformed", "unknown-label"]
)
def test_data_errors_come_before_any_heavy_import(tmp_path, fault):
    path = tmp_path / "site.jsonl"
    expected = {
        "response-42": f"{path}:31: field 'response' {TEXT} number 42",
        "same-file-twice": f"{path} holds the same data as {path}",
        "wrong-task": f"{path}:1: missing field 'prompt' (the record has 'text' and 'label'",
        "malformed": f"{path}:31: malformed JSON",
        "unknown-label": f"{path}:2: label 'c' is not in the label set (a, b)",
    }[fault]
    if fault == "response-42":
        write_jsonl(path, [*SFT, {"prompt": "q", "response": 42}])
        argv = ["--data", str(path)]
    elif fault == "same-file-twice":
        write_jsonl(path, SFT)
        argv = ["--data", str(path), "--data", str(path)]
    elif fault == "wrong-task":
        write_jsonl(path, [{"text": "t", "label": "a"}] * 20)
        argv = ["--data", str(path)]
    elif fault == "malformed":
        write_jsonl(path, SFT)
        path.write_text(path.read_text() + '{"prompt": "q", "response": \n')
        argv = ["--data", str(path)]
    else:
        write_jsonl(path, [{"text": "t", "label": "a"}, {"text": "u", "label": "c"}])
        argv = ["--task", "classification", "--labels", "a,b", "--data", str(path)]
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path / "runs"), *argv],
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == "2 []", result.stdout + result.stderr
    assert result.stderr.startswith(f"fedlora: error: {expected}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
