"""Typed run configuration, parsed once from Flower's flat kebab-case run config.

The same :class:`RunConfig` serves ``fedlora simulate`` (built from CLI flags), ``flwr run .``
(built from ``[tool.flwr.app.config]`` plus ``--run-config`` overrides) and the testing
helpers. Impossible values raise :class:`~fedlora.errors.ConfigError` at construction; unknown
keys in a flat config are an error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar, cast, get_args

from fedlora.errors import ConfigError

logger = logging.getLogger(__name__)

Task = Literal["sft", "classification"]
OptimizerName = Literal["adamw", "sgd"]
DeviceChoice = Literal["auto", "cpu", "cuda"]
Bf16Choice = Literal["auto", "on", "off"]
AccountantChoice = Literal["prv", "rdp"]
DpMode = Literal["hooks", "ghost"]
CentralDpMode = Literal["off", "fixed", "adaptive"]

DEFAULT_TARGET_EPSILON = 4.0
DEFAULT_PROXIMAL_MU = 0.01
_Value = TypeVar("_Value", int, float)
"""Per-run ε a site aims for when it gives neither a noise multiplier nor a target."""

FlatValue = bool | int | float | str

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
_UPPER_BOUNDS: dict[str, tuple[int, str]] = {
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
_MAY_BE_INFINITE = frozenset({"alpha", "node_wait_timeout", "round_timeout"})


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class RunConfig:
    """Everything a federated run needs, validated.

    Attributes mirror the kebab-case keys of ``[tool.flwr.app.config]`` (``lora_r`` is
    ``lora-r``). List-valued settings (``lora_targets``, ``labels``, ``data_files``,
    ``test_files``) are comma-separated strings in the flat form.
    """

    scenario: str = "hospitals"
    task: Task = "sft"
    model: str = "tiny-llama"
    rounds: int = 3
    sites: int = 0
    alpha: float = 0.5
    examples_per_site: int = 120
    test_fraction: float = 0.2
    data_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    lr: float = 0.01
    local_epochs: int = 1
    batch_size: int = 16
    max_steps: int = 0
    optimizer: OptimizerName = "adamw"
    strategy: str = "fedavg"
    proximal_mu: float = -1.0
    server_lr: float = -1.0
    server_momentum: float = 0.9
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_tau: float = 1e-9
    trim_fraction: float = 0.1
    krum_byzantine: int = 0
    krum_selected: int = 0
    update_norm_bound: float = 0.0
    min_fit: int = 1
    round_retries: int = 0
    site_ranks: tuple[str, ...] = ()
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()
    max_length: int = 128
    seed: int = 0
    dp: bool = True
    noise_multiplier: float = -1.0
    target_epsilon: float = 0.0
    delta: float = 0.0
    max_grad_norm: float = 1.0
    budget_epsilon: float = 10.0
    site_budgets: tuple[str, ...] = ()
    accountant: AccountantChoice = "prv"
    dp_mode: DpMode = "hooks"
    secure_rng: bool = False
    ledger_root: str = ""
    new_ledger: bool = False
    fit_budget: bool = False
    central_dp: CentralDpMode = "off"
    central_noise_multiplier: float = 1.0
    central_clip_norm: float = 0.1
    central_delta: float = 0.0
    out: str = "runs"
    resume: str = ""
    device: DeviceChoice = "auto"
    bf16: Bf16Choice = "auto"
    gradient_checkpointing: bool = False
    client_cpus: float = 1.0
    client_gpus: float = -1.0
    node_wait_timeout: float = 120.0
    round_timeout: float = 3600.0
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._check_numbers()
        _check_choice("task", self.task, Task)
        _check_choice("optimizer", self.optimizer, OptimizerName)
        _check_choice("device", self.device, DeviceChoice)
        _check_choice("bf16", self.bf16, Bf16Choice)
        _check_at_least("rounds", self.rounds, 1)
        if isinstance(self.sites, bool) or not isinstance(self.sites, int) or self.sites < 0:
            raise ConfigError(
                f"sites must be >= 1 (0 means the scenario's default), got {self.sites}"
            )
        if self.sites == 0 and self.data_files:
            object.__setattr__(self, "sites", len(self.data_files))
        if not (self.alpha > 0 and not math.isnan(self.alpha)):
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        _check_at_least("examples-per-site", self.examples_per_site, 5)
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test-fraction must be in (0, 1), got {self.test_fraction}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        _check_at_least("local-epochs", self.local_epochs, 1)
        _check_at_least("batch-size", self.batch_size, 1)
        _check_at_least("max-steps", self.max_steps, 0)
        _check_at_least("lora-r", self.lora_r, 1)
        _check_at_least("lora-alpha", self.lora_alpha, 1)
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora-dropout must be in [0, 1), got {self.lora_dropout}")
        _check_at_least("max-length", self.max_length, 8)
        if self.client_cpus <= 0:
            raise ConfigError(f"client-cpus must be > 0, got {self.client_cpus}")
        if self.client_gpus != -1.0 and not 0 <= self.client_gpus <= 1:
            raise ConfigError(
                f"client-gpus must be a fraction in [0, 1] (or -1 for auto), got {self.client_gpus}"
            )
        if self.node_wait_timeout <= 0 or self.round_timeout <= 0:
            raise ConfigError("node-wait-timeout and round-timeout must be > 0")
        if self.test_files and len(self.test_files) != len(self.data_files):
            raise ConfigError(
                f"test-files must name one file per data file: got {len(self.test_files)} "
                f"test files for {len(self.data_files)} data files"
            )
        if self.data_files and self.sites != len(self.data_files):
            raise ConfigError(
                f"sites is {self.sites} but {len(self.data_files)} data files were given; "
                "with your own data there is one site per file"
            )
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"labels contain duplicates: {', '.join(self.labels)}")
        self._check_sizes()
        if self.resume:
            check_run_id(self.resume, key="resume")
        self._check_aggregation()
        self._check_privacy()
        if self.extra:
            raise ConfigError(f"unknown config key(s): {', '.join(sorted(self.extra))}")

    def _check_numbers(self) -> None:
        """Refuse NaN anywhere and infinity where it makes no sense (every float but a few)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type != "float" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isnan(value) or (math.isinf(value) and f.name not in _MAY_BE_INFINITE):
                raise ConfigError(f"{_key(f.name)} must be a finite number, got {value}")

    def _check_sizes(self) -> None:
        """Upper bounds of the size settings, so absurd sizes fail now, not out of memory."""
        for name, (maximum, why) in _UPPER_BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, int) and value > maximum:
                raise ConfigError(f"{_key(name)} must be <= {maximum:,}, got {value:,}: {why}")
        if self.batch_size * self.max_length > MAX_BATCH_TOKENS:
            raise ConfigError(
                f"batch-size × max-length must be <= {MAX_BATCH_TOKENS:,} tokens, got "
                f"{self.batch_size * self.max_length:,}: a batch is padded into one tensor in "
                "memory"
            )
        scenario_examples = self.sites * self.examples_per_site
        if not self.uses_own_data and scenario_examples > MAX_SCENARIO_EXAMPLES:
            raise ConfigError(
                f"sites × examples-per-site must be <= {MAX_SCENARIO_EXAMPLES:,} for a built-in "
                f"scenario, got {scenario_examples:,}: scenario data are generated in memory"
            )

    def _check_aggregation(self) -> None:
        # Ranges the strategies need are checked when the strategy is built (before any
        # training: fedlora.strategies.registry.build_strategy); these are the round loop's own.
        if self.proximal_mu != -1.0:
            if not (self.proximal_mu >= 0 and math.isfinite(self.proximal_mu)):
                raise ConfigError(f"proximal-mu must be >= 0, got {self.proximal_mu}")
            if self.strategy != "fedprox":
                raise ConfigError(f"proximal-mu applies to strategy fedprox, not {self.strategy!r}")
        if not (self.update_norm_bound >= 0 and math.isfinite(self.update_norm_bound)):
            raise ConfigError(
                "update-norm-bound must be >= 0 (0: only the built-in limit), "
                f"got {self.update_norm_bound}"
            )
        _check_at_least("min-fit", self.min_fit, 1)
        _check_at_least("round-retries", self.round_retries, 0)
        ranks = self.site_rank_map
        if ranks and self.strategy != "hetero-rank":
            raise ConfigError(
                f"site-ranks gives sites their own LoRA ranks; strategy {self.strategy!r} cannot "
                "aggregate mixed ranks (use hetero-rank)"
            )
        for site, rank in ranks.items():
            if not 1 <= rank <= self.lora_r:
                raise ConfigError(
                    f"site-ranks: rank of {site} must be in [1, lora-r = {self.lora_r}], got {rank}"
                )
        if self.sites and self.min_fit > self.sites:
            raise ConfigError(
                f"min-fit is {self.min_fit} but the federation has {self.sites} sites"
            )

    @property
    def effective_proximal_mu(self) -> float:
        """FedProx's μ for the sites: ``proximal-mu``, 0.01 when unset, 0 for other strategies."""
        if self.strategy != "fedprox":
            return 0.0
        return DEFAULT_PROXIMAL_MU if self.proximal_mu == -1.0 else self.proximal_mu

    def _check_privacy(self) -> None:
        _check_choice("accountant", self.accountant, AccountantChoice)
        _check_choice("dp-mode", self.dp_mode, DpMode)
        _check_choice("central-dp", self.central_dp, CentralDpMode)
        if self.noise_multiplier != -1.0 and not (
            self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)
        ):
            raise ConfigError(f"noise-multiplier must be >= 0, got {self.noise_multiplier}")
        if not (self.target_epsilon >= 0 and math.isfinite(self.target_epsilon)):
            raise ConfigError(f"target-epsilon must be > 0, got {self.target_epsilon}")
        if self.noise_multiplier >= 0 and self.target_epsilon > 0:
            raise ConfigError("give either noise-multiplier or target-epsilon, not both")
        if self.delta != 0 and not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ConfigError(f"max-grad-norm must be > 0, got {self.max_grad_norm}")
        if not self.budget_epsilon > 0:
            raise ConfigError(f"budget-epsilon must be > 0, got {self.budget_epsilon}")
        for site, budget in self.site_budget_map.items():
            if budget > 0:
                continue
            raise ConfigError(f"site-budgets: budget of {site} must be > 0, got {budget}")
        if self.central_noise_multiplier < 0:
            raise ConfigError(
                f"central-noise-multiplier must be >= 0, got {self.central_noise_multiplier}"
            )
        if not self.central_clip_norm > 0:
            raise ConfigError(f"central-clip-norm must be > 0, got {self.central_clip_norm}")
        if self.central_delta != 0 and not 0 < self.central_delta < 1:
            raise ConfigError(f"central-delta must be in (0, 1), got {self.central_delta}")

    @property
    def site_budget_map(self) -> dict[str, float]:
        """Per-site budget overrides from ``site-budgets`` (``name=epsilon`` items)."""
        return _named_values(self.site_budgets, "site-budgets", "epsilon", float)

    @property
    def site_rank_map(self) -> dict[str, int]:
        """Per-site LoRA ranks from ``site-ranks`` (``name=rank`` items; hetero-rank)."""
        return _named_values(self.site_ranks, "site-ranks", "rank", int)

    @property
    def uses_own_data(self) -> bool:
        """True when sites read the user's files rather than a built-in scenario."""
        return bool(self.data_files)

    @classmethod
    def from_flat(cls, flat: Mapping[str, FlatValue]) -> RunConfig:
        """Parse a flat kebab-case mapping (Flower run config) into a validated config.

        Parameters
        ----------
        flat
            Keys as in ``[tool.flwr.app.config]``; values bool, int, float or str.

        Returns
        -------
        RunConfig
            The validated configuration.

        Raises
        ------
        ConfigError
            For an unknown key, a value of the wrong type, or an impossible value.
        """
        by_key = {f.name.replace("_", "-"): f for f in fields(cls) if f.name != "extra"}
        unknown = sorted(set(flat) - set(by_key))
        if unknown:
            valid = ", ".join(sorted(by_key))
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)} (valid keys: {valid})")
        defaults = cls()
        kwargs: dict[str, Any] = {}
        for key, value in flat.items():
            name = by_key[key].name
            kwargs[name] = _coerce(key, value, getattr(defaults, name))
        return cls(**kwargs)

    def to_flat(self) -> dict[str, FlatValue]:
        """Return the flat kebab-case form, the inverse of :meth:`from_flat`."""
        flat: dict[str, FlatValue] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            flat[f.name.replace("_", "-")] = ",".join(value) if isinstance(value, tuple) else value
        return flat

    def replace(self, **changes: Any) -> RunConfig:
        """Return a copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)


def _coerce(key: str, value: FlatValue, default: Any) -> Any:
    if isinstance(default, tuple):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a comma-separated string, got {value!r}")
        return _split_list(value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    return str(value)


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


def _key(name: str) -> str:
    return name.replace("_", "-")


def _check_choice(key: str, value: object, choices: object) -> None:
    valid = cast(tuple[str, ...], get_args(choices))
    if value not in valid:
        raise ConfigError(f"{key} must be one of {', '.join(valid)}, got {value!r}")


def _check_at_least(key: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")


def _named_values(
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
