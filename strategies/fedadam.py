"""FedAdam on adapter deltas (Reddi et al. 2021, Alg. 2), as Flower's ``FedAdam`` computes it.

Update rule (see :mod:`fedlora.strategies.fedopt` for ``Δ`` and the moments)
    ``m = β1·m + (1 − β1)·Δ``; ``v = β2·v + (1 − β2)·Δ²``;
    ``η_t = η·sqrt(1 − β2^(t+1)) / (1 − β1^(t+1))``; ``x ← x + η_t·m / (sqrt(v) + τ)``.
    ``η_t`` is Flower's bias-corrected ``eta_norm``, which uses ``server_round + 1`` as the
    exponent with ``server_round`` counting from 1. It is one step ahead of Kingma & Ba's
    ``α_t = α·sqrt(1 − β2^t) / (1 − β1^t)``; it is kept as it is so that results match Flower's.
"""

from __future__ import annotations

import math

import torch

from fedlora.strategies.fedopt import FedOpt

__all__ = ["FedAdam"]


class FedAdam(FedOpt):
    """FedAdam (Reddi et al. 2021, Alg. 2) as Flower's ``FedAdam`` computes it.

    Per tensor, in round ``t`` (1 for the first), with ``Δ`` the pseudo-gradient::

        m = β1·m + (1 − β1)·Δ
        v = β2·v + (1 − β2)·Δ²
        η_t = η·sqrt(1 − β2^(t+1)) / (1 − β1^(t+1))
        x ← x + η_t·m / (sqrt(v) + τ)

    ``η_t`` is Flower's bias-corrected step (``eta_norm``), exponent ``t + 1`` included.

    Parameters
    ----------
    server_lr
        ``η`` (> 0).
    beta1, beta2
        ``β1`` and ``β2``, each in [0, 1).
    tau
        ``τ`` (> 0), the adaptivity floor of the denominator.

    Raises
    ------
    ConfigError
        For a setting outside its range.
    """

    name = "fedadam"

    def step_size(self, t: int) -> float:
        """Flower's bias-corrected ``η_t = η·sqrt(1 − β2^(t+1)) / (1 − β1^(t+1))``."""
        return (
            self.server_lr
            * math.sqrt(1.0 - math.pow(self.beta2, t + 1.0))
            / (1.0 - math.pow(self.beta1, t + 1.0))
        )

    def _step_tensor(
        self, x: torch.Tensor, mean: torch.Tensor, moments: dict[str, torch.Tensor], t: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        delta = mean - x
        m = self.beta1 * moments["m"] + (1.0 - self.beta1) * delta
        v = self.beta2 * moments["v"] + (1.0 - self.beta2) * delta**2
        return x + self.step_size(t) * m / (v.sqrt() + self.tau), {"m": m, "v": v}
