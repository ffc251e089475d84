"""DP-SGD on the adapter, checked on the path the product uses (``dp_train_locally``).

* At σ = 0 and a huge C, one DP step moves the adapter exactly as plain SGD on the same loss
  (Opacus + peft must not corrupt LoRA gradients), and the weights do move.
* At σ = 0 and a tiny C, the applied update is bounded by lr × C (× |B| / qN under Poisson
  sampling), in hooks and in ghost mode, while the unclipped gradient is far larger.
* Empty Poisson batches are noise-only steps, with the noise at the scale DP-SGD prescribes.
"""

from __future__ import annotations

import math

import pytest
import torch
from peft import PeftModel

from fedlora.clients.dp_training import (
    DpSettings,
    _poisson_batches,
    dp_train_locally,
    per_sample_loss,
)
from fedlora.config import RunConfig, Task
from fedlora.data import ClassificationExample, SftExample, TokenizedDataset, collate, tokenize
from fedlora.models import BaseModel, apply_lora, load_base_model

CPU = torch.device("cpu")
LABELS = ("neg", "pos")
RECORDS = 12

CASES = [
    ("tiny-llama", "sft"),
    ("tiny-llama", "classification"),
    ("tiny-gpt2", "sft"),
    ("tiny-gpt2", "classification"),
    ("tiny-bert", "classification"),
]


def _setup(
    model_name: str, task: Task, config: RunConfig
) -> tuple[BaseModel, PeftModel, TokenizedDataset]:
    labels = LABELS if task == "classification" else ()
    base = load_base_model(model_name, task=task, labels=labels, max_length=48)
    peft = apply_lora(base, config)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        for name, param in peft.named_parameters():
            # LoRA B starts at zero, which would make every A gradient zero; start elsewhere.
            if param.requires_grad and "lora_B" in name:
                param.normal_(0.0, 0.05)
    if task == "sft":
        examples: list = [
            SftExample(f"Question {i}: how many beds on ward {i}?", f"{i * 3} beds.")
            for i in range(RECORDS)
        ]
    else:
        examples = [
            ClassificationExample(f"{'great' if i % 2 else 'awful'} stay number {i}", i % 2)
            for i in range(RECORDS)
        ]
    return base, peft, tokenize(examples, base.tokenizer, max_length=48)


