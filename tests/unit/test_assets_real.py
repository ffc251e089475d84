"""The real assets, once fetched (``fedlora assets fetch``): their layout is what fedlora uses."""

from __future__ import annotations

import csv
import json

import pytest

from tests.real_assets import require_asset

pytestmark = pytest.mark.real


def test_smollm2_is_a_gguf_file():
    path = require_asset("smollm2-135m")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF"


def test_minilm_is_a_bert_folder():
    folder = require_asset("minilm-l6")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


@pytest.mark.parametrize(("file", "rows"), [("drugsComTrain.tsv", 600), ("drugsComTest.tsv", 379)])
def test_drug_reviews_hold_the_two_tsvs(file: str, rows: int):
    with (require_asset("drug-reviews") / file).open(encoding="utf-8", newline="") as handle:
        records = list(csv.DictReader(handle, delimiter="\t"))
    assert len(records) == rows
    assert {"drugName", "condition", "review", "rating"} <= set(records[0])
    assert {r["rating"] for r in records} == {"positive", "negative", "neutral"}
