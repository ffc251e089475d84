"""Federated LoRA with a different rank at every site, aggregated exactly and re-factorised by SVD.

Site ``i`` trains each module at its own rank ``r_i`` (``A_i``: ``r_i × d_in``, ``B_i``:
``d_out × r_i``) and scaling ``s_i`` (PEFT's ``lora_alpha / r_i``, or ``lora_alpha / √r_i``
with rsLoRA), so factors of different sites cannot be averaged entry by entry. What can be
averaged is the weight update each module applies. Per module, with ``w_i`` the example weights
(:func:`~fedlora.strategies.helpers.example_weights`), the exact aggregate is::

    ΔW = sum_i w_i s_i B_i A_i                                   (d_out × d_in)

It is computed without ever forming a ``d_out × d_in`` matrix (:func:`factor_product`)::

    B_cat = [w_1 s_1 B_1 | ... | w_n s_n B_n]     d_out × R,  R = sum_i r_i
    A_cat = [A_1; ...; A_n]                        R × d_in,   so ΔW = B_cat A_cat
    B_cat = Q_B R_B,  A_catᵀ = Q_A R_A             thin QR
    R_B R_Aᵀ = U_c Σ V_cᵀ                          SVD of a core of at most R × R
    ΔW = (Q_B U_c) Σ (Q_A V_c)ᵀ = U Σ Vᵀ

in ``O((d_out + d_in) R² + R³)`` operations, all in float64. Any rank ``r`` is then cut from
this SVD (:func:`truncate`): ``B = U_r √(Σ_r / s)``, ``A = √(Σ_r / s) V_rᵀ``, so
``s · B·A = U_r Σ_r V_rᵀ``, the best rank-``r`` approximation of ``ΔW`` in Frobenius and
spectral norm (Eckart–Young), with Frobenius error ``sqrt(sum_{j > r} σ_j²)``. The singular
values are split evenly between the two factors so neither dwarfs the other when training
resumes. For ``r >= rank(ΔW)`` the factors reproduce ``ΔW`` exactly (up to float64 rounding).

Trade-off: SVD re-factorisation rather than FLoRA-style stacking
    Stacking (Wang et al., "FLoRA", NeurIPS 2024) sends every site the stacked ``B_cat``,
    ``A_cat`` themselves: exact, but the global rank ``R`` is the sum of the sites' ranks and
    grows again every round (the sites' new factors are stacked on top of the old ones), and
    with it every site's download and the saved adapter. Here the server keeps ``ΔW`` exactly
    (as ``U, Σ, V``, rank at most ``min(R, d_out, d_in)``) and hands each site only its own
    rank: every site's rank and payload stay fixed for the whole run. The price is the
    truncation error, exactly the discarded singular values ``sqrt(sum_{j > r_i} σ_j²)``
    (:meth:`HeteroRank.truncation_error`); it is zero whenever ``r_i >= rank(ΔW)``.

    Because a site starts from its truncation of the global ``ΔW`` and the next aggregate
    averages the sites' full products, a low-rank site's truncation error enters the next
    aggregate with that site's weight.

Communication per round and site
    ``r_i · (d_in + d_out)`` values per module each way (the site's ``A_i`` and ``B_i``),
    plus the non-factor tensors (:meth:`HeteroRank.site_payload_values`), independent of the
    other sites' ranks and of the round.

Saved adapter
    :meth:`HeteroRank.aggregate` returns the global adapter at the *global rank* given to the
    constructor: the PEFT adapter saved every round is a rank-``global_rank`` LoRA (built with
    ``r = global_rank``), the best one for the exact ``ΔW`` the strategy keeps. The strategy
    does not rebuild ``ΔW`` from that saved adapter; the sites get their factors from
    :meth:`HeteroRank.site_state`, cut from the exact ``ΔW``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from fedlora.adapters import AdapterState, check_compatible
from fedlora.config import RunConfig
from fedlora.errors import AdapterError, ConfigError
from fedlora.lora_factors import lora_modules, lora_scaling, module_shape, other_names
from fedlora.strategies.base import SiteUpdate, Strategy, check_finite
from fedlora.strategies.helpers import example_weights, weighted_mean

__all__ = ["HeteroRank", "SvdFactors", "check_rank", "factor_product", "truncate"]

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


def _check_scaling(scaling: float, what: str) -> float:
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
    scaling = _check_scaling(scaling, "LoRA scaling")
    kept = min(rank, int(s.numel()))
    root = torch.sqrt(s[:kept].to(_F64) / scaling)
    b = torch.zeros(d_out, rank, dtype=_F64)
    a = torch.zeros(rank, d_in, dtype=_F64)
    b[:, :kept] = u[:, :kept].to(_F64) * root
    a[:kept] = root[:, None] * v[:, :kept].to(_F64).T
    return b, a


def _numerical_rank(s: torch.Tensor, d_out: int, d_in: int) -> int:
    # NumPy's matrix_rank tolerance: singular values below it are rounding noise of a zero.
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0
    tolerance = float(s[0]) * max(d_out, d_in) * torch.finfo(_F64).eps
    return int((s > tolerance).sum())


class HeteroRank(Strategy):
    """Exact aggregation of LoRA updates of heterogeneous ranks, re-factorised per site by SVD.

    See the module docstring for the aggregate, the trade-off and the communication cost. The
    strategy keeps the exact global ``ΔW`` of every module as an SVD (:attr:`delta`) and the
    example-weighted mean of the non-factor tensors. Per round:

    1. each site ``i`` gets :meth:`site_state` at its rank ``r_i`` (the round-1 states come
       from the initial adapter, adopted with :meth:`set_global`);
    2. it trains and sends all of its factors ``A_i``, ``B_i`` and its non-factor tensors;
    3. :meth:`aggregate` computes ``ΔW = sum_i w_i s_i B_i A_i`` and returns the global
       adapter at ``global_rank`` (the adapter to save).

    Scalings
        Exactly one of ``lora_alpha`` and ``site_scalings`` says what ``s_i`` is. With
        ``lora_alpha`` (every site runs PEFT with the same ``lora_alpha``) it follows each
        update's rank, per module: ``s_i = lora_alpha / r_i`` (``lora_alpha / √r_i`` with
        ``use_rslora``). With ``site_scalings`` each site's scaling is given by site name and
        holds for all its modules.

    Empty directions
        A rank-``r`` state cut from a ``ΔW`` of numerical rank below ``r`` has factor rows
        and columns that are both zero, e.g. every direction in round 1, when PEFT's
        initial ``B`` is zero. Such a direction gets no gradient in either factor and would
        never train. With ``fill_empty`` (the default) its ``A`` row is drawn like PEFT
        initialises ``A`` (uniform in ``±1/√d_in``, from a generator seeded with ``seed``,
        so every call gives the same rows) while its ``B`` column stays zero: the product,
        and so the adapter's effect, is unchanged.

    Parameters
    ----------
    global_rank
        The rank of the global adapter :meth:`aggregate` returns and :meth:`set_global`
        accepts.
    lora_alpha
        PEFT's ``lora_alpha``, shared by all sites; scalings follow from it.
    use_rslora
        With ``lora_alpha``: the sites use rsLoRA scaling (``lora_alpha / √r``).
    site_scalings
        Site name to that site's LoRA scaling ``s_i``, instead of ``lora_alpha``.
    global_scaling
        The scaling of the global adapter; defaults to the one ``lora_alpha`` gives
        ``global_rank`` and is required with ``site_scalings``.
    fill_empty, seed
        See *Empty directions* above.

    Raises
    ------
    ConfigError
        For ``global_rank < 1``, neither or both of ``lora_alpha`` and ``site_scalings``, a
        missing ``global_scaling``, or a scaling that is not positive and finite.
    """

    name = "hetero-rank"

    def __init__(
        self,
        global_rank: int,
        *,
        lora_alpha: float | None = None,
        use_rslora: bool = False,
        site_scalings: Mapping[str, float] | None = None,
        global_scaling: float | None = None,
        fill_empty: bool = True,
        seed: int = 0,
    ) -> None:
        if isinstance(global_rank, bool) or not isinstance(global_rank, int) or global_rank < 1:
            raise ConfigError(f"global LoRA rank must be an integer >= 1, got {global_rank!r}")
        if (lora_alpha is None) == (site_scalings is None):
            raise ConfigError("hetero-rank needs exactly one of lora_alpha and site_scalings")
        self.global_rank = global_rank
        self.lora_alpha = None if lora_alpha is None else float(lora_alpha)
        self.use_rslora = use_rslora
        self.site_scalings: dict[str, float] | None = None
        if site_scalings is not None:
            self.site_scalings = {
                site: _check_scaling(value, f"LoRA scaling of site {site}")
                for site, value in site_scalings.items()
            }
        if global_scaling is None:
            if self.lora_alpha is None:
                raise ConfigError("hetero-rank with site_scalings needs a global_scaling")
            global_scaling = lora_scaling(self.lora_alpha, global_rank, use_rslora=use_rslora)
        self.global_scaling = _check_scaling(global_scaling, "global LoRA scaling")
        self.fill_empty = fill_empty
        self.seed = seed
        self._modules: dict[str, tuple[str, str]] = {}
        self._shapes: dict[str, tuple[int, int]] = {}
        self._dtypes: dict[str, tuple[torch.dtype, torch.dtype]] = {}
        self._delta: dict[str, SvdFactors] = {}
        self._others: AdapterState = {}
        self._ready = False

    @property
    def delta(self) -> dict[str, SvdFactors]:
        """The exact global ``ΔW`` per module prefix, as ``(U, S, V)`` (float64)."""
        self._require_global()
        return dict(self._delta)

    def scaling(self, site: str, rank: int) -> float:
        """The LoRA scaling ``s_i`` of ``site``'s module of rank ``rank``.

        Raises
        ------
        ConfigError
            With ``site_scalings`` that do not name ``site``.
        """
        if self.lora_alpha is not None:
            return lora_scaling(self.lora_alpha, rank, use_rslora=self.use_rslora)
        try:
            return (self.site_scalings or {})[site]
        except KeyError:
            raise ConfigError(f"hetero-rank has no LoRA scaling for site {site!r}") from None

    def set_global(self, state: AdapterState) -> None:
        """Adopt ``state`` (rank ``global_rank``, scaling ``global_scaling``) as the global ``ΔW``.

        Call it with the initial adapter before the first :meth:`site_state`, or with a saved
        round's adapter to resume.

        Raises
        ------
        AdapterError
            When the factors do not pair up or a module's rank is not ``global_rank``.
        ConfigError
            When ``global_rank`` exceeds a module's ``min(d_out, d_in)``.
        """
        self._adopt_template(state)
        self._delta = {
            prefix: factor_product(
                [(state[b_name], state[a_name])], [self.global_scaling], module=prefix
            )
            for prefix, (a_name, b_name) in self._modules.items()
        }
        self._others = {name: state[name].clone() for name in other_names(state)}
        self._ready = True

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        """Keep ``ΔW = sum_i w_i s_i B_i A_i`` and return the global adapter at ``global_rank``.

        Parameters
        ----------
        global_state
            The global adapter (rank ``global_rank``): it fixes the names, shapes and dtypes
            of the result.
        updates
            Each site's full adapter at its own rank: the same modules and non-factor tensors
            as ``global_state``, any rank per module.

        Returns
        -------
        AdapterState
            Every module's best rank-``global_rank`` factors of ``ΔW`` for ``global_scaling``,
            and the example-weighted mean of the non-factor tensors.

        Raises
        ------
        AdapterError
            For an update whose modules, module dimensions or non-factor tensors differ from
            the global adapter's, factors that do not pair up, a global adapter not at
            ``global_rank``, or no training examples.
        ConfigError
            For ``global_rank`` above a module's ``min(d_out, d_in)``, or a site without a
            scaling.
        FloatingPointError
            When the aggregate has a NaN or infinity.
        """
        self._adopt_template(global_state)
        weights = example_weights(updates)
        global_others = {name: global_state[name] for name in other_names(global_state)}
        per_module: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {
            prefix: [] for prefix in self._modules
        }
        coefficients: dict[str, list[float]] = {prefix: [] for prefix in self._modules}
        for update, weight in zip(updates, weights, strict=True):
            try:
                modules = lora_modules(update.state)
            except AdapterError as exc:
                raise AdapterError(f"site {update.site}: {exc}") from None
            if set(modules) != set(self._modules):
                missing = sorted(set(self._modules) - set(modules))
                unexpected = sorted(set(modules) - set(self._modules))
                raise AdapterError(
                    f"site {update.site}: LoRA modules do not match the global adapter: "
                    f"missing {missing[:3]}, unexpected {unexpected[:3]}"
                )
            for prefix, names in modules.items():
                d_out, d_in, rank = module_shape(update.state, names)
                if (d_out, d_in) != self._shapes[prefix]:
                    raise AdapterError(
                        f"site {update.site}: LoRA module {prefix} is {d_out} × {d_in}, "
                        f"expected {self._shapes[prefix][0]} × {self._shapes[prefix][1]}"
                    )
                per_module[prefix].append((update.state[names[1]], update.state[names[0]]))
                coefficients[prefix].append(weight * self.scaling(update.site, rank))
            others = {name: update.state[name] for name in other_names(update.state)}
            try:
                check_compatible(global_others, others)
            except AdapterError as exc:
                raise AdapterError(f"site {update.site}: {exc}") from None
        self._delta = {
            prefix: factor_product(per_module[prefix], coefficients[prefix], module=prefix)
            for prefix in self._modules
        }
        self._others = (
            weighted_mean(
                [{name: update.state[name] for name in global_others} for update in updates],
                weights,
            )
            if global_others
            else {}
        )
        self._ready = True
        aggregate = self._state_at(self.global_rank, self.global_scaling)
        check_finite(aggregate)
        return aggregate

    def site_state(self, site_rank: int, site_scaling: float | None = None) -> AdapterState:
        """A site's starting adapter: rank-``site_rank`` factors of the global ``ΔW``.

        Parameters
        ----------
        site_rank
            The site's LoRA rank ``r_i`` (every module).
        site_scaling
            The site's LoRA scaling ``s_i``; defaults to the one ``lora_alpha`` gives
            ``site_rank`` (required with ``site_scalings``).

        Returns
        -------
        AdapterState
            Per module ``B`` (``d_out × r_i``) and ``A`` (``r_i × d_in``) with ``s_i · B·A``
            the best rank-``r_i`` approximation of ``ΔW`` (see :func:`truncate`), under the
            global adapter's names and dtypes; the non-factor tensors are the
            example-weighted mean of the last round (or those of :meth:`set_global`).

        Raises
        ------
        ConfigError
            For ``site_rank < 1``, ``site_rank`` above a module's ``min(d_out, d_in)``
            (naming it and the limit), a missing or invalid ``site_scaling``.
        RuntimeError
            Before :meth:`set_global` or :meth:`aggregate`.
        """
        self._require_global()
        if site_scaling is None:
            if self.lora_alpha is None:
                raise ConfigError("site_state needs the site's scaling with site_scalings")
            site_scaling = lora_scaling(self.lora_alpha, site_rank, use_rslora=self.use_rslora)
        return self._state_at(site_rank, _check_scaling(site_scaling, "site LoRA scaling"))

    def truncation_error(self, rank: int) -> dict[str, float]:
        """Per module, ``‖ΔW - s·B·A‖_F`` of the rank-``rank`` factors: ``sqrt(sum_{j>r} σ_j²)``.

        Raises
        ------
        RuntimeError
            Before :meth:`set_global` or :meth:`aggregate`.
        """
        self._require_global()
        return {
            prefix: float(torch.linalg.vector_norm(s[rank:]))
            for prefix, (_, s, _) in self._delta.items()
        }

    def site_payload_values(self, site_rank: int) -> int:
        """Values a site of rank ``site_rank`` receives (and sends) per round.

        ``site_rank · (d_in + d_out)`` per module plus every element of the non-factor
        tensors.

        Raises
        ------
        RuntimeError
            Before :meth:`set_global` or :meth:`aggregate`.
        """
        self._require_global()
        factors = sum(site_rank * (d_out + d_in) for d_out, d_in in self._shapes.values())
        return factors + sum(tensor.numel() for tensor in self._others.values())

    def _require_global(self) -> None:
        if not self._ready:
            raise RuntimeError("hetero-rank has no global adapter yet: call set_global first")

    def _adopt_template(self, state: AdapterState) -> None:
        modules = lora_modules(state)
        shapes: dict[str, tuple[int, int]] = {}
        for prefix, names in modules.items():
            d_out, d_in, rank = module_shape(state, names)
            check_rank(self.global_rank, d_out, d_in, module=prefix)
            if rank != self.global_rank:
                raise AdapterError(
                    f"global adapter has rank {rank} at LoRA module {prefix}, but the "
                    f"hetero-rank global rank is {self.global_rank}"
                )
            shapes[prefix] = (d_out, d_in)
        self._modules = modules
        self._shapes = shapes
        self._dtypes = {
            prefix: (state[a_name].dtype, state[b_name].dtype)
            for prefix, (a_name, b_name) in modules.items()
        }

    def _state_at(self, rank: int, scaling: float) -> AdapterState:
        generator = torch.Generator().manual_seed(self.seed)
        state: AdapterState = {}
        for prefix, (a_name, b_name) in self._modules.items():
            u, s, v = self._delta[prefix]
            d_out, d_in = self._shapes[prefix]
            b, a = truncate(u, s, v, rank, scaling, module=prefix)
            if self.fill_empty:
                live = min(rank, _numerical_rank(s, d_out, d_in))
                if live < rank:
                    b[:, live:] = 0.0
                    bound = 1.0 / math.sqrt(d_in)
                    noise = torch.rand(rank - live, d_in, generator=generator, dtype=_F64)
                    a[live:] = (2.0 * noise - 1.0) * bound
            a_dtype, b_dtype = self._dtypes[prefix]
            state[a_name] = a.to(a_dtype)
            state[b_name] = b.to(b_dtype)
        for name, tensor in self._others.items():
            state[name] = tensor.clone()
        return dict(sorted(state.items()))


def state_at_rank(
    global_state: AdapterState, *, global_rank: int, lora_alpha: float, rank: int, seed: int
) -> AdapterState:
    """A site's rank-``rank`` starting adapter cut from the rank-``global_rank`` global one.

    The site (to train from it) and the coordinator (to validate the site's update against
    it) compute the same state: the best rank-``rank`` factors of the global ``ΔW``, with
    empty directions filled from ``seed`` as :class:`HeteroRank` does.
    """
    if rank == global_rank:
        return global_state
    refactor = HeteroRank(global_rank, lora_alpha=lora_alpha, seed=seed)
    refactor.set_global(global_state)
    return refactor.site_state(rank)


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
