"""Site datasets: JSONL / CSV files, validation, tokenisation and batching.

Two tasks share one reader:

* ``sft`` (instruction tuning): ``prompt`` / ``response`` records, or Alpaca-style
  ``instruction`` / ``input`` / ``output``. The loss covers response tokens only.
* ``classification``: ``text`` / ``label`` records; labels must belong to the run's label set.

Every error names the file and, for a bad record, its line (JSONL) or row (CSV, counting the
header as line 1).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from transformers import PreTrainedTokenizerBase

from fedlora.config import MAX_LENGTH_LIMIT, Task
from fedlora.errors import DataError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_INPUT_TEMPLATE = "{instruction}\n\n### Input:\n{input}"
SUPPORTED_SUFFIXES = (".jsonl", ".csv")

CHARS_PER_TOKEN_BOUND = 64
"""Generous bound on the characters one token covers. A text is cut to ``max-length ×``
this many characters before it is tokenised: whatever the text, tokenising costs memory in
proportion to max-length, and the first max-length tokens are those of the whole text for
any tokenizer whose tokens span at most this many characters."""

MAX_TEXT_CHARS = MAX_LENGTH_LIMIT * CHARS_PER_TOKEN_BOUND
"""The most characters of a text the largest max-length (``fedlora.config``) can keep."""

MAX_LINE_CHARS = 16 * 1024 * 1024
"""Longest line a data file may hold (characters; a CSV field no longer)."""

MAX_FILE_BYTES = 4 * 1024**3
"""Largest data file: a site's records are held in memory."""


@dataclass(frozen=True)
class Record:
    """One raw record with where it came from, for error messages."""

    fields: dict[str, str]
    source: str
    line: int

    @property
    def where(self) -> str:
        """``file:line`` of this record."""
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class SftExample:
    """An instruction-tuning pair; ``prompt`` is already formatted with the template."""

    prompt: str
    response: str


@dataclass(frozen=True)
class ClassificationExample:
    """A text and its label id in the run's label set."""

    text: str
    label: int


Example = SftExample | ClassificationExample


def read_records(path: Path) -> list[Record]:
    """Read a JSONL or CSV file into records.

    The file is read line by line and never more than :data:`MAX_LINE_CHARS` of a line at
    once, so an absurd file costs no more memory than its records.

    Raises
    ------
    DataError
        For a missing or unreadable file, an unsupported suffix, a file over
        :data:`MAX_FILE_BYTES`, or a malformed or over-long line (naming its line).
    """
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"{path}: unsupported data file type {path.suffix!r} "
            f"(use {', '.join(SUPPORTED_SUFFIXES)})"
        )
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DataError(
                f"{path}: data file is {size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit "
                "(a site's records are held in memory; split or sample the file)"
            )
        # newline="" for csv (quoted fields may hold line breaks); universal newlines for JSONL.
        newline = "" if path.suffix.lower() == ".csv" else None
        with path.open(encoding="utf-8", newline=newline) as handle:
            lines = _bounded_lines(handle, str(path))
            if path.suffix.lower() == ".jsonl":
                return list(_parse_jsonl(lines, str(path)))
            return list(_parse_csv(lines, str(path)))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read data file: {exc}") from exc


def _bounded_lines(handle: TextIO, source: str) -> Iterator[str]:
    """The lines of ``handle``; a line over :data:`MAX_LINE_CHARS` is an error, read no further."""
    for line_number in itertools.count(1):
        line = handle.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        if len(line) > MAX_LINE_CHARS:
            raise DataError(
                f"{source}:{line_number}: line longer than {MAX_LINE_CHARS:,} characters "
                f"(a record must be shorter; max-length keeps at most "
                f"{MAX_TEXT_CHARS:,} characters of a text)"
            )
        yield line


