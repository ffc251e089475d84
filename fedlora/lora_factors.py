"""LoRA modules inside an adapter state: which tensors are factors, and how they pair up.

PEFT's adapter state (:func:`peft.get_peft_model_state_dict`, adapter name stripped) names a
LoRA module's factors ``<prefix>.lora_A.weight`` (``r × d_in``) and ``<prefix>.lora_B.weight``
(``d_out × r``), e.g. ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``. The
module adds ``s · B·A`` to its base weight, with ``s = lora_alpha / r`` (``lora_alpha / √r``
with rsLoRA). Every other tensor (a classification head saved through ``modules_to_save``,
such as ``base_model.model.score.weight``, a LoRA bias) is a *non-factor* tensor: strategies
average it like FedAvg.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fedlora.adapters import AdapterState
from fedlora.errors import AdapterError, ConfigError

__all__ = [
    "LORA_A_SUFFIX",
    "LORA_B_SUFFIX",
    "factor_names",
    "frozen_names",
    "is_lora_a",
    "is_lora_b",
    "lora_modules",
    "lora_scaling",
    "module_shape",
    "other_names",
    "trained_names",
    "trained_state",
]

LORA_A_SUFFIX = ".lora_A.weight"
LORA_B_SUFFIX = ".lora_B.weight"


def _is_factor(name: str, suffix: str) -> bool:
    return name.endswith(suffix) and len(name) > len(suffix) and "modules_to_save" not in name


def is_lora_a(name: str) -> bool:
    """True when ``name`` is a LoRA ``A`` factor (``<prefix>.lora_A.weight``)."""
    return _is_factor(name, LORA_A_SUFFIX)


def is_lora_b(name: str) -> bool:
    """True when ``name`` is a LoRA ``B`` factor (``<prefix>.lora_B.weight``)."""
    return _is_factor(name, LORA_B_SUFFIX)


def lora_modules(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """Group the LoRA factors of ``state`` by module.

    Parameters
    ----------
    state
        An adapter state as :func:`fedlora.adapters.adapter_state` returns it.

    Returns
    -------
    dict[str, tuple[str, str]]
        Module prefix (the name without ``.lora_A.weight``) to its ``(A name, B name)``, in
        sorted prefix order.

    Raises
    ------
    AdapterError
        For an ``A`` without its ``B`` (or the reverse), a factor that is not a matrix, or an
        ``A`` (``r × d_in``) and ``B`` (``d_out × r``) of different ranks.
    """
    a_prefixes = {name[: -len(LORA_A_SUFFIX)] for name in state if is_lora_a(name)}
    b_prefixes = {name[: -len(LORA_B_SUFFIX)] for name in state if is_lora_b(name)}
    if a_prefixes != b_prefixes:
        lone_a = sorted(a_prefixes - b_prefixes)
        lone_b = sorted(b_prefixes - a_prefixes)
        raise AdapterError(
            f"LoRA factors do not pair up: lora_A without lora_B at {lone_a[:3]}, "
            f"lora_B without lora_A at {lone_b[:3]}"
        )
    modules: dict[str, tuple[str, str]] = {}
    for prefix in sorted(a_prefixes):
        a_name, b_name = prefix + LORA_A_SUFFIX, prefix + LORA_B_SUFFIX
        a, b = state[a_name], state[b_name]
        if a.dim() != 2 or b.dim() != 2:
            raise AdapterError(
                f"LoRA module {prefix} has factors of shapes {tuple(a.shape)} and "
                f"{tuple(b.shape)}; only matrix (linear-layer) factors are supported"
            )
        if a.shape[0] != b.shape[1]:
            raise AdapterError(
                f"LoRA module {prefix}: lora_A is {tuple(a.shape)} (rank {a.shape[0]}) but "
                f"lora_B is {tuple(b.shape)} (rank {b.shape[1]})"
            )
        modules[prefix] = (a_name, b_name)
    return modules


def factor_names(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the LoRA factors in ``state`` (every ``A`` and ``B``), sorted."""
    return sorted(name for name in state if is_lora_a(name) or is_lora_b(name))


def other_names(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the non-factor tensors in ``state`` (heads, biases), sorted."""
    return sorted(name for name in state if not (is_lora_a(name) or is_lora_b(name)))


def module_shape(state: Mapping[str, torch.Tensor], names: tuple[str, str]) -> tuple[int, int, int]:
    """``(d_out, d_in, r)`` of the module whose ``(A name, B name)`` are ``names``."""
    a, b = state[names[0]], state[names[1]]
    return int(b.shape[0]), int(a.shape[1]), int(a.shape[0])


def lora_scaling(lora_alpha: float, rank: int, *, use_rslora: bool = False) -> float:
    """PEFT's scaling of ``B·A``: ``lora_alpha / rank``, or ``lora_alpha / √rank`` (rsLoRA).

    Raises
    ------
    ConfigError
        For ``rank < 1`` or a ``lora_alpha`` that is not a positive finite number.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    if not (lora_alpha > 0 and math.isfinite(lora_alpha)):
        raise ConfigError(f"lora-alpha must be > 0, got {lora_alpha}")
    return float(lora_alpha) / (math.sqrt(rank) if use_rslora else rank)


def trained_names(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The tensors an FFA-LoRA site trains and sends: every ``lora_B`` and non-factor tensor.

    FFA-LoRA (:mod:`fedlora.strategies.ffa_lora`) keeps every ``A`` frozen at its shared
    value; the site (what it trains and sends) and the coordinator (what it expects) both read
    the list from here, so they agree.

    Parameters
    ----------
    state
        A full adapter state (with its ``A`` factors), e.g. the global adapter.

    Returns
    -------
    list[str]
        Sorted names.

    Raises
    ------
    AdapterError
        When the LoRA factors of ``state`` do not pair up (see :func:`lora_modules`).
    """
    b_names = [b_name for _, b_name in lora_modules(state).values()]
    return sorted(b_names + other_names(state))


def frozen_names(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The ``lora_A`` factors FFA-LoRA keeps frozen, sorted (the rest of the LoRA factors)."""
    return sorted(a_name for a_name, _ in lora_modules(state).values())


def trained_state(state: Mapping[str, torch.Tensor]) -> AdapterState:
    """The part of ``state`` an FFA-LoRA site sends: the tensors of :func:`trained_names`."""
    return {name: state[name] for name in trained_names(state)}
