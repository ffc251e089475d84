"""Strategies by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedlora.config import RunConfig
from fedlora.errors import ConfigError
from strategies.base import Strategy
from strategies.central_dp import CentralDP
from strategies.fedavg import FedAvg

_STRATEGIES: dict[str, Callable[[], Strategy]] = {"fedavg": FedAvg}


def strategy_names() -> tuple[str, ...]:
    """Names accepted by :func:`get_strategy`."""
    return tuple(sorted(_STRATEGIES))


def get_strategy(name: str) -> Strategy:
    """Build the strategy called ``name``.

    Raises
    ------
    ConfigError
        For an unknown name, listing the valid ones.
    """
    try:
        return _STRATEGIES[name]()
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; valid: {', '.join(strategy_names())}"
        ) from None


def wrap_with_central_dp(
    strategy: Strategy,
    config: RunConfig,
    sites: int,
    *,
    ledger_path: Path | None = None,
    seed: int | None = None,
) -> Strategy:
    """Wrap ``strategy`` in :class:`~strategies.central_dp.CentralDP` as ``config`` asks.

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
        Passed on to :class:`~strategies.central_dp.CentralDP`.

    Returns
    -------
    Strategy
        ``strategy`` itself when ``central-dp`` is ``off``, else the wrapper.

    Raises
    ------
    ConfigError
        For settings central DP cannot run with (see :class:`~strategies.central_dp.CentralDP`).
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
