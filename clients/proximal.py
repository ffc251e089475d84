"""Client-side parts of the LoRA-aware strategies: FedProx's proximal term, FFA-LoRA's freeze."""

from __future__ import annotations

from collections.abc import Callable

import torch
from peft import PeftModel

from fedlora.config import RunConfig


class ProximalTerm:
    """FedProx's ``μ/2 · ‖w − w_global‖²`` over the trained parameters.

    The global values are copied when the term is made, i.e. before the round's first step.
    :meth:`add_gradient` adds ``μ (w − w_global)`` to each parameter's ``.grad``: for plain
    training after ``backward()``, for DP after Opacus has clipped and noised the data
    gradient (the term reads no record, so it is post-processing and costs no privacy).

    Parameters
    ----------
    parameters
        The trained parameters, at the global adapter's values.
    mu
        μ > 0.
    """

    def __init__(self, parameters: list[torch.nn.Parameter], mu: float) -> None:
        self.mu = mu
        self.parameters = parameters
        self.anchors = [parameter.detach().clone() for parameter in parameters]

    def add_gradient(self) -> None:
        """Add ``μ (w − w_global)`` to every parameter's gradient (creating it if absent)."""
        with torch.no_grad():
            for parameter, anchor in zip(self.parameters, self.anchors, strict=True):
                pull = self.mu * (parameter - anchor)
                if parameter.grad is None:
                    parameter.grad = pull
                else:
                    parameter.grad.add_(pull)

    def value(self) -> float:
        """``μ/2 · ‖w − w_global‖²`` now."""
        with torch.no_grad():
            total = sum(
                float(torch.sum((p - a).double() ** 2))
                for p, a in zip(self.parameters, self.anchors, strict=True)
            )
        return 0.5 * self.mu * total


def proximal_term(model: torch.nn.Module, config: RunConfig) -> ProximalTerm | None:
    """FedProx's term for this round, or ``None`` when the strategy has none (μ = 0)."""
    mu = config.effective_proximal_mu
    if mu <= 0:
        return None
    return ProximalTerm([p for p in model.parameters() if p.requires_grad], mu)


def step_with(step: Callable[[], object], proximal: ProximalTerm | None) -> Callable[[], object]:
    """Wrap a plain optimizer's ``step`` so the proximal gradient is added first."""
    if proximal is None:
        return step

    def stepped() -> object:
        proximal.add_gradient()
        return step()

    return stepped


def freeze_for_strategy(model: PeftModel, config: RunConfig) -> list[str]:
    """Freeze what the strategy keeps fixed; return the frozen parameter names.

    FFA-LoRA (Sun et al., 2024) trains only the B factors (and any head): every ``lora_A``
    is frozen at the shared initial value, so neither the optimizer nor Opacus (which clips
    and noises exactly the parameters that require gradients) touches it.
    """
    if config.strategy != "ffa-lora":
        return []
    frozen = []
    for name, parameter in model.named_parameters():
        if ".lora_A." in name:  # parameter names carry the adapter name: lora_A.default
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def unfreeze(model: PeftModel, names: list[str]) -> None:
    """Undo :func:`freeze_for_strategy` (the cached model is shared across rounds)."""
    wanted = set(names)
    for name, parameter in model.named_parameters():
        if name in wanted:
            parameter.requires_grad_(True)