def _parse_jsonl(lines: Iterable[str], source: str) -> Iterable[Record]:
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            if not isinstance(value, dict):
                raise DataError(
                    f"{source}:{line_number}: expected a JSON object, got {type(value).__name__}"
                )
            fields = {str(k): _as_text(v) for k, v in value.items()}
        except RecursionError:
            raise DataError(f"{source}:{line_number}: malformed JSON: nested too deeply") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{line_number}: malformed JSON: {exc.msg}") from None
        except DataError:
            raise
        except ValueError as exc:  # e.g. an integer past Python's digit limit
            raise DataError(f"{source}:{line_number}: malformed JSON: {exc}") from None
        yield Record(fields, source, line_number)


def _parse_csv(lines: Iterable[str], source: str) -> Iterable[Record]:
    reader = csv.DictReader(lines)
    limit = csv.field_size_limit(MAX_LINE_CHARS)
    try:
        if not reader.fieldnames:
            return
        for record in reader:
            if None in record:
                raise DataError(f"{source}:{reader.line_num}: more values than header columns")
            yield Record({k: v or "" for k, v in record.items()}, source, reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{source}:{reader.line_num}: malformed CSV: {exc}") from None
    finally:
        csv.field_size_limit(limit)


def _as_text(value: object) -> str:
    if value is None:
        return ""
    return (
        value
        if isinstance(value, str)
        else json.dumps(value)
        if not isinstance(value, int | float)
        else str(value)
    )


def _required(record: Record, name: str) -> str:
    value = record.fields.get(name)
    if value is None:
        raise DataError(f"{record.where}: missing field {name!r}")
    if not value.strip():
        raise DataError(f"{record.where}: field {name!r} is empty")
    return value


def parse_sft(records: Sequence[Record]) -> list[SftExample]:
    """Turn records into instruction-tuning examples.

    A record has ``prompt`` and ``response``, or Alpaca ``instruction``, optional ``input``,
    and ``output``.

    Raises
    ------
    DataError
        Naming the file and line of the first record missing a field.
    """
    examples = []
    for record in records:
        if "instruction" in record.fields and "prompt" not in record.fields:
            instruction = _required(record, "instruction")
            extra = record.fields.get("input", "").strip()
            if extra:
                instruction = ALPACA_INPUT_TEMPLATE.format(instruction=instruction, input=extra)
            response = _required(record, "output")
        else:
            instruction = _required(record, "prompt")
            response = _required(record, "response")
        examples.append(SftExample(PROMPT_TEMPLATE.format(instruction=instruction), response))
    return examples


def parse_classification(
    records: Sequence[Record], labels: Sequence[str]
) -> list[ClassificationExample]:
    """Turn records into classification examples with label ids from ``labels``.

    Raises
    ------
    DataError
        For a missing ``text`` / ``label`` field or a label outside the label set.
    """
    label_ids = {label: index for index, label in enumerate(labels)}
    examples = []
    for record in records:
        text = _required(record, "text")
        label = _required(record, "label").strip()
        if label not in label_ids:
            raise DataError(
                f"{record.where}: label {label!r} is not in the label set ({', '.join(labels)})"
            )
        examples.append(ClassificationExample(text, label_ids[label]))
    return examples


def collect_labels(paths: Sequence[Path]) -> tuple[str, ...]:
    """The sorted set of labels found in classification files.

    Raises
    ------
    DataError
        For an unreadable file or a record without a label.
    """
    labels = {_required(record, "label").strip() for path in paths for record in read_records(path)}
    return tuple(sorted(labels))


def load_examples(path: Path, task: Task, labels: Sequence[str] = ()) -> list[Example]:
    """Read and validate one site data file for ``task``.

    Raises
    ------
    DataError
        For any problem with the file, including an empty dataset.
    """
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: site dataset is empty")
    if task == "sft":
        return list(parse_sft(records))
    return list(parse_classification(records, labels))


def write_jsonl(path: Path, rows: Iterable[dict[str, str]]) -> None:
    """Write rows as JSON lines (UTF-8), for generated scenario data."""
    from fedlora.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


class TokenizedDataset(torch.utils.data.Dataset[dict[str, list[int]]]):
    """Examples tokenised once, ready for :func:`collate`."""

    def __init__(self, items: list[dict[str, list[int]]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


def tokenize(
    examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, *, max_length: int
) -> TokenizedDataset:
    """Tokenise examples for training or evaluation.

    Sequences start with the tokenizer's ``bos`` token when it does not add one itself.
    SFT examples are ``[bos] prompt response [eos]`` with labels masked to
    :data:`IGNORE_INDEX` on the prompt; an example whose response is cut off entirely by
    ``max_length`` is dropped with a warning (it would carry no loss).

    Texts are cut to :func:`text_budget` characters *before* tokenising, so memory stays
    bounded by ``max_length`` whatever a record holds; a prompt longer than the budget counts
    as filling ``max_length`` (dropped), and a response cut short gets no ``eos``.
    """
    items: list[dict[str, list[int]]] = []
    dropped = 0
    budget = text_budget(max_length)
    for example in examples:
        if isinstance(example, ClassificationExample):
            text = example.text[:budget]
            ids = _with_bos(tokenizer(text)["input_ids"], tokenizer)[:max_length]
            items.append({"input_ids": ids, "labels": [example.label]})
            continue
        if len(example.prompt) > budget:
            # Past the budget the prompt alone fills max-length: no response token would fit.
            dropped += 1
            continue
        prompt_ids = _prompt_ids(example, tokenizer)
        room = max(max_length - len(prompt_ids), 1)
        response = example.response[: text_budget(room)]
        response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
        # A cut response does not end where the record does: no end-of-sequence after it.
        if tokenizer.eos_token_id is not None and len(response) == len(example.response):
            response_ids.append(tokenizer.eos_token_id)
        ids = (prompt_ids + response_ids)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
        if all(label == IGNORE_INDEX for label in labels[1:]):
            dropped += 1
            continue
        items.append({"input_ids": ids, "labels": labels})
    if dropped:
        logger.warning(
            "%d example(s) dropped: prompt longer than max-length %d", dropped, max_length
        )
    return TokenizedDataset(items)


def shortest_prompt(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens of the shortest SFT prompt in ``examples`` (0 when there is none).

    :func:`tokenize` keeps an SFT example only when ``max-length`` exceeds its prompt's
    tokens, so this says which ``max-length`` keeps at least one.
    """
    lengths = [
        len(_prompt_ids(SftExample(example.prompt[:MAX_TEXT_CHARS], ""), tokenizer))
        for example in examples
        if isinstance(example, SftExample)
    ]
    return min(lengths, default=0)


def _prompt_ids(example: SftExample, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return _with_bos(tokenizer(example.prompt)["input_ids"], tokenizer)


def text_budget(max_tokens: int) -> int:
    """Characters of a text worth tokenising for ``max_tokens`` tokens.

    ``max_tokens ×`` :data:`CHARS_PER_TOKEN_BOUND`: the text beyond it cannot reach the
    first ``max_tokens`` tokens.
    """
    return max_tokens * CHARS_PER_TOKEN_BOUND


def _with_bos(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    # Tokenizers that add no special tokens (the tiny presets') get <s> in front, so encoder
    # classifiers pool a fixed first token, as they would [CLS].
    bos = tokenizer.bos_token_id
    if bos is None or (ids and ids[0] in (bos, tokenizer.cls_token_id)):
        return list(ids)
    return [bos, *ids]


def collate(
    batch: Sequence[dict[str, list[int]]], *, pad_id: int, task: Task
) -> dict[str, torch.Tensor]:
    """Right-pad a batch; SFT labels are padded with :data:`IGNORE_INDEX`.

    Returns
    -------
    dict
        ``input_ids`` and ``attention_mask`` of shape (B, T); ``labels`` of shape (B, T) for
        SFT or (B,) for classification.
    """
    width = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    token_labels = task == "sft"
    labels = (
        torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        if token_labels
        else torch.zeros(len(batch), dtype=torch.long)
    )
    for row, item in enumerate(batch):
        length = len(item["input_ids"])
        input_ids[row, :length] = torch.tensor(item["input_ids"])
        attention_mask[row, :length] = 1
        if token_labels:
            labels[row, :length] = torch.tensor(item["labels"])
        else:
            labels[row] = item["labels"][0]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
