from pathlib import Path

import pytest

from fedlora import data, records
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


def test_left_out_records_are_counted_and_named_in_one_warning(caplog):
    examples = [SftExample("x" * 20, "answer")] * 3 + [SftExample("q", "a")]
    with caplog.at_level("WARNING", logger="fedlora.data"):
        dataset = tokenize(
            examples, byte_level_tokenizer(), max_length=10, where="site a, training records"
        )
    assert len(dataset) == 1
    [warning] = [record.getMessage() for record in caplog.records]
    assert warning.startswith("site a, training records: 3 of 4 example(s) (75%) left out")
    assert "max-length 10" in warning and "raise --max-length" in warning


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


@pytest.mark.parametrize(
    "line", ["[" * 100_000 + "]" * 100_000, '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"]
)
def test_deeply_nested_json_is_a_data_error_with_its_line(tmp_path: Path, line):
    path = tmp_path / "site.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n' + line + "\n")
    with pytest.raises(DataError, match=r"site.jsonl:2: malformed JSON: nested too deeply"):
        load_examples(path, "sft")


def test_json_integer_past_the_digit_limit_is_a_data_error(tmp_path: Path):
    path = tmp_path / "site.jsonl"
    path.write_text('{"prompt": "a", "response": ' + "9" * 5000 + "}\n")
    with pytest.raises(DataError, match=r"site.jsonl:1: malformed JSON: .*digits"):
        load_examples(path, "sft")


def test_over_long_line_is_refused_with_its_line(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(records, "MAX_LINE_CHARS", 1000)
    path = tmp_path / "site.jsonl"
    rows = [{"prompt": "q", "response": "a"}, {"prompt": "q" * 2000, "response": "a"}]
    write_jsonl(path, rows)
    with pytest.raises(DataError, match=r"site.jsonl:2: line longer than 1,000 characters"):
        load_examples(path, "sft")


def test_over_long_line_is_not_read_whole(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(records, "MAX_LINE_CHARS", 1000)
    path = tmp_path / "site.jsonl"
    path.write_text("x" * 100_000)
    reads: list[int] = []
    real_open = Path.open

    def spy_open(self, *args, **kwargs):
        handle = real_open(self, *args, **kwargs)
        readline = handle.readline

        class Spy:
            def __getattr__(self, name):
                return getattr(handle, name)

            def readline(self, size=-1):
                line = readline(size)
                reads.append(len(line))
                return line

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

        return Spy()

    monkeypatch.setattr(Path, "open", spy_open)
    with pytest.raises(DataError, match="line longer than"):
        load_examples(path, "sft")
    assert max(reads) <= 1001


def test_file_over_the_size_limit_is_refused(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(records, "MAX_FILE_BYTES", 100)
    path = write_jsonl(tmp_path / "site.jsonl", [{"prompt": "q", "response": "a"}] * 10)
    with pytest.raises(DataError, match=r"site.jsonl: data file is \d+ bytes, over the 100-byte"):
        load_examples(path, "sft")


def test_csv_text_longer_than_the_csv_default_field_limit_is_read(tmp_path: Path):
    text = "word " * 40_000  # 200,000 characters, past csv's default 131,072
    (tmp_path / "site.csv").write_text(f'text,label\n"{text}",a\n')
    [example] = load_examples(tmp_path / "site.csv", "classification", labels=("a",))
    assert example.text == text


def test_csv_field_past_the_line_limit_is_a_data_error(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(records, "MAX_LINE_CHARS", 100)
    field = "\n".join(["y" * 60] * 3)  # every line short, the quoted field too long
    (tmp_path / "site.csv").write_text(f'text,label\nok,a\n"{field}",a\n')
    with pytest.raises(DataError, match=r"site.csv:\d: malformed CSV: field larger"):
        load_examples(tmp_path / "site.csv", "classification", labels=("a",))
    import csv

    assert csv.field_size_limit() == 131_072  # restored


class _SpyTokenizer:
    """The tiny tokenizer, recording the length of every text it is given."""

    def __init__(self) -> None:
        self.inner = byte_level_tokenizer()
        self.lengths: list[int] = []

    def __call__(self, text, **kwargs):
        self.lengths.append(len(text))
        return self.inner(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


HUGE = 50 * 1024 * 1024  # the 50 MB line of issue 14


def test_huge_texts_are_cut_before_they_are_tokenised():
    tokenizer = _SpyTokenizer()
    huge = "z" * HUGE
    examples = [
        ClassificationExample(huge, 0),
        SftExample("Q: ", huge),
        SftExample(huge, "a"),
    ]
    dataset = tokenize(examples, tokenizer, max_length=128)
    assert max(tokenizer.lengths) <= data.text_budget(128)
    assert [len(item["input_ids"]) for item in dataset] == [128, 128]  # the long prompt: dropped


def test_a_cut_text_gives_the_tokens_of_the_whole_text():
    tokenizer = byte_level_tokenizer()
    text = "the patient reports chest pain and shortness of breath. " * 2000
    [cut] = tokenize([ClassificationExample(text, 0)], tokenizer, max_length=64)
    whole = ([tokenizer.bos_token_id] + tokenizer(text)["input_ids"])[:64]
    assert cut["input_ids"] == whole


def test_a_cut_response_gets_no_end_of_sequence():
    tokenizer = byte_level_tokenizer()
    [item] = tokenize([SftExample("Q: ", "\u2028" * 100_000)], tokenizer, max_length=16)
    assert tokenizer.eos_token_id not in item["input_ids"]


_MEMORY_PROBE = """
import resource, sys
from fedlora.data import ClassificationExample, SftExample, tokenize
from fedlora.tokenizer import tiny_tokenizer

tokenizer = tiny_tokenizer()
tokenize([SftExample("warm-up", "up")], tokenizer, max_length=128)
text = "lorem ipsum dolor sit amet " * (2_000_000 // 27)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tokenize(
    [ClassificationExample(text, 0), SftExample("Q: " + text, text), SftExample("Q: ", text)],
    tokenizer,
    max_length=128,
)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_tokenising_a_huge_record_keeps_memory_bounded():
    # Tokenising 2 MB of text whole grows the peak RSS by ~430 MB; cut first, by ~nothing.
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, check=True
    )
    grown_mb = int(result.stdout.strip().splitlines()[-1])
    assert grown_mb < 100, f"peak RSS grew by {grown_mb} MB"
