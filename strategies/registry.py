"""Strategies by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedlora.config import RunConfig
from fedlora.errors import ConfigError
from fedlora.strategies.base import Strategy
from fedlora.strategies.central_dp import CentralDP
from fedlora.strategies.fedadam import FedAdam
from fedlora.strategies.fedavg import FedAvg
from fedlora.strategies.fedavgm import FedAvgM
from fedlora.strategies.fedprox import FedProx
from fedlora.strategies.fedyogi import FedYogi
from fedlora.strategies.ffa_lora import FfaLora
from fedlora.strategies.hetero_rank import HeteroRank
from fedlora.strategies.krum import Krum
from fedlora.strategies.median import CoordinateMedian
from fedlora.strategies.trimmed_mean import TrimmedMean


def _server_lr(config: RunConfig, default: float) -> float:
    return default if config.server_lr is None else config.server_lr


def _multi_krum(config: RunConfig, sites: int) -> Strategy:
    selected = config.krum_selected or max(2, sites - config.krum_byzantine)
    return Krum(byzantine=config.krum_byzantine, multi=selected)


_BUILDERS: dict[str, Callable[[RunConfig, int], Strategy]] = {
    "fedavg": lambda config, sites: FedAvg(),
    "fedprox": lambda config, sites: FedProx(config.effective_proximal_mu),
    "fedadam": lambda config, sites: FedAdam(
        server_lr=_server_lr(config, 0.01),
        beta1=config.server_beta1,
        beta2=config.server_beta2,
        tau=config.server_tau,
    ),
    "fedyogi": lambda config, sites: FedYogi(
        server_lr=_server_lr(config, 0.01),
        beta1=config.server_beta1,
        beta2=config.server_beta2,
        tau=config.server_tau,
    ),
    "fedavgm": lambda config, sites: FedAvgM(
        server_lr=_server_lr(config, 1.0), momentum=config.server_momentum
    ),
    "median": lambda config, sites: CoordinateMedian(),
    "trimmed-mean": lambda config, sites: TrimmedMean(config.trim_fraction),
    "krum": lambda config, sites: Krum(byzantine=config.krum_byzantine, multi=1),
    "multi-krum": _multi_krum,
    "ffa-lora": lambda config, sites: FfaLora(),
    "hetero-rank": lambda config, sites: HeteroRank(
        config.lora_r, lora_alpha=config.lora_alpha, seed=config.seed
    ),
}


def strategy_names() -> tuple[str, ...]:
    """Names accepted by :func:`get_strategy` and :func:`build_strategy`."""
    return tuple(sorted(_BUILDERS))


def build_strategy(config: RunConfig, sites: int | None = None) -> Strategy:
    """Build the strategy ``config.strategy`` with the run config's settings.

    Parameters
    ----------
    config
        Supplies the name and the strategy's settings (``server-lr``, ``trim-fraction``, ...).
    sites
        Sites in the federation (default ``config.sites``); Multi-Krum's default selection.

    Raises
    ------
    ConfigError
        For an unknown name (listing the valid ones) or a setting the strategy refuses
        (e.g. a server learning rate <= 0, a trim fraction outside [0, 0.5)).
    """
    try:
        builder = _BUILDERS[config.strategy]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {config.strategy!r}; valid: {', '.join(strategy_names())}"
        ) from None
    count = config.sites if sites is None else sites
    if config.strategy == "krum" and config.krum_selected not in (0, 1):
        raise ConfigError("krum selects one update; use multi-krum with krum-selected")
    if config.strategy in ("krum", "multi-krum") and count < 2 * config.krum_byzantine + 3:
        raise ConfigError(
            f"{config.strategy} with krum-byzantine = {config.krum_byzantine} needs at least "
            f"{2 * config.krum_byzantine + 3} sites, the federation has {count}"
        )
    return builder(config, count)


def get_strategy(name: str) -> Strategy:
    """Build the strategy called ``name`` with default settings.

    Raises
    ------
    ConfigError
        For an unknown name, listing the valid ones.
    """
    return build_strategy(RunConfig(strategy=name, sites=5))


def strategy_for_run(config: RunConfig) -> Strategy:
    """The strategy a run aggregates with: :func:`build_strategy`, in central DP as asked.

    The one place a run's strategy is built. The simulation harness calls it before any data
    is generated (a bad setting costs nothing) and hands the strategy to the federation; a
    deployment's coordinator has the federation call it.

    Raises
    ------
    ConfigError
        For an unknown name or a setting the strategy or central DP refuses.
    """
    return wrap_with_central_dp(build_strategy(config), config, config.sites)


def wrap_with_central_dp(
    strategy: Strategy,
    config: RunConfig,
    sites: int,
    *,
    ledger_path: Path | None = None,
    seed: int | None = None,
) -> Strategy:
    """Wrap ``strategy`` in :class:`~fedlora.strategies.central_dp.CentralDP` as ``config`` asks.

    Parameters
    ----------
    strategy
        The strategy chosen by name (it must average like fedavg when central DP is on).
    config
        Supplies ``central-dp``, ``central-noise-multiplier``, ``central-clip-norm`` (the
        initial norm in adaptive mode) and ``central-delta`` (0: ``1 / (10 sites)``).
    sites
        The number of sites in the federation; all of them are sampled every round.
    ledger_path, seed
        Passed on to :class:`~fedlora.strategies.central_dp.CentralDP`.

    Returns
    -------
    Strategy
        ``strategy`` itself when ``central-dp`` is ``off``, else the wrapper.

    Raises
    ------
    ConfigError
        For settings central DP cannot run with (see
        :class:`~fedlora.strategies.central_dp.CentralDP`).
    """
    if config.central_dp == "off":
        return strategy
    return CentralDP(
        strategy,
        mode=config.central_dp,
        noise_multiplier=config.central_noise_multiplier,
        clip_norm=config.central_clip_norm,
        sites=sites,
        delta=config.central_delta,
        ledger_path=ledger_path,
        seed=seed,
    )
