"""FedProx (Li et al., MLSys 2020): FedAvg aggregation, a proximal term on every site."""

from __future__ import annotations

import math

from fedlora.errors import ConfigError
from fedlora.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg on the server; each site adds ``μ/2 · ‖w − w_global‖²`` over the LoRA parameters.

    The sites read μ from the run config the server sends with every round
    (``RunConfig.effective_proximal_mu``) and add its gradient ``μ (w − w_global)`` to each
    trained parameter's gradient (``clients/proximal.py``). With DP that happens after
    Opacus has clipped and noised the data gradient: the term involves no record, so it is
    post-processing and costs no privacy.

    Parameters
    ----------
    proximal_mu : float
        μ >= 0; 0 is FedAvg.
    """

    name = "fedprox"

    def __init__(self, proximal_mu: float) -> None:
        if not (proximal_mu >= 0 and math.isfinite(proximal_mu)):
            raise ConfigError(f"proximal-mu must be >= 0, got {proximal_mu}")
        self.proximal_mu = proximal_mu
