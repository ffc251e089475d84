"""Evaluation of an adapter on a site's held-out split.

The site loss is exact over the whole split, not a mean of batch means: for SFT the summed
token cross-entropy over response tokens divided by their count (perplexity is its exp), for
classification the summed cross-entropy over examples divided by their count. So the same
adapter gives the same number whatever the batch size.
"""

from __future__ import annotations

import functools
import math

import torch
from torch.utils.data import DataLoader

from fedlora.config import Task
from fedlora.data import TokenizedDataset, collate
from fedlora.device import autocast
from fedlora.errors import DataError
from fedlora.losses import summed_loss


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset: TokenizedDataset,
    *,
    task: Task,
    pad_id: int,
    device: torch.device,
    bf16: bool = False,
    batch_size: int = 32,
) -> dict[str, float]:
    """Evaluate ``model`` on ``dataset``.

    Returns
    -------
    dict
        ``loss`` and ``num-examples`` always; ``perplexity`` and ``num-tokens`` for SFT;
        ``accuracy`` for classification.

    Raises
    ------
    DataError
        For an empty ``dataset`` (the site's own check, ``get_datasets``, refuses it first).
    """
    if len(dataset) == 0:
        # 0/0 would be a NaN loss, which no reply may carry (fedlora.replies).
        raise DataError("a held-out split with no examples cannot be evaluated")
    model.to(device)
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=functools.partial(collate, pad_id=pad_id, task=task),
    )
    loss_sum, count, correct = 0.0, 0, 0
    for batch in loader:
        batch = {key: value.to(device) for key, value in batch.items()}
        labels = batch.pop("labels")
        with autocast(device, bf16):
            logits = model(**batch).logits.float()
        batch_sum, batch_count = summed_loss(logits, labels, task=task)
        loss_sum += batch_sum
        count += batch_count
        if task == "classification":
            correct += int((logits.argmax(dim=-1) == labels).sum())
    loss = loss_sum / count if count else math.nan
    metrics = {"loss": loss, "num-examples": float(len(dataset))}
    if task == "sft":
        metrics["perplexity"] = math.exp(min(loss, 50.0))
        metrics["num-tokens"] = float(count)
    else:
        metrics["accuracy"] = correct / count if count else math.nan
    return metrics
