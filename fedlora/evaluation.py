"""The task's real metric for every adapter of a run, and answers from an adapter.

:class:`RunEvaluator` loads a run's base model once (checking its fingerprint against
``config.json``), wraps it with LoRA exactly as the run did, and swaps in each adapter in
turn: the initial one (the fresh LoRA of :func:`fedlora.models.apply_lora`, which the run
never writes to disk), every ``adapters/round-NNN`` and ``adapters/final``.

* classification: ``loss`` (mean cross-entropy), ``accuracy`` and ``macro-f1`` over the run's
  label set;
* sft (instruction tuning): ``loss`` (mean cross-entropy over response tokens, as the sites
  report it) and ``exact-match`` of the greedily generated answer against the reference
  after :func:`fedlora.metrics.normalise_answer`.

Prompts go through the training template :data:`fedlora.data.PROMPT_TEMPLATE` and the same
tokenisation (:func:`fedlora.data.tokenize`) as training.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file

from fedlora.adapters import AdapterState, adapter_state, load_adapter_state
from fedlora.config import RunConfig
from fedlora.data import (
    IGNORE_INDEX,
    PROMPT_TEMPLATE,
    Example,
    SftExample,
    collate,
    tokenize,
)
from fedlora.errors import AdapterError, DataError, RunDirError
from fedlora.losses import summed_loss
from fedlora.metrics import accuracy, exact_match, macro_f1
from fedlora.models import apply_lora, check_fingerprint, load_base_model
from fedlora.rundir import ADAPTERS_DIR, FINAL_ADAPTER, RunDirectoryReader

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter_model.safetensors"
INITIAL = "initial"
MAX_NEW_TOKENS_LIMIT = 512
"""Most tokens a generated answer may have."""

_ROUND_DIR = re.compile(r"^round-(\d{3,})$")


@dataclass(frozen=True)
class Checkpoint:
    """One adapter of a run: ``initial``, ``round-NNN`` or ``final``; ``path`` None for initial."""

    name: str
    path: Path | None


def run_checkpoints(reader: RunDirectoryReader) -> list[Checkpoint]:
    """The initial adapter, every round's adapter in round order, then the final one."""
    found = [Checkpoint(INITIAL, None)]
    adapters = reader.path / ADAPTERS_DIR
    rounds = []
    if adapters.is_dir():
        for child in adapters.iterdir():
            match = _ROUND_DIR.match(child.name)
            if match and (child / ADAPTER_FILE).is_file():
                rounds.append((int(match.group(1)), child))
    found += [Checkpoint(path.name, path) for _, path in sorted(rounds)]
    final = reader.adapter_path(None)
    if (final / ADAPTER_FILE).is_file():
        found.append(Checkpoint(FINAL_ADAPTER, final))
    return found


def run_config(reader: RunDirectoryReader) -> tuple[RunConfig, dict[str, Any]]:
    """The run's :class:`RunConfig` and the whole ``config.json`` payload.

    Raises
    ------
    RunDirError
        When the directory is no run directory or its configuration does not parse.
    """
    payload = reader.read_config()
    try:
        return RunConfig.from_flat(payload["config"]), payload
    except ValueError as exc:
        raise RunDirError(f"run configuration {reader.config_path} is not usable: {exc}") from exc


def _bounded_new_tokens(max_new_tokens: int) -> int:
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise DataError(
            f"max-new-tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}, got {max_new_tokens}"
        )
    return max_new_tokens


