"""A site's tokenised splits: a split that max-length empties is refused, never trained or scored.

Regression: ``fedlora simulate --sites 2 --examples-per-site 16 --max-length 32`` failed its
second round with "a site with no records cannot train" at one site and a NaN evaluation
rejected from the other. Every prompt of one site, and of the other's held-out split, filled
max-length 32 before a response token, so tokenising dropped them all: the empty training
split reached the accountant and the empty held-out split gave a 0/0 loss.
"""

from __future__ import annotations

import math

import pytest
import torch

from fedlora.clients.runtime import get_datasets, get_model
from fedlora.config import RunConfig
from fedlora.data import SftExample, shortest_prompt, tokenize
from fedlora.errors import DataError
from fedlora.simulations.materialize import resolve_config, simulated_sites


def _config(tmp_path, max_length: int) -> RunConfig:
    return resolve_config(
        RunConfig(sites=2, examples_per_site=16, max_length=max_length, out=str(tmp_path / "runs"))
    )


def test_the_reported_run_is_refused_naming_the_site_the_split_and_max_length(tmp_path) -> None:
    config = _config(tmp_path, 32)
    loaded = get_model(config)
    refusals = []
    for site in simulated_sites(config):
        with pytest.raises(DataError) as refused:
            get_datasets(site, config, loaded)
        refusals.append(str(refused.value))
    assert any("training records fits max-length 32" in text for text in refusals), refusals
    assert any("held-out records fits max-length 32" in text for text in refusals), refusals
    for site, text in zip(simulated_sites(config), refusals, strict=True):
        assert text.startswith(f"site {site.name}: none of its ")
        assert text.endswith("raise --max-length")


def test_the_shortest_prompt_named_is_the_max_length_that_keeps_one_example(tmp_path) -> None:
    tokenizer = get_model(_config(tmp_path, 32)).base.tokenizer
    examples = [
        SftExample("### Instruction:\nwhat is a gallstone, briefly?\n\n### Response:\n", "a stone"),
        SftExample("### Instruction:\n" + "a much longer prompt " * 4 + "\n\n### Response:\n", "x"),
    ]
    shortest = shortest_prompt(examples, tokenizer)
    assert len(tokenize(examples, tokenizer, max_length=shortest)) == 0
    assert len(tokenize(examples, tokenizer, max_length=shortest + 1)) == 1


def test_splits_that_fit_are_kept_and_score_a_finite_loss(tmp_path) -> None:
    from fedlora.clients.evaluation import evaluate_model

    config = _config(tmp_path, 128)
    loaded = get_model(config)
    for site in simulated_sites(config):
        train, test = get_datasets(site, config, loaded)
        assert len(train) > 0 and len(test) > 0
        metrics = evaluate_model(
            loaded.peft, test, task="sft", pad_id=0, device=torch.device("cpu")
        )
        assert math.isfinite(metrics["loss"])


def test_an_empty_held_out_split_is_never_scored_as_nan(tmp_path) -> None:
    from fedlora.clients.evaluation import evaluate_model
    from fedlora.data import TokenizedDataset

    loaded = get_model(_config(tmp_path, 32))
    with pytest.raises(DataError, match="a held-out split with no examples cannot be evaluated"):
        evaluate_model(
            loaded.peft, TokenizedDataset([]), task="sft", pad_id=0, device=torch.device("cpu")
        )
