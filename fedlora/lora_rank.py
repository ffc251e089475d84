"""LoRA factors of different ranks: the exact aggregate of their products, and any rank cut from it.

A LoRA module of rank ``r`` and scaling ``s`` adds ``s · B·A`` to its base weight (``B``:
``d_out × r``, ``A``: ``r × d_in``). Factors of different ranks cannot be averaged entry by
entry; their products can. Per module, the weighted sum of products
``ΔW = sum_i c_i B_i A_i`` is computed without ever forming a ``d_out × d_in`` matrix
(:func:`factor_product`)::

    B_cat = [c_1 B_1 | ... | c_n B_n]     d_out × R,  R = sum_i r_i
    A_cat = [A_1; ...; A_n]                R × d_in,   so ΔW = B_cat A_cat
    B_cat = Q_B R_B,  A_catᵀ = Q_A R_A     thin QR
    R_B R_Aᵀ = U_c Σ V_cᵀ                  SVD of a core of at most R × R
    ΔW = (Q_B U_c) Σ (Q_A V_c)ᵀ = U Σ Vᵀ

in ``O((d_out + d_in) R² + R³)`` operations, all in float64. Any rank ``r`` is then cut from
this SVD (:func:`truncate`): ``B = U_r √(Σ_r / s)``, ``A = √(Σ_r / s) V_rᵀ``, so
``s · B·A = U_r Σ_r V_rᵀ``, the best rank-``r`` approximation of ``ΔW`` in Frobenius and
spectral norm (Eckart–Young), with Frobenius error ``sqrt(sum_{j > r} σ_j²)``. The singular
values are split evenly between the two factors so neither dwarfs the other when training
resumes. For ``r >= rank(ΔW)`` the factors reproduce ``ΔW`` exactly (up to float64 rounding).

The hetero-rank strategy (:mod:`fedlora.strategies.hetero_rank`) aggregates with this; a site
of a lower rank (:mod:`fedlora.clients.site_rank`) and the coordinator validating its update
both cut the site's starting adapter with :func:`site_state_for_config`, so both cut it the
same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedlora.adapters import AdapterState
from fedlora.config import RunConfig
from fedlora.errors import AdapterError, ConfigError
from fedlora.lora_factors import lora_modules, lora_scaling, module_shape, other_names

__all__ = [
    "ModuleTemplate",
    "SvdFactors",
    "check_rank",
    "check_scaling",
    "cut_factors",
    "factor_product",
    "numerical_rank",
    "product_of",
    "site_state_for_config",
    "state_at_rank",
    "truncate",
]

SvdFactors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(U, S, V)`` of ``ΔW = U diag(S) Vᵀ``: ``d_out × k``, ``k``, ``d_in × k``, float64."""

_F64 = torch.float64


def check_rank(rank: int, d_out: int, d_in: int, *, module: str = "") -> None:
    """Refuse a LoRA rank a ``d_out × d_in`` module cannot have.

    Raises
    ------
    ConfigError
        For a rank that is not an integer >= 1, or one above ``min(d_out, d_in)`` (naming
        ``module`` and the limit).
    """
    where = f" for module {module}" if module else ""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"LoRA rank{where} must be an integer >= 1, got {rank!r}")
    limit = min(d_out, d_in)
    if rank > limit:
        raise ConfigError(
            f"LoRA rank {rank}{where} exceeds min(d_out, d_in) = min({d_out}, {d_in}) = {limit}"
        )


def check_scaling(scaling: float, what: str) -> float:
    """``scaling`` as a float, refused unless it is a positive finite number.

    Raises
    ------
    ConfigError
        Naming ``what``.
    """
    if isinstance(scaling, bool) or not (scaling > 0 and math.isfinite(scaling)):
        raise ConfigError(f"{what} must be a positive finite number, got {scaling!r}")
    return float(scaling)


