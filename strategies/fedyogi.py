"""FedYogi on adapter deltas (Reddi et al. 2021, Alg. 2), as Flower's ``FedYogi`` computes it.

Update rule (see :mod:`fedlora.strategies.fedopt` for ``Δ`` and the moments)
    ``m = β1·m + (1 − β1)·Δ``; ``v = v − (1 − β2)·Δ²·sign(v − Δ²)``;
    ``x ← x + η·m / (sqrt(v) + τ)``. There is no bias correction, as in Flower's FedYogi.
"""

from __future__ import annotations

import torch

from fedlora.strategies.fedopt import FedOpt

__all__ = ["FedYogi"]


class FedYogi(FedOpt):
    """FedYogi (Reddi et al. 2021, Alg. 2) as Flower's ``FedYogi`` computes it.

    Per tensor, with ``Δ`` the pseudo-gradient (no bias correction, as in Flower)::

        m = β1·m + (1 − β1)·Δ
        v = v − (1 − β2)·Δ²·sign(v − Δ²)
        x ← x + η·m / (sqrt(v) + τ)

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

    name = "fedyogi"

    def _step_tensor(
        self, x: torch.Tensor, mean: torch.Tensor, moments: dict[str, torch.Tensor], t: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        delta = mean - x
        squared = delta**2
        m = self.beta1 * moments["m"] + (1.0 - self.beta1) * delta
        v = moments["v"] - (1.0 - self.beta2) * squared * torch.sign(moments["v"] - squared)
        return x + self.server_lr * m / (v.sqrt() + self.tau), {"m": m, "v": v}
