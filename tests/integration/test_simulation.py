"""Real federations through Flower's simulation engine, with tiny models."""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from fedlora.models import load_base_model
from fedlora.testing import run_tiny_federation
from tests.conftest import write_jsonl
from tests.integration.helpers import read_metrics, reevaluate

pytestmark = pytest.mark.slow


def _assert_complete_run(run_dir: Path, rounds: int, sites: int) -> list[dict]:
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    metrics = read_metrics(run_dir)
    assert [m["round"] for m in metrics] == list(range(rounds + 1))
    for record in metrics[1:]:
        assert record["errors"] == []
        assert len(record["sites"]) == sites
        assert record["bytes-sent"] > 0 and record["bytes-received"] > 0
        for site in record["sites"].values():
            assert site["train"]["num-examples"] > 0
    for name in [f"round-{r:03d}" for r in range(1, rounds + 1)] + ["final"]:
        assert (run_dir / "adapters" / name / "adapter_model.safetensors").exists()
        assert (run_dir / "adapters" / name / "adapter_config.json").exists()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["base-fingerprint"].startswith("sha256:")
    assert {"flwr", "torch", "peft", "transformers"} <= set(config["versions"])
    assert len(config["sites"]) == sites
    return metrics


def _assert_reproduces(run_dir: Path, last: dict, metric: str) -> None:
    local = reevaluate(run_dir)
    assert set(local) == set(last["sites"])
    for site, result in local.items():
        assert result["loss"] == pytest.approx(last["sites"][site]["eval"]["loss"], rel=1e-5)
        assert result[metric] == pytest.approx(last["sites"][site]["eval"][metric], rel=1e-5)
    total = sum(r["num-examples"] for r in local.values())
    weighted = sum(r["loss"] * r["num-examples"] for r in local.values()) / total
    assert weighted == pytest.approx(last["eval"]["loss"], rel=1e-5)


def test_tiny_llama_instruction_tuning_three_sites_two_rounds(tmp_path):
    run_dir = run_tiny_federation(
        tmp_path, task="sft", model="tiny-llama", sites=3, rounds=2, lr=0.03
    )

    metrics = _assert_complete_run(run_dir, rounds=2, sites=3)

    assert metrics[-1]["eval"]["loss"] < metrics[0]["eval"]["loss"]
    assert metrics[-1]["eval"]["perplexity"] == pytest.approx(math.exp(metrics[-1]["eval"]["loss"]))
    _assert_reproduces(run_dir, metrics[-1], "perplexity")


def _triage_files(folder: Path, sites: int, per_site: int) -> list[Path]:
    """Three-department triage notes: department words mixed with shared filler words."""
    pools = {
        "respiratory": ["cough", "wheezing", "breathless", "sputum", "asthma"],
        "dermatology": ["rash", "itchy", "eczema", "mole", "blister"],
        "cardiology": ["palpitations", "chest", "pressure", "fainting", "heartbeat"],
    }
    filler = ["patient", "reports", "since", "days", "worse", "at", "night", "with", "mild", "pain"]
    rng = random.Random(0)
    files = []
    for site in range(sites):
        rows = []
        for _ in range(per_site):
            label = rng.choice(sorted(pools))
            words = [rng.choice(pools[label]) for _ in range(2)] + [
                rng.choice(filler) for _ in range(5)
            ]
            rng.shuffle(words)
            rows.append({"text": " ".join(words), "label": label})
        files.append(write_jsonl(folder / f"clinic-{site}.jsonl", rows))
    return files


def test_tiny_bert_classification_three_sites_two_rounds(tmp_path):
    files = _triage_files(tmp_path, sites=3, per_site=60)

    run_dir = run_tiny_federation(
        tmp_path / "runs",
        task="classification",
        model="tiny-bert",
        data_files=files,
        rounds=2,
        lr=0.03,
        local_epochs=3,
        # The backbone's learning check: DP noise at a useful ε on 48 records a site would
        # swamp two rounds' progress; DP runs are checked in test_privacy_run.py.
        dp=False,
    )

    metrics = _assert_complete_run(run_dir, rounds=2, sites=3)
    assert metrics[-1]["eval"]["loss"] < metrics[0]["eval"]["loss"]
    local = reevaluate(run_dir)
    assert set(local) == {"clinic-0", "clinic-1", "clinic-2"}
    for site, result in local.items():
        assert result["loss"] == pytest.approx(metrics[-1]["sites"][site]["eval"]["loss"], rel=1e-5)
        assert result["accuracy"] == pytest.approx(
            metrics[-1]["sites"][site]["eval"]["accuracy"], rel=1e-5
        )


def test_own_csv_files_with_a_local_model_directory(tmp_path, sentiment_rows):
    base = load_base_model("tiny-gpt2", task="classification", labels=("neg", "pos"))
    base.model.save_pretrained(tmp_path / "my-model")
    base.tokenizer.save_pretrained(tmp_path / "my-model")
    files = []
    for index in range(2):
        path = tmp_path / f"clinic-{index}.csv"
        rows = sentiment_rows[index::2]
        path.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
        files.append(path)

    run_dir = run_tiny_federation(
        tmp_path / "runs",
        task="classification",
        model=str(tmp_path / "my-model"),
        data_files=files,
        rounds=1,
        # The sites load the directory in the ClientApp either way; the Ray engine is covered
        # by the other runs here, so this one skips Ray's start-up.
        engine="inprocess",
    )

    metrics = _assert_complete_run(run_dir, rounds=1, sites=2)
    assert set(metrics[-1]["sites"]) == {"clinic-0", "clinic-1"}
    assert json.loads((run_dir / "config.json").read_text())["base-fingerprint"] == base.fingerprint


def test_cli_end_to_end_in_a_subprocess(tmp_path):
    command = [
        sys.executable,
        "-m",
        "fedlora.cli.main",
        "simulate",
        "--scenario",
        "banks",
        "--task",
        "classification",
        "--model",
        "tiny-bert",
        "--rounds",
        "1",
        "--sites",
        "2",
        "--examples-per-site",
        "30",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path),
        "--run-id",
        "cli-run",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert "Held-out evaluation before training vs after round 1" in result.stdout
    assert f"final adapter: {tmp_path / 'cli-run' / 'adapters' / 'final'}" in result.stdout
    _assert_complete_run(tmp_path / "cli-run", rounds=1, sites=2)
