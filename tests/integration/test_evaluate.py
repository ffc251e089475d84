"""``fedlora evaluate`` and ``fedlora generate`` on tiny runs made in this process."""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from fedlora.cli.main import main
from fedlora.config import RunConfig
from fedlora.data import PROMPT_TEMPLATE
from fedlora.evaluation import RunEvaluator
from fedlora.models import load_base_model
from fedlora.testing import run_tiny_federation, write_sft_file

pytestmark = pytest.mark.slow

TINY = {"rounds": 1, "examples_per_site": 12, "sites": 2, "engine": "inprocess"}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft")
    return run_tiny_federation(out, task="sft", ledger_root=str(out / "ledgers"), **TINY)


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cls")
    return run_tiny_federation(out, task="classification", ledger_root=str(out / "ledgers"), **TINY)


def _metrics_round_zero(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


def test_evaluate_sft_writes_every_adapter(sft_run, capsys):
    assert main(["evaluate", str(sft_run), "--max-new-tokens", "4"]) == 0
    table = capsys.readouterr().out
    assert "exact-match" in table
    report = json.loads((sft_run / "evaluation.json").read_text())
    assert report["task"] == "sft"
    assert [row["adapter"] for row in report["adapters"]] == ["initial", "round-001", "final"]
    assert sum(report["data"]["sites"].values()) == report["adapters"][0]["num-examples"]
    for row in report["adapters"]:
        assert 0.0 <= row["exact-match"] <= 1.0
        assert row["loss"] > 0
    # the initial adapter is the one the run evaluated at round 0: the same held-out loss,
    # pooled over the sites' response tokens
    sites = _metrics_round_zero(sft_run)["sites"].values()
    tokens = sum(site["eval"]["num-tokens"] for site in sites)
    pooled = sum(site["eval"]["loss"] * site["eval"]["num-tokens"] for site in sites) / tokens
    assert report["adapters"][0]["loss"] == pytest.approx(pooled, rel=1e-4)


def test_evaluate_classification_with_a_data_file(classification_run, tmp_path, capsys):
    config = json.loads((classification_run / "config.json").read_text())["config"]
    labels = config["labels"].split(",")
    data = tmp_path / "held_out.jsonl"
    rows = [{"text": f"record {index} text", "label": labels[index % 2]} for index in range(6)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["evaluate", str(classification_run), "--data", str(data)]) == 0
    assert "macro-f1" in capsys.readouterr().out
    report = json.loads((classification_run / "evaluation.json").read_text())
    assert report["data"] == {"file": str(data.resolve())}
    for row in report["adapters"]:
        assert row["num-examples"] == 6
        assert 0.0 <= row["macro-f1"] <= 1.0
        assert 0.0 <= row["accuracy"] <= 1.0


def _greedy_answer(run_dir: Path, question: str, max_new_tokens: int) -> str:
    """The final adapter's greedy answer, by PEFT's own loader and an argmax loop."""
    config = RunConfig.from_flat(json.loads((run_dir / "config.json").read_text())["config"])
    base = load_base_model(config.model, task="sft", max_length=config.max_length)
    model = PeftModel.from_pretrained(base.model, run_dir / "adapters" / "final").eval()
    prompt = PROMPT_TEMPLATE.format(instruction=question)
    ids = list(base.tokenizer(prompt)["input_ids"])
    bos = base.tokenizer.bos_token_id
    if bos is not None and ids[:1] != [bos]:
        ids.insert(0, bos)  # training prompts start with bos whether or not the tokenizer adds it
    answer: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=torch.tensor([ids + answer])).logits[0, -1].argmax())
            if token == base.tokenizer.eos_token_id:
                break
            answer.append(token)
    return str(base.tokenizer.decode(answer, skip_special_tokens=True)).strip()


def test_generate_prints_the_final_adapters_greedy_answer(sft_run, capsys):
    question = "Question 3 at a site?"
    assert main(["generate", str(sft_run), question, "--max-new-tokens", "5"]) == 0
    first = capsys.readouterr()
    # the tiny model's DP-trained answer is random text, and may be empty
    assert first.out == _greedy_answer(sft_run, question, 5) + "\n"
    assert main(["generate", str(sft_run), question, "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == first.out  # greedy: the same answer every time


def test_an_empty_answer_is_a_blank_line_and_a_note(sft_run, capsys, monkeypatch):
    monkeypatch.setattr(RunEvaluator, "generate", lambda *args, **kwargs: "")
    assert main(["generate", str(sft_run), "Question 3 at a site?"]) == 0
    out = capsys.readouterr()
    assert out.out == "\n"
    assert "final adapter's answer is empty" in out.err


def test_generate_refuses_a_classification_run(classification_run, capsys):
    assert main(["generate", str(classification_run), "hello"]) == 2
    assert "sft" in capsys.readouterr().err


def test_a_bad_run_dir_is_one_line_and_exit_2(tmp_path, capsys):
    for command in (["evaluate", str(tmp_path / "missing")], ["generate", str(tmp_path), "q"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("fedlora: error:") and err.count("\n") == 1


def test_a_run_whose_site_files_are_gone_asks_for_data(tmp_path, capsys):
    files = [write_sft_file(tmp_path / f"site{i}.jsonl", f"s{i}", 10) for i in range(2)]
    run_dir = run_tiny_federation(
        tmp_path / "runs",
        task="sft",
        data_files=files,
        rounds=1,
        engine="inprocess",
        ledger_root=str(tmp_path / "ledgers"),
    )
    files[0].unlink()
    assert main(["evaluate", str(run_dir)]) == 2
    assert "--data" in capsys.readouterr().err


def test_the_example_answers_are_the_initial_and_final_adapters_own(sft_run):
    from fedlora.cli.answers import before_and_after
    from fedlora.cli.evaluate import held_out_sources
    from fedlora.evaluation import INITIAL, Checkpoint, RunEvaluator

    comparison = before_and_after(sft_run)
    evaluator = RunEvaluator(sft_run)
    site, examples = held_out_sources(sft_run, evaluator.config)[0]
    evaluator.use(Checkpoint(INITIAL, None))
    assert comparison.before == evaluator.answer(examples[0])
    assert comparison.loss_before == evaluator.evaluate(examples[:1], max_new_tokens=1)["loss"]
    evaluator.use(evaluator.checkpoints()[-1])
    assert comparison.after == evaluator.answer(examples[0])
    assert comparison.loss_after == evaluator.evaluate(examples[:1], max_new_tokens=1)["loss"]
    assert comparison.site == site
    assert comparison.reference == examples[0].response.strip()
    assert "### Instruction" not in comparison.question and comparison.question in (
        examples[0].prompt
    )


def test_a_classification_example_is_answered_with_label_names(classification_run):
    from fedlora.cli.answers import before_and_after

    config = json.loads((classification_run / "config.json").read_text())["config"]
    comparison = before_and_after(classification_run)
    labels = config["labels"].split(",")
    assert {comparison.before, comparison.after, comparison.reference} <= set(labels)
