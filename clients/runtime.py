"""Per-process state of a site: the loaded base model and tokenised data, kept warm.

Loading a base model and tokenising a dataset are the expensive parts of a round. A ClientApp
process (a simulation actor, or a SuperNode's app process) keeps both in memory between
messages; every message overwrites all adapter weights with the global adapter, so reusing
the PEFT model across rounds or across virtual sites cannot leak one site's update into
another's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel

from fedlora.config import RunConfig
from fedlora.data import TokenizedDataset, load_examples, shortest_prompt, tokenize
from fedlora.errors import DataError
from fedlora.models import BaseModel, apply_lora, load_run_base
from fedlora.sites import SiteSpec, split_held_out

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A base model with its LoRA wrapper."""

    base: BaseModel
    peft: PeftModel


_models: dict[tuple[object, ...], LoadedModel] = {}
_datasets: dict[tuple[object, ...], tuple[TokenizedDataset, TokenizedDataset]] = {}


def _model_key(config: RunConfig) -> tuple[object, ...]:
    return (
        config.model,
        config.gguf_file,
        config.task,
        config.labels,
        config.max_length,
        config.lora_r,
        config.lora_alpha,
        config.lora_dropout,
        config.lora_targets,
    )


def get_model(config: RunConfig) -> LoadedModel:
    """The base model + LoRA wrapper for ``config``, loaded once per process."""
    key = _model_key(config)
    if key not in _models:
        _models.clear()
        base = load_run_base(config)
        _models[key] = LoadedModel(base, apply_lora(base, config))
        logger.info("loaded base model %s (%s)", config.model, base.fingerprint)
    return _models[key]


def get_datasets(
    site: SiteSpec, config: RunConfig, loaded: LoadedModel
) -> tuple[TokenizedDataset, TokenizedDataset]:
    """The site's tokenised (train, test) splits, read and validated once per process."""
    key = (
        site,
        _mtime(site.train_file),
        _mtime(site.test_file),
        config.task,
        config.labels,
        config.max_length,
        config.test_fraction,
        config.seed,
        loaded.base.fingerprint,
    )
    if key not in _datasets:
        train_examples = load_examples(site.train_file, config.task, config.labels)
        if site.test_file is None:
            train_examples, test_examples = split_held_out(
                train_examples,
                test_fraction=config.test_fraction,
                seed=config.seed,
                where=str(site.train_file),
            )
        else:
            test_examples = load_examples(site.test_file, config.task, config.labels)
        tokenizer = loaded.base.tokenizer
        train_set, test_set = (
            tokenize(
                examples,
                tokenizer,
                max_length=config.max_length,
                where=f"site {site.name}, {split} records",
            )
            for split, examples in (("training", train_examples), ("held-out", test_examples))
        )
        for split, examples, dataset in (
            ("training", train_examples, train_set),
            ("held-out", test_examples, test_set),
        ):
            if len(dataset) == 0:
                raise DataError(
                    f"site {site.name}: none of its {len(examples)} {split} records fits "
                    f"max-length {config.max_length}: every prompt fills it before a response "
                    f"token (the shortest prompt takes {shortest_prompt(examples, tokenizer)} "
                    "tokens); raise --max-length"
                )
        _datasets[key] = (train_set, test_set)
    return _datasets[key]


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return path.stat().st_mtime
    except OSError:
        return None
