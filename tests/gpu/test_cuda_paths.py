"""CUDA code paths: placement, bf16 autocast, gradient checkpointing, simulation on a GPU.

Marked ``gpu``: skipped (by ``tests/conftest.py``) on machines without a CUDA device.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedlora.clients.evaluation import evaluate_model
from fedlora.clients.training import train_locally
from fedlora.config import RunConfig
from fedlora.data import SftExample, tokenize
from fedlora.device import bf16_enabled, resolve_device
from fedlora.models import apply_lora, load_base_model
from fedlora.testing import run_tiny_federation

pytestmark = pytest.mark.gpu


def _sft_setup(config: RunConfig):  # type: ignore[no-untyped-def]
    base = load_base_model("tiny-llama", task="sft")
    model = apply_lora(base, config)
    examples = [SftExample(f"Question {i}: what is {i} plus one?", f"{i + 1}") for i in range(32)]
    dataset = tokenize(examples, base.tokenizer, max_length=64)
    return base, model, dataset


def _adapter_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().float().cpu().clone()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def test_auto_device_and_bf16_pick_the_gpu():
    device = resolve_device("auto")
    assert device.type == "cuda"
    assert bf16_enabled("auto", device) == torch.cuda.is_bf16_supported()


def test_training_on_cuda_with_bf16_and_checkpointing_updates_fp32_adapter():
    config = RunConfig(lr=0.01, batch_size=8, gradient_checkpointing=True)
    base, model, dataset = _sft_setup(config)
    device = resolve_device("cuda")
    before = _adapter_snapshot(model)

    result = train_locally(
        model,
        dataset,
        config=config,
        pad_id=base.tokenizer.pad_token_id,
        device=device,
        bf16=True,
        seed=0,
    )

    assert result.steps == 4
    assert torch.isfinite(torch.tensor(result.loss))
    assert model.base_model.model.is_activation_checkpointing
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.device.type == "cuda" for p in trainable)
    # autocast computes in bf16 but the adapter weights themselves stay float32
    assert all(p.dtype == torch.float32 for p in trainable)
    after = _adapter_snapshot(model)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed, "no adapter tensor changed after training on CUDA"


def test_bf16_evaluation_on_cuda_is_close_to_fp32_on_cpu():
    config = RunConfig()
    base, model, dataset = _sft_setup(config)
    pad_id = base.tokenizer.pad_token_id
    cpu = evaluate_model(model, dataset, task="sft", pad_id=pad_id, device=torch.device("cpu"))
    gpu = evaluate_model(
        model, dataset, task="sft", pad_id=pad_id, device=resolve_device("cuda"), bf16=True
    )
    assert gpu["num-tokens"] == cpu["num-tokens"]
    # bf16 keeps 8 bits of mantissa: a few parts in a thousand on a loss near ln(vocab)
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=2e-2)


def test_simulation_places_clients_on_the_gpu(tmp_path: Path):
    run_dir = run_tiny_federation(
        tmp_path, task="sft", sites=2, rounds=1, device="cuda", examples_per_site=24
    )
    # device "cuda" makes a client without a usable CUDA device refuse with an error reply
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["device"] == "cuda"
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    final = json.loads(lines[-1])
    assert final["round"] == 1
    assert not final.get("errors")
    assert (run_dir / "adapters" / "final" / "adapter_model.safetensors").exists()
