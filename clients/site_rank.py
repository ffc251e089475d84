"""A site's own LoRA rank under the hetero-rank strategy.

A site declares its rank in its node config (``lora-rank``, from ``[site] lora-rank`` of its
``site.toml``) or, in a simulation, in the run config's ``site-ranks`` (``name=rank`` items);
otherwise it uses the run's ``lora-r``. The coordinator sends every site the same global
adapter at ``lora-r`` (the top ``lora-r`` SVD factors of the exact aggregate ``ΔW``); a site of
rank ``r < lora-r`` cuts it to its best rank-``r`` factors here, which equals what cutting
``ΔW`` itself would give (truncated SVDs are nested), and trains and sends those.
"""

from __future__ import annotations

import dataclasses

from flwr.app import Context

from fedlora.adapters import AdapterState
from fedlora.config import RunConfig
from fedlora.errors import ConfigError
from fedlora.lora_rank import site_state_for_config


def site_rank(context: Context, config: RunConfig, site: str) -> int:
    """The site's LoRA rank (node config, then ``site-ranks``, then ``lora-r``).

    Raises
    ------
    ConfigError
        For a rank that is not an integer in ``[1, lora-r]``, or a rank other than ``lora-r``
        under a strategy that cannot aggregate mixed ranks.
    """
    raw = context.node_config.get("lora-rank", config.site_rank_map.get(site, config.lora_r))
    rank = float(raw)
    if rank != int(rank) or not 1 <= rank <= config.lora_r:
        raise ConfigError(
            f"site {site}: lora-rank must be an integer in [1, lora-r = {config.lora_r}], got {raw}"
        )
    if int(rank) != config.lora_r and config.strategy != "hetero-rank":
        raise ConfigError(
            f"site {site} has lora-rank {int(rank)} but the run's lora-r is {config.lora_r}; "
            f"strategy {config.strategy!r} cannot aggregate mixed ranks (use hetero-rank)"
        )
    return int(rank)


def config_for_rank(config: RunConfig, rank: int) -> RunConfig:
    """The run config with this site's rank (what its model is built with)."""
    if rank == config.lora_r:
        return config
    # The other sites' ranks may exceed this one: they are no part of this site's model.
    return dataclasses.replace(config, lora_r=rank, site_ranks=())


def adapter_for_rank(global_state: AdapterState, config: RunConfig, rank: int) -> AdapterState:
    """The site's starting adapter: the global one cut to its best rank-``rank`` factors."""
    return site_state_for_config(global_state, config, rank)