def factor_product(
    factors: Sequence[tuple[torch.Tensor, torch.Tensor]],
    coefficients: Sequence[float],
    *,
    module: str = "",
) -> SvdFactors:
    """Thin SVD of ``sum_i c_i B_i A_i``, computed from the factors only.

    See the module docstring for the algorithm; no ``d_out × d_in`` matrix is formed.

    Parameters
    ----------
    factors
        ``(B_i, A_i)`` per site: ``B_i`` is ``d_out × r_i``, ``A_i`` is ``r_i × d_in``; the
        ranks ``r_i`` may differ.
    coefficients
        ``c_i`` per site, typically ``w_i · s_i`` (example weight times LoRA scaling).
    module
        The module's name, for error messages.

    Returns
    -------
    SvdFactors
        ``(U, S, V)`` in float64 with ``ΔW = U diag(S) Vᵀ``: ``U`` is ``d_out × k``, ``S``
        the ``k`` singular values in descending order, ``V`` is ``d_in × k``, with
        ``k = min(d_out, d_in, R)`` and ``R = sum_i r_i``.

    Raises
    ------
    AdapterError
        For no factors, a count of coefficients that differs, or factors whose shapes do not
        fit together.
    """
    where = f"LoRA module {module}" if module else "LoRA module"
    if not factors:
        raise AdapterError(f"{where}: no factors to aggregate")
    if len(coefficients) != len(factors):
        raise AdapterError(
            f"{where}: {len(factors)} factor pairs but {len(coefficients)} coefficients"
        )
    d_out, d_in = int(factors[0][0].shape[0]), int(factors[0][1].shape[1])
    for b, a in factors:
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise AdapterError(
                f"{where}: factors B {tuple(b.shape)} and A {tuple(a.shape)} do not multiply"
            )
        if b.shape[0] != d_out or a.shape[1] != d_in:
            raise AdapterError(
                f"{where}: factors B {tuple(b.shape)}, A {tuple(a.shape)} differ from "
                f"d_out × d_in = {d_out} × {d_in} of the others"
            )
    b_cat = torch.cat(
        [float(c) * b.to(_F64) for (b, _), c in zip(factors, coefficients, strict=True)], dim=1
    )
    a_cat = torch.cat([a.to(_F64) for _, a in factors], dim=0)
    q_b, r_b = torch.linalg.qr(b_cat, mode="reduced")
    q_a, r_a = torch.linalg.qr(a_cat.T, mode="reduced")
    u_core, s, vh_core = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    return q_b @ u_core, s, q_a @ vh_core.T


