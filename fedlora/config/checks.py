"""The checks a :class:`~fedlora.config.RunConfig` passes at construction.

Impossible values raise :class:`~fedlora.errors.ConfigError` naming the kebab-case key; the
ranges a strategy needs are checked when the strategy is built
(:func:`fedlora.strategies.registry.build_strategy`), before any training.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast, get_args

from fedlora.config.flat import key_of
from fedlora.errors import ConfigError

if TYPE_CHECKING:
    from fedlora.config.settings import RunConfig

_Value = TypeVar("_Value", int, float)

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
"""A run id names one folder under ``out``: a letter or digit first, then letters, digits,
``. _ + -``, at most 128 characters and never ``..`` -- so it cannot climb out of ``out``, hide
as a dot file or name a path."""

MAX_SCENARIO_EXAMPLES = 1_000_000
"""Largest ``sites × examples-per-site`` of a built-in scenario (generated in memory)."""

MAX_LENGTH_LIMIT = 32_768
"""Largest ``max-length`` (tokens per example)."""

MAX_BATCH_TOKENS = 1 << 24
"""Largest ``batch-size × max-length``: a batch is padded into one tensor in memory."""

# Upper bounds of the size settings, with the reason each message gives. Sizes beyond these
# only exhaust memory or disk; refusing them at once beats dying of them later.
UPPER_BOUNDS: dict[str, tuple[int, str]] = {
    "rounds": (100_000, "each round writes an adapter checkpoint to the run directory"),
    "sites": (1_000, "the coordinator messages every site each round; a simulation runs them all"),
    "examples_per_site": (1_000_000, "scenario data are generated in memory"),
    "local_epochs": (1_000, "every epoch is a full pass over the site's data each round"),
    "batch_size": (65_536, "a batch is padded into one tensor in memory"),
    "max_steps": (1_000_000, "local steps are run one after another each round"),
    "lora_r": (4_096, "adapter matrices grow with the rank; beyond this it is not low-rank"),
    "max_length": (MAX_LENGTH_LIMIT, "examples are tokenised and padded up to this many tokens"),
    "min_fit": (1_000, "it cannot exceed the number of sites"),
    "round_retries": (100, "each retry repeats a whole round"),
    "krum_byzantine": (1_000, "it cannot exceed the number of sites"),
    "krum_selected": (1_000, "it cannot exceed the number of sites"),
}

# Float settings for which infinity means something: an even split, waiting without a limit.
MAY_BE_INFINITE = frozenset({"alpha", "node_wait_timeout", "round_timeout"})


def check_basics(config: RunConfig) -> None:
    """Data, training and model settings."""
    if not (config.alpha > 0 and not math.isnan(config.alpha)):
        raise ConfigError(f"alpha must be > 0, got {config.alpha}")
    check_at_least("examples-per-site", config.examples_per_site, 5)
    if not 0 < config.test_fraction < 1:
        raise ConfigError(f"test-fraction must be in (0, 1), got {config.test_fraction}")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ConfigError(f"lr must be > 0, got {config.lr}")
    check_at_least("local-epochs", config.local_epochs, 1)
    check_at_least("batch-size", config.batch_size, 1)
    check_at_least("max-steps", config.max_steps, 0)
    check_at_least("lora-r", config.lora_r, 1)
    check_at_least("lora-alpha", config.lora_alpha, 1)
    if not 0 <= config.lora_dropout < 1:
        raise ConfigError(f"lora-dropout must be in [0, 1), got {config.lora_dropout}")
    check_at_least("max-length", config.max_length, 8)
    if config.client_cpus <= 0:
        raise ConfigError(f"client-cpus must be > 0, got {config.client_cpus}")
    if config.client_gpus is not None and not 0 <= config.client_gpus <= 1:
        raise ConfigError(
            f'client-gpus must be a fraction in [0, 1] (or "auto"), got {config.client_gpus}'
        )
    if config.node_wait_timeout <= 0 or config.round_timeout <= 0:
        raise ConfigError("node-wait-timeout and round-timeout must be > 0")
    if config.test_files and len(config.test_files) != len(config.data_files):
        raise ConfigError(
            f"test-files must name one file per data file: got {len(config.test_files)} "
            f"test files for {len(config.data_files)} data files"
        )
    if config.data_files and config.sites != len(config.data_files):
        raise ConfigError(
            f"sites is {config.sites} but {len(config.data_files)} data files were given; "
            "with your own data there is one site per file"
        )
    if len(set(config.labels)) != len(config.labels):
        raise ConfigError(f"labels contain duplicates: {', '.join(config.labels)}")


def check_sizes(config: RunConfig) -> None:
    """Upper bounds of the size settings, so absurd sizes fail now, not out of memory."""
    for name, (maximum, why) in UPPER_BOUNDS.items():
        value = getattr(config, name)
        if isinstance(value, int) and value > maximum:
            raise ConfigError(f"{key_of(name)} must be <= {maximum:,}, got {value:,}: {why}")
    if config.batch_size * config.max_length > MAX_BATCH_TOKENS:
        raise ConfigError(
            f"batch-size × max-length must be <= {MAX_BATCH_TOKENS:,} tokens, got "
            f"{config.batch_size * config.max_length:,}: a batch is padded into one tensor in "
            "memory"
        )
    scenario_examples = config.sites * config.examples_per_site
    if not config.uses_own_data and scenario_examples > MAX_SCENARIO_EXAMPLES:
        raise ConfigError(
            f"sites × examples-per-site must be <= {MAX_SCENARIO_EXAMPLES:,} for a built-in "
            f"scenario, got {scenario_examples:,}: scenario data are generated in memory"
        )


def check_aggregation(config: RunConfig) -> None:
    """The round loop's own settings (the strategies check theirs when built)."""
    if config.proximal_mu is not None:
        if not (config.proximal_mu >= 0 and math.isfinite(config.proximal_mu)):
            raise ConfigError(f"proximal-mu must be >= 0, got {config.proximal_mu}")
        if config.strategy != "fedprox":
            raise ConfigError(f"proximal-mu applies to strategy fedprox, not {config.strategy!r}")
    if not (config.update_norm_bound >= 0 and math.isfinite(config.update_norm_bound)):
        raise ConfigError(
            "update-norm-bound must be >= 0 (0: only the built-in limit), "
            f"got {config.update_norm_bound}"
        )
    check_at_least("min-fit", config.min_fit, 1)
    check_at_least("round-retries", config.round_retries, 0)
    ranks = config.site_rank_map
    if ranks and config.strategy != "hetero-rank":
        raise ConfigError(
            f"site-ranks gives sites their own LoRA ranks; strategy {config.strategy!r} cannot "
            "aggregate mixed ranks (use hetero-rank)"
        )
    for site, rank in ranks.items():
        if not 1 <= rank <= config.lora_r:
            raise ConfigError(
                f"site-ranks: rank of {site} must be in [1, lora-r = {config.lora_r}], got {rank}"
            )
    if config.sites and config.min_fit > config.sites:
        raise ConfigError(
            f"min-fit is {config.min_fit} but the federation has {config.sites} sites"
        )
    if config.secure_aggregation:
        check_secure_aggregation(config)


