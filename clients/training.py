"""Local training of the adapter on a site's data."""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch
from peft import PeftModel
from torch.utils.data import DataLoader

from fedlora.clients.proximal import proximal_term, step_with
from fedlora.config import RunConfig
from fedlora.data import TokenizedDataset, collate
from fedlora.device import autocast

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What one round of local training did."""

    loss: float
    steps: int
    num_examples: int


def make_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """The optimizer over the trainable (adapter) parameters only."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)


def train_locally(
    model: PeftModel,
    dataset: TokenizedDataset,
    *,
    config: RunConfig,
    pad_id: int,
    device: torch.device,
    bf16: bool,
    seed: int,
) -> TrainResult:
    """Train ``model``'s adapter for ``config.local_epochs`` epochs (or ``max_steps``).

    Parameters
    ----------
    model
        The PEFT model, already holding the global adapter.
    dataset
        The site's tokenised training split.
    config
        Learning rate, batch size, epochs, step cap, optimizer, gradient checkpointing.
    pad_id
        Token id used for padding.
    device, bf16
        Where to train and whether to autocast to bfloat16.
    seed
        Seeds the batch order and dropout, so a round is reproducible whatever ran before it
        in the process.

    Returns
    -------
    TrainResult
        Mean training loss over the steps taken, the step count and the example count.
    """
    model.to(device)
    model.train()
    if config.gradient_checkpointing and device.type == "cuda":
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=functools.partial(collate, pad_id=pad_id, task=config.task),
    )
    optimizer = make_optimizer(model, config)
    step = step_with(optimizer.step, proximal_term(model, config))
    total_loss, steps = 0.0, 0
    # Dropout draws from the global generator: seed it for this round only, and leave the
    # caller's generator as it was.
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        for _epoch in range(config.local_epochs):
            for batch in loader:
                if config.max_steps and steps >= config.max_steps:
                    break
                batch = {key: value.to(device) for key, value in batch.items()}
                with autocast(device, bf16):
                    loss = model(**batch).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                step()
                total_loss += float(loss.detach())
                steps += 1
    model.eval()
    mean_loss = total_loss / steps if steps else math.nan
    return TrainResult(loss=mean_loss, steps=steps, num_examples=len(dataset))
