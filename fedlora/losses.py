"""Held-out loss as a sum over a batch, so a whole split's loss is exact whatever the batching.

For SFT: the token cross-entropy over response tokens (labels shifted by one; prompt and
padding tokens carry ``IGNORE_INDEX``), summed, with the number of tokens it covers. For
classification: the cross-entropy of each example, summed, with the number of examples. A
split's loss is the sum of its batches' sums divided by the sum of their counts. Both the
sites (:mod:`fedlora.clients.evaluation`) and ``fedlora evaluate``
(:mod:`fedlora.evaluation`) use it, so the two report the same number for the same adapter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from fedlora.config import Task
from fedlora.data import IGNORE_INDEX


def summed_loss(logits: torch.Tensor, labels: torch.Tensor, *, task: Task) -> tuple[float, int]:
    """``(summed cross-entropy, tokens or examples counted)`` of one batch.

    Parameters
    ----------
    logits
        ``(B, T, V)`` for SFT, ``(B, C)`` for classification, in float32.
    labels
        ``(B, T)`` token ids with ``IGNORE_INDEX`` outside the response, or ``(B,)`` classes.
    task
        ``"sft"`` or ``"classification"``.
    """
    if task == "sft":
        shifted_labels = labels[:, 1:].reshape(-1)
        summed = F.cross_entropy(
            logits[:, :-1, :].reshape(-1, logits.shape[-1]),
            shifted_labels,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return float(summed), int((shifted_labels != IGNORE_INDEX).sum())
    return float(F.cross_entropy(logits, labels, reduction="sum")), int(labels.numel())
