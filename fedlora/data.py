"""Site datasets for training: tokenisation and batching of a site's examples.

The records and examples themselves (reading, validation) are :mod:`fedlora.records`. SFT
examples are ``[bos] prompt response [eos]``, the loss covering response tokens only;
classification examples are a text and its label id.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from fedlora.config import Task
from fedlora.records import (
    ALPACA_INPUT_TEMPLATE,
    CHARS_PER_TOKEN_BOUND,
    MAX_TEXT_CHARS,
    PROMPT_TEMPLATE,
    ClassificationExample,
    Example,
    Record,
    SftExample,
    collect_labels,
    load_examples,
    read_records,
    write_jsonl,
)

# The records' names stay importable from here, where they lived before fedlora.records.
__all__ = [
    "ALPACA_INPUT_TEMPLATE",
    "CHARS_PER_TOKEN_BOUND",
    "IGNORE_INDEX",
    "MAX_TEXT_CHARS",
    "PROMPT_TEMPLATE",
    "ClassificationExample",
    "Example",
    "Record",
    "SftExample",
    "TokenizedDataset",
    "collate",
    "collect_labels",
    "load_examples",
    "read_records",
    "shortest_prompt",
    "text_budget",
    "tokenize",
    "write_jsonl",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class TokenizedDataset(torch.utils.data.Dataset[dict[str, list[int]]]):
    """Examples tokenised once, ready for :func:`collate`."""

    def __init__(self, items: list[dict[str, list[int]]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


def tokenize(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    where: str = "",
) -> TokenizedDataset:
    """Tokenise examples for training or evaluation.

    Sequences start with the tokenizer's ``bos`` token when it does not add one itself.
    SFT examples are ``[bos] prompt response [eos]`` with labels masked to
    :data:`IGNORE_INDEX` on the prompt; an example whose response is cut off entirely by
    ``max_length`` is dropped with a warning (it would carry no loss).

    Texts are cut to :func:`text_budget` characters *before* tokenising, so memory stays
    bounded by ``max_length`` whatever a record holds; a prompt longer than the budget counts
    as filling ``max_length`` (dropped), and a response cut short gets no ``eos``.

    ``where`` names the records in the warning (e.g. ``site a, training records``).
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
            "%s%d of %d example(s) (%.0f%%) left out: the prompt fills max-length %d before "
            "any response token; raise --max-length to keep them",
            f"{where}: " if where else "",
            dropped,
            len(examples),
            100 * dropped / len(examples),
            max_length,
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