NEEDS_INDIVIDUAL_UPDATES = {
    "median": "a coordinate-wise median",
    "trimmed-mean": "a coordinate-wise trimmed mean",
    "krum": "distances between the sites' updates",
    "multi-krum": "distances between the sites' updates",
    "hetero-rank": "each site's own B·A product",
}
"""Strategies that need every site's update and so cannot run on a secure sum, with why."""


SECURE_ADAPTIVE_REFUSAL = (
    "secure-aggregation cannot run central-dp=adaptive: adaptive clipping needs whether each "
    "site's update was clipped, which the coordinator would see in clear; use central-dp=fixed"
)
"""Central DP with secure aggregation: the sites clip before masking, at a fixed norm only."""


def check_secure_aggregation(config: RunConfig) -> None:
    """Secure aggregation's settings, and the strategies and options it cannot serve."""
    if config.strategy in NEEDS_INDIVIDUAL_UPDATES:
        raise ConfigError(
            f"secure-aggregation cannot run strategy {config.strategy}: it needs "
            f"{NEEDS_INDIVIDUAL_UPDATES[config.strategy]}, and the coordinator sees only the sum"
        )
    if config.central_dp == "adaptive":
        raise ConfigError(SECURE_ADAPTIVE_REFUSAL)
    if config.sites == 1:
        raise ConfigError("secure-aggregation needs at least 2 sites: one site's sum is its update")
    threshold = config.secure_aggregation_threshold
    if threshold != 0 and not 2 <= threshold <= max(config.sites, 2):
        raise ConfigError(
            f"secure-aggregation-threshold must be 0 (a majority) or 2..sites, got {threshold}"
        )
    if not (config.secure_aggregation_range > 0 and math.isfinite(config.secure_aggregation_range)):
        raise ConfigError(
            f"secure-aggregation-range must be > 0, got {config.secure_aggregation_range}"
        )