def truncate(
    u: torch.Tensor,
    s: torch.Tensor,
    v: torch.Tensor,
    rank: int,
    scaling: float,
    *,
    module: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` LoRA factors whose scaled product best approximates ``U diag(S) Vᵀ``.

    Parameters
    ----------
    u, s, v
        The SVD of ``ΔW`` as :func:`factor_product` returns it.
    rank
        The LoRA rank ``r`` of the factors to return.
    scaling
        The LoRA scaling ``s`` of the adapter they go into (``lora_alpha / r`` in PEFT).
    module
        The module's name, for error messages.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        ``(B, A)`` in float64, ``B = U_r √(S_r / scaling)`` (``d_out × r``) and
        ``A = √(S_r / scaling) V_rᵀ`` (``r × d_in``), so that ``scaling · B·A`` is the best
        rank-``r`` approximation of ``ΔW`` (Eckart–Young); its Frobenius error is
        ``sqrt(sum_{j > r} S_j²)``. When ``r`` exceeds the ``k`` singular values available,
        ``B`` gets zero columns and ``A`` zero rows from ``k`` on.

    Raises
    ------
    ConfigError
        For ``rank < 1``, ``rank > min(d_out, d_in)`` (naming the module and the limit), or a
        scaling that is not a positive finite number.
    """
    d_out, d_in = int(u.shape[0]), int(v.shape[0])
    check_rank(rank, d_out, d_in, module=module)
    scaling = check_scaling(scaling, "LoRA scaling")
    kept = min(rank, int(s.numel()))
    root = torch.sqrt(s[:kept].to(_F64) / scaling)
    b = torch.zeros(d_out, rank, dtype=_F64)
    a = torch.zeros(rank, d_in, dtype=_F64)
    b[:, :kept] = u[:, :kept].to(_F64) * root
    a[:kept] = root[:, None] * v[:, :kept].to(_F64).T
    return b, a


def numerical_rank(s: torch.Tensor, d_out: int, d_in: int) -> int:
    """How many singular values ``s`` of a ``d_out × d_in`` matrix are not rounding noise."""
    # NumPy's matrix_rank tolerance: singular values below it are rounding noise of a zero.
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0
    tolerance = float(s[0]) * max(d_out, d_in) * torch.finfo(_F64).eps
    return int((s > tolerance).sum())


@dataclass(frozen=True)
class ModuleTemplate:
    """The LoRA modules of an adapter: names, dimensions and factor dtypes, per module prefix."""

    modules: dict[str, tuple[str, str]]
    """Prefix to ``(A name, B name)``, in sorted prefix order."""
    shapes: dict[str, tuple[int, int]]
    """Prefix to ``(d_out, d_in)``."""
    dtypes: dict[str, tuple[torch.dtype, torch.dtype]]
    """Prefix to the dtypes of ``(A, B)``."""

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor], rank: int) -> ModuleTemplate:
        """The template of ``state``, every module of which must be of rank ``rank``.

        Raises
        ------
        AdapterError
            When the factors do not pair up or a module's rank is not ``rank``.
        ConfigError
            When ``rank`` exceeds a module's ``min(d_out, d_in)``.
        """
        modules = lora_modules(state)
        shapes: dict[str, tuple[int, int]] = {}
        for prefix, names in modules.items():
            d_out, d_in, module_rank = module_shape(state, names)
            check_rank(rank, d_out, d_in, module=prefix)
            if module_rank != rank:
                raise AdapterError(
                    f"global adapter has rank {module_rank} at LoRA module {prefix}, but the "
                    f"hetero-rank global rank is {rank}"
                )
            shapes[prefix] = (d_out, d_in)
        dtypes = {
            prefix: (state[a_name].dtype, state[b_name].dtype)
            for prefix, (a_name, b_name) in modules.items()
        }
        return cls(modules=modules, shapes=shapes, dtypes=dtypes)


def product_of(
    state: Mapping[str, torch.Tensor], template: ModuleTemplate, scaling: float
) -> dict[str, SvdFactors]:
    """Per module of ``template``, the SVD of ``scaling · B·A`` of ``state``'s factors."""
    return {
        prefix: factor_product([(state[b_name], state[a_name])], [scaling], module=prefix)
        for prefix, (a_name, b_name) in template.modules.items()
    }


def cut_factors(
    delta: Mapping[str, SvdFactors],
    template: ModuleTemplate,
    rank: int,
    scaling: float,
    *,
    fill_empty: bool,
    seed: int,
) -> AdapterState:
    """Every module's rank-``rank`` factors of ``delta`` for ``scaling`` (see :func:`truncate`).

    Parameters
    ----------
    delta
        Per module prefix, the SVD of its ``ΔW``.
    template
        Names, dimensions and dtypes of the factors to return.
    rank, scaling
        The LoRA rank and scaling of the adapter the factors go into.
    fill_empty, seed
        Whether directions beyond ``ΔW``'s numerical rank get PEFT-like ``A`` rows (uniform
        in ``±1/√d_in``, from a generator seeded with ``seed``) with zero ``B`` columns, so
        that they can train; the product is unchanged.

    Returns
    -------
    AdapterState
        The ``A`` and ``B`` factors of every module, in the template's dtypes.
    """
    generator = torch.Generator().manual_seed(seed)
    state: AdapterState = {}
    for prefix, (a_name, b_name) in template.modules.items():
        u, s, v = delta[prefix]
        d_out, d_in = template.shapes[prefix]
        b, a = truncate(u, s, v, rank, scaling, module=prefix)
        if fill_empty:
            live = min(rank, numerical_rank(s, d_out, d_in))
            if live < rank:
                b[:, live:] = 0.0
                bound = 1.0 / math.sqrt(d_in)
                noise = torch.rand(rank - live, d_in, generator=generator, dtype=_F64)
                a[live:] = (2.0 * noise - 1.0) * bound
        a_dtype, b_dtype = template.dtypes[prefix]
        state[a_name] = a.to(a_dtype)
        state[b_name] = b.to(b_dtype)
    return state


def state_at_rank(
    global_state: AdapterState, *, global_rank: int, lora_alpha: float, rank: int, seed: int
) -> AdapterState:
    """A site's rank-``rank`` starting adapter cut from the rank-``global_rank`` global one.

    The site (to train from it) and the coordinator (to validate the site's update against
    it) compute the same state: the best rank-``rank`` factors of the global ``ΔW``, with
    empty directions filled from ``seed`` (see :func:`cut_factors`); the non-factor tensors
    are copied.

    Raises
    ------
    AdapterError, ConfigError
        When the global adapter is not of rank ``global_rank`` or a rank does not fit a module.
    """
    if rank == global_rank:
        return global_state
    global_scaling = check_scaling(lora_scaling(lora_alpha, global_rank), "global LoRA scaling")
    template = ModuleTemplate.of(global_state, global_rank)
    delta = product_of(global_state, template, global_scaling)
    scaling = check_scaling(lora_scaling(lora_alpha, rank), "site LoRA scaling")
    state = cut_factors(delta, template, rank, scaling, fill_empty=True, seed=seed)
    state.update({name: global_state[name].clone() for name in other_names(global_state)})
    return dict(sorted(state.items()))


def site_state_for_config(global_state: AdapterState, config: RunConfig, rank: int) -> AdapterState:
    """:func:`state_at_rank` with the run's ``lora-r``, ``lora-alpha`` and ``seed``.

    The one place where a site (to train) and the coordinator (to validate) derive a site's
    starting adapter, so both always cut the same way.
    """
    return state_at_rank(
        global_state,
        global_rank=config.lora_r,
        lora_alpha=config.lora_alpha,
        rank=rank,
        seed=config.seed,
    )
