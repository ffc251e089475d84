"""Plain (non-DP) local training: a round is reproducible from its seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedlora.clients.training import train_locally
from fedlora.config import RunConfig
from fedlora.data import ClassificationExample, tokenize
from fedlora.models import apply_lora, load_base_model

CPU = torch.device("cpu")


@dataclass
class _Round:
    trained: dict[str, torch.Tensor]
    generator_before: torch.Tensor
    generator_after: torch.Tensor


def _train_once(seed: int, global_draws: int) -> _Round:
    """Train tiny-bert (hidden dropout 0.1) after ``global_draws`` draws from torch's generator."""
    config = RunConfig(task="classification", lr=0.05, local_epochs=2, batch_size=4)
    torch.manual_seed(0)
    base = load_base_model("tiny-bert", task="classification", labels=("neg", "pos"))
    assert base.model.config.hidden_dropout_prob > 0  # otherwise this test checks nothing
    peft = apply_lora(base, config)
    examples = [
        ClassificationExample(f"{'great' if i % 2 else 'awful'} stay number {i}", i % 2)
        for i in range(12)
    ]
    dataset = tokenize(examples, base.tokenizer, max_length=32)
    torch.rand(global_draws)  # whatever ran before in this process
    before = torch.get_rng_state()
    train_locally(
        peft,
        dataset,
        config=config,
        pad_id=int(base.tokenizer.pad_token_id or 0),
        device=CPU,
        bf16=False,
        seed=seed,
    )
    trained = {n: p.detach().clone() for n, p in peft.named_parameters() if p.requires_grad}
    return _Round(trained, before, torch.get_rng_state())


def test_a_round_is_reproducible_whatever_the_process_drew_before() -> None:
    first = _train_once(seed=11, global_draws=1).trained
    second = _train_once(seed=11, global_draws=1000).trained
    other_seed = _train_once(seed=12, global_draws=1).trained

    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert any(not torch.equal(first[n], other_seed[n]) for n in first)


def test_training_leaves_the_callers_generator_where_it_was() -> None:
    result = _train_once(seed=11, global_draws=3)

    assert torch.equal(result.generator_before, result.generator_after)
