from pathlib import Path

import pytest

from fedlora.data import (
    IGNORE_INDEX,
    PROMPT_TEMPLATE,
    ClassificationExample,
    SftExample,
    collate,
    collect_labels,
    load_examples,
    tokenize,
)
from fedlora.errors import DataError
from fedlora.tokenizer import tiny_tokenizer as byte_level_tokenizer
from tests.conftest import write_jsonl


def test_missing_file_is_named(tmp_path: Path):
    with pytest.raises(DataError, match=r"nope\.jsonl: data file not found"):
        load_examples(tmp_path / "nope.jsonl", "sft")


def test_unsupported_suffix(tmp_path: Path):
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match=r"unsupported data file type '\.txt'"):
        load_examples(tmp_path / "d.txt", "sft")


def test_malformed_jsonl_reports_file_and_line(tmp_path: Path):
    path = tmp_path / "site.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "a", "response": \n')
    with pytest.raises(DataError, match=r"site.jsonl:3: malformed JSON"):
        load_examples(path, "sft")


def test_non_object_line_is_refused(tmp_path: Path):
    path = tmp_path / "site.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"site.jsonl:1: expected a JSON object, got list"):
        load_examples(path, "sft")


@pytest.mark.parametrize(
    ("task", "row", "field"),
    [
        ("sft", {"prompt": "q"}, "response"),
        ("sft", {"response": "a"}, "prompt"),
        ("sft", {"instruction": "do", "input": "x"}, "output"),
        ("classification", {"label": "a"}, "text"),
        ("classification", {"text": "t"}, "label"),
    ],
)
def test_missing_field_is_named_with_its_line(tmp_path: Path, task, row, field):
    good = {"prompt": "q", "response": "a"} if task == "sft" else {"text": "t", "label": "a"}
    path = write_jsonl(tmp_path / "site.jsonl", [good, row])
    with pytest.raises(DataError, match=rf"site.jsonl:2: missing field '{field}'"):
        load_examples(path, task, labels=("a", "b"))


def test_unseen_label_is_refused(tmp_path: Path):
    path = write_jsonl(tmp_path / "site.jsonl", [{"text": "t", "label": "c"}])
    with pytest.raises(
        DataError, match=r"site.jsonl:1: label 'c' is not in the label set \(a, b\)"
    ):
        load_examples(path, "classification", labels=("a", "b"))


def test_empty_dataset_is_refused(tmp_path: Path):
    (tmp_path / "site.jsonl").write_text("\n")
    with pytest.raises(DataError, match="site dataset is empty"):
        load_examples(tmp_path / "site.jsonl", "sft")


def test_csv_header_only_is_empty(tmp_path: Path):
    (tmp_path / "site.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="site dataset is empty"):
        load_examples(tmp_path / "site.csv", "classification", labels=("a", "b"))


def test_csv_rows_are_read_with_line_numbers(tmp_path: Path):
    (tmp_path / "site.csv").write_text('text,label\n"hello, world",a\nbye,z\n')
    with pytest.raises(DataError, match=r"site.csv:3: label 'z'"):
        load_examples(tmp_path / "site.csv", "classification", labels=("a", "b"))


def test_csv_examples(tmp_path: Path):
    (tmp_path / "site.csv").write_text('text,label\n"hello, world",b\n')
    assert load_examples(tmp_path / "site.csv", "classification", labels=("a", "b")) == [
        ClassificationExample("hello, world", 1)
    ]


def test_alpaca_records_become_prompts(tmp_path: Path):
    path = write_jsonl(
        tmp_path / "a.jsonl", [{"instruction": "Translate", "input": "hola", "output": "hello"}]
    )
    [example] = load_examples(path, "sft")
    assert example == SftExample(
        PROMPT_TEMPLATE.format(instruction="Translate\n\n### Input:\nhola"), "hello"
    )


def test_collect_labels_is_sorted_union(tmp_path: Path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "t", "label": "z"}])
    b = write_jsonl(
        tmp_path / "b.jsonl", [{"text": "t", "label": "m"}, {"text": "u", "label": "z"}]
    )
    assert collect_labels([a, b]) == ("m", "z")


def test_sft_loss_covers_response_tokens_only():
    tokenizer = byte_level_tokenizer()
    dataset = tokenize([SftExample("Q: ", "ok")], tokenizer, max_length=64)
    item = dataset[0]
    prompt_ids = tokenizer("Q: ", add_special_tokens=False)["input_ids"]
    response_ids = tokenizer("ok", add_special_tokens=False)["input_ids"]
    masked = 1 + len(prompt_ids)  # <s> and the prompt carry no loss
    assert item["labels"] == [IGNORE_INDEX] * masked + response_ids + [tokenizer.eos_token_id]
    assert item["input_ids"] == [
        tokenizer.bos_token_id,
        *prompt_ids,
        *response_ids,
        tokenizer.eos_token_id,
    ]


def test_example_whose_response_is_truncated_away_is_dropped():
    tokenizer = byte_level_tokenizer()
    dataset = tokenize(
        [SftExample("x" * 20, "answer"), SftExample("q", "a")], tokenizer, max_length=10
    )
    assert len(dataset) == 1


def test_collate_pads_sft_labels_with_ignore_index():
    batch = collate(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}],
        pad_id=0,
        task="sft",
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]


def test_collate_classification_labels_are_one_per_example():
    batch = collate(
        [{"input_ids": [5], "labels": [1]}, {"input_ids": [6, 7], "labels": [0]}],
        pad_id=0,
        task="classification",
    )
    assert batch["labels"].tolist() == [1, 0]