def _trainable(model: PeftModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _norm(tensors: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


def _plain_sgd_step(
    model: PeftModel, dataset: TokenizedDataset, task: Task, pad_id: int, lr: float
) -> None:
    model.train()
    batch = collate([dataset[i] for i in range(len(dataset))], pad_id=pad_id, task=task)
    labels = batch.pop("labels")
    loss = per_sample_loss(model(**batch).logits, labels, task).mean()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for param, grad in zip(params, grads, strict=True):
            param -= lr * grad
    model.eval()


def _dp_step(
    model: PeftModel,
    dataset: TokenizedDataset,
    config: RunConfig,
    settings: DpSettings,
    pad_id: int,
) -> None:
    dp_train_locally(
        model,
        dataset,
        config=config,
        settings=settings,
        pad_id=pad_id,
        device=CPU,
        bf16=False,
    )


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
@pytest.mark.parametrize(("model_name", "task"), CASES)
def test_dp_step_without_noise_or_clipping_equals_plain_sgd(model_name: str, task: Task, mode: str):
    config = RunConfig(task=task, optimizer="sgd", lr=0.5)
    base, peft, dataset = _setup(model_name, task, config)
    pad_id = int(base.tokenizer.pad_token_id or 0)
    start = _trainable(peft)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)  # same dropout masks on both paths
        _plain_sgd_step(peft, dataset, task, pad_id, config.lr)
    plain = _trainable(peft)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if name in start:
                param.copy_(start[name])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        settings = DpSettings(0.0, 1e9, sample_rate=1.0, steps=1, mode=mode)  # type: ignore[arg-type]
        _dp_step(peft, dataset, config, settings, pad_id)
    private = _trainable(peft)

    moved = {name: plain[name] - start[name] for name in start}
    assert _norm(moved) > 1e-4, "plain SGD did not move the adapter"
    assert any(float(moved[name].abs().max()) > 0 for name in moved if "lora_A" in name)
    for name in start:
        torch.testing.assert_close(private[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
    # the model is handed back clean: no Opacus hooks or per-sample gradients left behind
    assert not any(getattr(p, "grad_sample", None) is not None for p in peft.parameters())
    assert all(not module._forward_hooks for module in peft.modules())


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
@pytest.mark.parametrize(
    ("model_name", "task"), [("tiny-llama", "sft"), ("tiny-bert", "classification")]
)
def test_full_batch_update_is_clipped_to_lr_times_c(model_name: str, task: Task, mode: str):
    lr, clip = 1.0, 1e-3
    config = RunConfig(task=task, optimizer="sgd", lr=lr)
    base, peft, dataset = _setup(model_name, task, config)
    pad_id = int(base.tokenizer.pad_token_id or 0)
    start = _trainable(peft)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        _plain_sgd_step(peft, dataset, task, pad_id, lr)
    unclipped = _norm({n: p - start[n] for n, p in _trainable(peft).items()})
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if name in start:
                param.copy_(start[name])

    settings = DpSettings(0.0, clip, sample_rate=1.0, steps=1, mode=mode)  # type: ignore[arg-type]
    _dp_step(peft, dataset, config, settings, pad_id)
    applied = _norm({n: p - start[n] for n, p in _trainable(peft).items()})

    assert unclipped > 100 * lr * clip, "the test needs per-sample gradients far above C"
    assert 0 < applied <= lr * clip * (1 + 1e-5)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_poisson_step_update_is_bounded_by_its_batch_size(mode: str):
    lr, clip, rate = 1.0, 1e-3, 0.5
    config = RunConfig(task="sft", optimizer="sgd", lr=lr)
    base, peft, dataset = _setup("tiny-llama", "sft", config)
    pad_id = int(base.tokenizer.pad_token_id or 0)
    for seed in range(4):
        start = _trainable(peft)
        settings = DpSettings(0.0, clip, sample_rate=rate, steps=1, mode=mode, seed=seed)  # type: ignore[arg-type]
        dp_train_locally(
            peft,
            dataset,
            config=config,
            settings=settings,
            pad_id=pad_id,
            device=CPU,
            bf16=False,
        )
        applied = _norm({n: p - start[n] for n, p in _trainable(peft).items()})
        # replay the step's Poisson draw (sampling is seeded with seed + 1)
        (batch,) = list(
            _poisson_batches(len(dataset), settings, torch.Generator().manual_seed(seed + 1))
        )
        bound = lr * clip * len(batch) / (rate * len(dataset))
        assert applied <= bound * (1 + 1e-5)
        assert (applied > 0) == (len(batch) > 0)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_empty_poisson_batches_are_noise_only_steps(mode: str):
    sigma, clip, rate = 2.0, 0.5, 1e-6
    config = RunConfig(task="sft", optimizer="sgd", lr=1.0)
    base, peft, dataset = _setup("tiny-llama", "sft", config)
    pad_id = int(base.tokenizer.pad_token_id or 0)
    start = _trainable(peft)

    result = dp_train_locally(
        peft,
        dataset,
        config=config,
        settings=DpSettings(sigma, clip, sample_rate=rate, steps=1, mode=mode),  # type: ignore[arg-type]
        pad_id=pad_id,
        device=CPU,
        bf16=False,
    )

    assert result.steps == 1 and math.isnan(result.loss)  # no record was sampled
    deltas = torch.cat([(p - start[n]).flatten() for n, p in _trainable(peft).items()])
    expected_std = (
        sigma * clip / (rate * len(dataset))
    )  # noise σC, averaged by the expected batch qN
    # thousands of coordinates: the sample std is within a few percent of the truth
    assert deltas.numel() > 2000
    assert float(deltas.std()) == pytest.approx(expected_std, rel=0.1)
    assert float(deltas.mean()) == pytest.approx(0.0, abs=0.1 * expected_std)


def test_settings_refuse_impossible_values():
    from fedlora.errors import ConfigError

    for kwargs in (
        {"noise_multiplier": -0.1, "max_grad_norm": 1.0, "sample_rate": 0.5, "steps": 1},
        {"noise_multiplier": 1.0, "max_grad_norm": 0.0, "sample_rate": 0.5, "steps": 1},
        {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "sample_rate": 0.0, "steps": 1},
        {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "sample_rate": 0.5, "steps": 0},
    ):
        with pytest.raises(ConfigError):
            DpSettings(**kwargs)  # type: ignore[arg-type]
