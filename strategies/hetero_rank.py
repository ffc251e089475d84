"""Federated LoRA with a different rank at every site, aggregated exactly and re-factorised by SVD.

Site ``i`` trains each module at its own rank ``r_i`` (``A_i``: ``r_i × d_in``, ``B_i``:
``d_out × r_i``) and scaling ``s_i`` (PEFT's ``lora_alpha / r_i``, or ``lora_alpha / √r_i``
with rsLoRA), so factors of different sites cannot be averaged entry by entry. What can be
averaged is the weight update each module applies. Per module, with ``w_i`` the example weights
(:func:`~fedlora.strategies.helpers.example_weights`), the exact aggregate is::

    ΔW = sum_i w_i s_i B_i A_i                                   (d_out × d_in)

computed from the factors only, as an SVD, and cut to any rank as the best approximation of
that rank (:mod:`fedlora.lora_rank`: :func:`factor_product`, :func:`truncate`; the maths a
site needs to cut its own rank lives there too, below both sides).

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

from collections.abc import Mapping

import torch

from fedlora.adapters import AdapterState, check_compatible
from fedlora.errors import AdapterError, ConfigError
from fedlora.lora_factors import is_lora_a, lora_modules, lora_scaling, module_shape, other_names
from fedlora.lora_rank import (
    ModuleTemplate,
    SvdFactors,
    check_rank,
    check_scaling,
    cut_factors,
    factor_product,
    product_of,
    state_at_rank,
    truncate,
)
from fedlora.strategies.base import SiteUpdate, Strategy, check_finite
from fedlora.strategies.helpers import example_weights, weighted_mean

__all__ = ["HeteroRank", "SvdFactors", "check_rank", "factor_product", "truncate"]


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
                site: check_scaling(value, f"LoRA scaling of site {site}")
                for site, value in site_scalings.items()
            }
        if global_scaling is None:
            if self.lora_alpha is None:
                raise ConfigError("hetero-rank with site_scalings needs a global_scaling")
            global_scaling = lora_scaling(self.lora_alpha, global_rank, use_rslora=use_rslora)
        self.global_scaling = check_scaling(global_scaling, "global LoRA scaling")
        self.fill_empty = fill_empty
        self.seed = seed
        self._template = ModuleTemplate(modules={}, shapes={}, dtypes={})
        self._delta: dict[str, SvdFactors] = {}
        self._others: AdapterState = {}
        self._ready = False
        self._references: dict[int, AdapterState] = {}
        self._references_of: AdapterState | None = None

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
        self._template = ModuleTemplate.of(state, self.global_rank)
        self._delta = product_of(state, self._template, self.global_scaling)
        self._others = {name: state[name].clone() for name in other_names(state)}
        self._ready = True

    def prepare(self, global_state: AdapterState) -> None:
        """Adopt the initial adapter (:meth:`set_global`), refusing a rank a module cannot have."""
        self.set_global(global_state)

    def update_reference(self, update: AdapterState, global_state: AdapterState) -> AdapterState:
        """The global adapter cut to the update's rank, as the site cut it to start from.

        A site of rank ``r`` sends factors of rank ``r``, measured from its best rank-``r``
        cut of the global adapter (:func:`fedlora.lora_rank.state_at_rank`; computed once per
        rank and global adapter). An update without one rank in ``[1, global_rank]`` is
        measured against the global adapter itself, whose layout it then fails to match.
        """
        ranks = {int(t.shape[0]) for name, t in update.items() if is_lora_a(name)}
        if self.lora_alpha is None or len(ranks) != 1:
            return global_state
        rank = ranks.pop()
        if not 1 <= rank <= self.global_rank:
            return global_state
        if self._references_of is not global_state:
            self._references_of, self._references = global_state, {}
        if rank not in self._references:
            self._references[rank] = state_at_rank(
                global_state,
                global_rank=self.global_rank,
                lora_alpha=self.lora_alpha,
                rank=rank,
                seed=self.seed,
            )
        return self._references[rank]

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
        self._template = ModuleTemplate.of(global_state, self.global_rank)
        template = self._template
        weights = example_weights(updates)
        global_others = {name: global_state[name] for name in other_names(global_state)}
        per_module: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {
            prefix: [] for prefix in template.modules
        }
        coefficients: dict[str, list[float]] = {prefix: [] for prefix in template.modules}
        for update, weight in zip(updates, weights, strict=True):
            try:
                modules = lora_modules(update.state)
            except AdapterError as exc:
                raise AdapterError(f"site {update.site}: {exc}") from None
            if set(modules) != set(template.modules):
                missing = sorted(set(template.modules) - set(modules))
                unexpected = sorted(set(modules) - set(template.modules))
                raise AdapterError(
                    f"site {update.site}: LoRA modules do not match the global adapter: "
                    f"missing {missing[:3]}, unexpected {unexpected[:3]}"
                )
            for prefix, names in modules.items():
                d_out, d_in, rank = module_shape(update.state, names)
                if (d_out, d_in) != template.shapes[prefix]:
                    raise AdapterError(
                        f"site {update.site}: LoRA module {prefix} is {d_out} × {d_in}, "
                        f"expected {template.shapes[prefix][0]} × {template.shapes[prefix][1]}"
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
            for prefix in template.modules
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
        return self._state_at(site_rank, check_scaling(site_scaling, "site LoRA scaling"))

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
        factors = sum(site_rank * (d_out + d_in) for d_out, d_in in self._template.shapes.values())
        return factors + sum(tensor.numel() for tensor in self._others.values())

    def _require_global(self) -> None:
        if not self._ready:
            raise RuntimeError("hetero-rank has no global adapter yet: call set_global first")

    def _state_at(self, rank: int, scaling: float) -> AdapterState:
        state = cut_factors(
            self._delta, self._template, rank, scaling, fill_empty=self.fill_empty, seed=self.seed
        )
        for name, tensor in self._others.items():
            state[name] = tensor.clone()
        return dict(sorted(state.items()))
