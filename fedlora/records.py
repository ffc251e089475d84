"""Site data files: JSONL / CSV records, their validation, and the examples they hold.

Two tasks share one reader:

* ``sft`` (instruction tuning): ``prompt`` / ``response`` records, or Alpaca-style
  ``instruction`` / ``input`` / ``output``.
* ``classification``: ``text`` / ``label`` records; labels must belong to the run's label set.

Every error names the file and, for a bad record, its line (JSONL) or row (CSV, counting the
header as line 1). This module imports nothing heavy (no torch, no transformers), so a bad
file is refused before a run loads them; tokenisation and batching are in :mod:`fedlora.data`.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from fedlora.config import MAX_LENGTH_LIMIT, Task
from fedlora.errors import DataError

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
    """One raw record with where it came from, for error messages.

    ``fields`` holds every value as text; ``kinds`` names the JSON type (``number``,
    ``boolean``, ``array``, ``object``) of each value that was not a JSON string, so a text
    field given as ``42`` is refused rather than trained on as ``"42"``.
    """

    fields: dict[str, str]
    source: str
    line: int
    kinds: dict[str, str] = field(default_factory=dict)

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
            kinds = {str(k): kind for k, v in value.items() if (kind := _json_kind(v))}
        except RecursionError:
            raise DataError(f"{source}:{line_number}: malformed JSON: nested too deeply") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{line_number}: malformed JSON: {exc.msg}") from None
        except DataError:
            raise
        except ValueError as exc:  # e.g. an integer past Python's digit limit
            raise DataError(f"{source}:{line_number}: malformed JSON: {exc}") from None
        yield Record(fields, source, line_number, kinds)


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
        if isinstance(value, bool) or not isinstance(value, int | float)
        else str(value)
    )


def _json_kind(value: object) -> str | None:
    """The JSON type of a value that is not a string (``None`` for a string or null)."""
    if value is None or isinstance(value, str):
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "array" if isinstance(value, list) else "object"


_TASK_FIELDS: dict[Task, tuple[tuple[str, str], ...]] = {
    "sft": (("prompt", "response"), ("instruction", "output")),
    "classification": (("text", "label"),),
}
"""The field pairs that mark a record as data of each task."""


def _required(record: Record, name: str, *, task: Task, integer: bool = False) -> str:
    """The text of field ``name``: present, not blank, a JSON string (or a whole number).

    ``integer`` also accepts a whole JSON number (a label such as ``1``). A missing field
    of a record that holds the other task's fields says which ``--task`` fits the file.
    """
    value = record.fields.get(name)
    if value is None:
        raise DataError(f"{record.where}: missing field {name!r}{_task_hint(record, task)}")
    kind = record.kinds.get(name)
    if kind is not None and not (integer and kind == "number" and value.lstrip("-").isdigit()):
        wanted = "a JSON string or a whole number" if integer else "text (a JSON string)"
        raise DataError(
            f"{record.where}: field {name!r} must be {wanted}, got the {kind} {_shown(value)}"
        )
    if not value.strip():
        raise DataError(f"{record.where}: field {name!r} is empty")
    return value


def _task_hint(record: Record, task: Task) -> str:
    for other, pairs in _TASK_FIELDS.items():
        if other == task:
            continue
        for pair in pairs:
            if all(name in record.fields for name in pair):
                return (
                    f" (the record has {pair[0]!r} and {pair[1]!r}, the fields of "
                    f"--task {other} data: run with --task {other})"
                )
    return ""


def _shown(value: str, limit: int = 40) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _optional(record: Record, name: str) -> str:
    """An optional text field: absent or null is empty; another non-string is refused."""
    if name not in record.fields:
        return ""
    kind = record.kinds.get(name)
    if kind is not None:
        raise DataError(
            f"{record.where}: field {name!r} must be text (a JSON string), got the {kind} "
            f"{_shown(record.fields[name])}"
        )
    return record.fields[name]


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
            instruction = _required(record, "instruction", task="sft")
            extra = _optional(record, "input").strip()
            if extra:
                instruction = ALPACA_INPUT_TEMPLATE.format(instruction=instruction, input=extra)
            response = _required(record, "output", task="sft")
        else:
            instruction = _required(record, "prompt", task="sft")
            response = _required(record, "response", task="sft")
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
        text = _required(record, "text", task="classification")
        label = _required(record, "label", task="classification", integer=True).strip()
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
    labels = {
        _required(record, "label", task="classification", integer=True).strip()
        for path in paths
        for record in read_records(path)
    }
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