class RunEvaluator:
    """A run's base model with LoRA applied, ready to take each of the run's adapters.

    Parameters
    ----------
    run_dir
        A run directory (a simulated run, or a deployed one fetched with ``deploy fetch``).

    Raises
    ------
    RunDirError
        For a missing or unreadable run directory.
    ModelError, BaseMismatchError
        When the base model cannot be loaded, or its weights differ from the run's.
    """

    def __init__(self, run_dir: Path) -> None:
        self.reader = RunDirectoryReader(run_dir)
        self.config, payload = run_config(self.reader)
        config = self.config
        self.base = load_base_model(
            config.model, task=config.task, labels=config.labels, max_length=config.max_length
        )
        expected = payload.get("base-fingerprint")
        if isinstance(expected, str):
            check_fingerprint(expected=expected, local=self.base.fingerprint)
        self.peft: PeftModel = apply_lora(self.base, config)
        self.peft.eval()
        self.initial: AdapterState = adapter_state(self.peft)
        tokenizer = self.base.tokenizer
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    def checkpoints(self) -> list[Checkpoint]:
        """The run's adapters in order (:func:`run_checkpoints`)."""
        return run_checkpoints(self.reader)

    def use(self, checkpoint: Checkpoint) -> None:
        """Load ``checkpoint``'s adapter into the model.

        Raises
        ------
        AdapterError
            When the adapter file is unreadable or does not fit the run's model.
        """
        if checkpoint.path is None:
            state = self.initial
        else:
            file = checkpoint.path / ADAPTER_FILE
            try:
                state = load_file(str(file))
            except Exception as exc:
                raise AdapterError(f"cannot read adapter {file}: {exc}") from exc
        load_adapter_state(self.peft, state)
        self.peft.eval()

    @torch.no_grad()
    def evaluate(
        self, examples: Sequence[Example], *, max_new_tokens: int = 32, batch_size: int = 16
    ) -> dict[str, float]:
        """The task metrics of the loaded adapter on ``examples``.

        Returns
        -------
        dict
            ``num-examples`` and ``loss``; ``accuracy`` and ``macro-f1`` for classification,
            ``exact-match`` for sft.

        Raises
        ------
        DataError
            When no example is left after tokenisation.
        """
        if self.config.task == "classification":
            return self._classify(examples, batch_size)
        return self._sft(examples, _bounded_new_tokens(max_new_tokens), batch_size)

    def _batches(
        self, examples: Sequence[Example], batch_size: int
    ) -> list[list[dict[str, list[int]]]]:
        items = tokenize(examples, self.base.tokenizer, max_length=self.config.max_length).items
        if not items:
            raise DataError("no held-out example left to evaluate after tokenisation")
        return [items[start : start + batch_size] for start in range(0, len(items), batch_size)]

    def _classify(self, examples: Sequence[Example], batch_size: int) -> dict[str, float]:
        loss_sum = 0.0
        predictions: list[int] = []
        references: list[int] = []
        for chunk in self._batches(examples, batch_size):
            batch = collate(chunk, pad_id=self.pad_id, task="classification")
            labels = batch.pop("labels")
            logits = self.peft(**batch).logits.float()
            loss_sum += summed_loss(logits, labels, task="classification")[0]
            predictions += logits.argmax(dim=-1).tolist()
            references += labels.tolist()
        return {
            "num-examples": float(len(references)),
            "loss": loss_sum / len(references),
            "accuracy": accuracy(predictions, references),
            "macro-f1": macro_f1(predictions, references, labels=range(len(self.config.labels))),
        }

    def _sft(
        self, examples: Sequence[Example], max_new_tokens: int, batch_size: int
    ) -> dict[str, float]:
        answers: list[str] = []
        references: list[str] = []
        kept = [example for example in examples if isinstance(example, SftExample)]
        chunks = self._batches(kept, batch_size)  # tokenised once, for the loss and the answers
        loss = self._sft_loss(chunks)
        for chunk in chunks:
            prompts = [_prompt_ids(item) for item in chunk]
            answers += self._generate(prompts, max_new_tokens)
            references += [self._reference(item) for item in chunk]
        return {
            "num-examples": float(len(references)),
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "exact-match": exact_match(answers, references),
        }

    def _reference(self, item: dict[str, list[int]]) -> str:
        ids = [label for label in item["labels"] if label != IGNORE_INDEX]
        return str(self.base.tokenizer.decode(ids, skip_special_tokens=True)).strip()

    def generate(self, question: str, *, max_new_tokens: int = 64) -> str:
        """The loaded adapter's greedy answer to ``question``, in the training prompt template.

        Raises
        ------
        DataError
            For a classification run (it answers with a label: use ``evaluate``), an empty
            question, or a bad ``max_new_tokens``.
        """
        if self.config.task != "sft":
            raise DataError("generate needs an instruction-tuning (sft) run; this run classifies")
        if not question.strip():
            raise DataError("the question is empty")
        example = SftExample(PROMPT_TEMPLATE.format(instruction=question), " ")
        ids = tokenize([example], self.base.tokenizer, max_length=self.config.max_length + 1)
        if not ids.items:
            raise DataError(
                f"the question is longer than the run's max-length {self.config.max_length}"
            )
        prompt = _prompt_ids(ids.items[0])[: self.config.max_length]
        with torch.no_grad():
            return self._generate([prompt], _bounded_new_tokens(max_new_tokens))[0]

    @torch.no_grad()
    def loss(self, examples: Sequence[Example], *, batch_size: int = 16) -> float:
        """The loaded adapter's mean loss on ``examples``, as :meth:`evaluate` reports it.

        Raises
        ------
        DataError
            When no example is left after tokenisation.
        """
        if self.config.task == "classification":
            return self._classify(examples, batch_size)["loss"]
        return self._sft_loss(self._batches(examples, batch_size))

    def _sft_loss(self, chunks: list[list[dict[str, list[int]]]]) -> float:
        loss_sum, tokens = 0.0, 0
        for chunk in chunks:
            batch = collate(chunk, pad_id=self.pad_id, task="sft")
            labels = batch.pop("labels")
            logits = self.peft(**batch).logits.float()
            batch_sum, batch_tokens = summed_loss(logits, labels, task="sft")
            loss_sum, tokens = loss_sum + batch_sum, tokens + batch_tokens
        return loss_sum / tokens if tokens else math.nan

    @torch.no_grad()
    def answer(self, example: Example, *, max_new_tokens: int = 32) -> str:
        """The loaded adapter's answer to one held-out example.

        Returns
        -------
        str
            The greedy response (sft, the example's prompt as the sites saw it) or the
            predicted label's name (classification).

        Raises
        ------
        DataError
            When nothing of the example is left after tokenisation, or a bad
            ``max_new_tokens``.
        """
        items = tokenize([example], self.base.tokenizer, max_length=self.config.max_length).items
        if not items:
            raise DataError("the example is empty after tokenisation")
        if self.config.task == "classification":
            batch = collate(items, pad_id=self.pad_id, task="classification")
            batch.pop("labels")
            return self.config.labels[int(self.peft(**batch).logits.argmax(dim=-1)[0])]
        return self._generate([_prompt_ids(items[0])], _bounded_new_tokens(max_new_tokens))[0]

    def _generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        """Greedy continuations of left-padded prompts, decoded without special tokens."""
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention_mask[row, width - len(prompt) :] = 1
        tokenizer = self.base.tokenizer
        output = self.peft.generate(  # type: ignore[no-untyped-call]
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        return [
            str(tokenizer.decode(row[width:], skip_special_tokens=True)).strip() for row in output
        ]


def _prompt_ids(item: dict[str, list[int]]) -> list[int]:
    """The prompt tokens of a tokenised sft item: those whose labels are masked."""
    labels = item["labels"]
    length = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    return item["input_ids"][:length]
