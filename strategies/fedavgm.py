"""FedAvg with server momentum (Hsu et al. 2019), as Flower's ``FedAvgM`` computes it.

Update rule (see :mod:`fedlora.strategies.fedopt` for ``Δ`` and the moments)
    ``u = μ·u + Δ``; ``x ← x + η·u``. This is Flower's ``momentum_vector`` with Flower's
    ``pseudo_gradient = x − mean = −Δ`` and its ``x − η·u``. With ``μ = 0`` and ``η = 1`` the
    aggregate *is* the FedAvg mean, bit for bit, because Flower then skips the server step too.
"""

from __future__ import annotations

import torch

from fedlora.strategies.fedopt import ServerOptimizer, positive, unit_interval

__all__ = ["FedAvgM"]


class FedAvgM(ServerOptimizer):
    """FedAvg with server momentum (Hsu et al. 2019) as Flower's ``FedAvgM`` computes it.

    Per tensor, with ``Δ`` the pseudo-gradient::

        u = μ·u + Δ
        x ← x + η·u

    With ``μ = 0`` and ``η = 1`` the result is the FedAvg mean itself (bit-identical to
    :class:`~fedlora.strategies.fedavg.FedAvg`), as Flower skips its server step then.

    Parameters
    ----------
    server_lr
        ``η`` (> 0).
    momentum
        ``μ``, in [0, 1).

    Raises
    ------
    ConfigError
        For a setting outside its range.
    """

    name = "fedavgm"
    _slots = ("momentum",)

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        self.server_lr = positive("server learning rate", server_lr)
        self.momentum = unit_interval("momentum", momentum)
        super().__init__()

    def hyperparameters(self) -> dict[str, float]:
        """``server_lr`` and ``momentum``."""
        return {"server_lr": self.server_lr, "momentum": self.momentum}

    def _step_tensor(
        self, x: torch.Tensor, mean: torch.Tensor, moments: dict[str, torch.Tensor], t: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        u = self.momentum * moments["momentum"] + (mean - x)
        if self.momentum == 0.0 and self.server_lr == 1.0:
            # x + (mean - x) can differ from mean in the last bit.
            return mean, {"momentum": u}
        return x + self.server_lr * u, {"momentum": u}