def check_privacy(config: RunConfig) -> None:
    """Local (DP-SGD) and central DP settings."""
    sigma, target = config.noise_multiplier, config.target_epsilon
    if sigma is not None and not (sigma >= 0 and math.isfinite(sigma)):
        raise ConfigError(f"noise-multiplier must be >= 0, got {sigma}")
    if target is not None and not (target > 0 and math.isfinite(target)):
        raise ConfigError(f"target-epsilon must be > 0, got {target}")
    if sigma is not None and target is not None:
        raise ConfigError("give either noise-multiplier or target-epsilon, not both")
    if config.delta is not None and not 0 < config.delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {config.delta}")
    if not (config.max_grad_norm > 0 and math.isfinite(config.max_grad_norm)):
        raise ConfigError(f"max-grad-norm must be > 0, got {config.max_grad_norm}")
    if not config.budget_epsilon > 0:
        raise ConfigError(f"budget-epsilon must be > 0, got {config.budget_epsilon}")
    for site, budget in config.site_budget_map.items():
        if budget > 0:
            continue
        raise ConfigError(f"site-budgets: budget of {site} must be > 0, got {budget}")
    if config.central_noise_multiplier < 0:
        raise ConfigError(
            f"central-noise-multiplier must be >= 0, got {config.central_noise_multiplier}"
        )
    if not config.central_clip_norm > 0:
        raise ConfigError(f"central-clip-norm must be > 0, got {config.central_clip_norm}")
    if config.central_delta is not None and not 0 < config.central_delta < 1:
        raise ConfigError(f"central-delta must be in (0, 1), got {config.central_delta}")


def check_run_id(run_id: str, *, key: str = "run-id") -> str:
    """Return ``run_id`` when it is a safe run directory name (:data:`RUN_ID_PATTERN`).

    ``fedlora simulate --run-id``, ``--resume`` and the ``resume`` key all name a folder
    under ``out``; a separator, ``..`` or a leading dot would write elsewhere.

    Raises
    ------
    ConfigError
        Naming the key, the value and what a run id may hold.
    """
    if RUN_ID_PATTERN.fullmatch(run_id) is None or ".." in run_id:
        raise ConfigError(
            f"{key} {run_id!r} is not a valid run id: use 1-128 letters, digits, '.', '_', "
            "'+' or '-', starting with a letter or digit, without '..' (it names a folder "
            "under out)"
        )
    return run_id


def check_choice(key: str, value: object, choices: object) -> None:
    """Refuse ``value`` unless it is one of the ``Literal`` type ``choices``."""
    valid = cast(tuple[str, ...], get_args(choices))
    if value not in valid:
        raise ConfigError(f"{key} must be one of {', '.join(valid)}, got {value!r}")


def check_at_least(key: str, value: int, minimum: int) -> None:
    """Refuse a non-integer ``value`` or one below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")


def named_values(
    items: tuple[str, ...], key: str, what: str, parse: Callable[[str], _Value]
) -> dict[str, _Value]:
    """``name=value`` items (``site-budgets``, ``site-ranks``) as a mapping.

    Raises
    ------
    ConfigError
        For an item without a name, an ``=`` or a parsable value.
    """
    values: dict[str, _Value] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError(item)
            values[name.strip()] = parse(value)
        except ValueError:
            raise ConfigError(f"{key} items must be name={what}, got {item!r}") from None
    return values
