"""The run configuration: one dataclass, the single source of truth for every setting.

Each field carries its help (``metadata["help"]``), its choices (a ``Literal`` type) and its
default; ``None`` means "worked out at run time" (``"auto"`` in the flat form,
:mod:`fedlora.config.flat`). ``fedlora simulate``'s flags (:mod:`fedlora.cli.flags`),
``docs/configuration.md`` (:mod:`fedlora.cli.config_doc`) and ``[tool.flwr.app.config]`` in
``pyproject.toml`` are generated from or checked against it (``tests/unit/test_config_doc.py``).
"""

# ruff: noqa: RUF009 -- _setting is dataclasses.field with the help attached, evaluated once
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any, Literal, get_type_hints

from fedlora.config.checks import (
    MAY_BE_INFINITE,
    check_aggregation,
    check_basics,
    check_privacy,
    check_run_id,
    check_sizes,
    named_values,
)
from fedlora.config.flat import FieldKind, FlatValue, key_of, to_flat_value, upgrade_legacy
from fedlora.errors import ConfigError

Task = Literal["sft", "classification"]
OptimizerName = Literal["adamw", "sgd"]
DeviceChoice = Literal["auto", "cpu", "cuda"]
Bf16Choice = Literal["auto", "on", "off"]
AccountantChoice = Literal["prv", "rdp"]
DpMode = Literal["hooks", "ghost"]
CentralDpMode = Literal["off", "fixed", "adaptive"]
WireDtype = Literal["float32", "bfloat16"]

STRATEGY_NAMES = (
    "fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm", "median", "trimmed-mean", "krum",
    "multi-krum", "ffa-lora", "hetero-rank",
)  # fmt: skip
"""The strategies of :mod:`fedlora.strategies.registry` (a test keeps the two equal); the
registry refuses any other name when the strategy is built, listing these."""

DEFAULT_TARGET_EPSILON = 4.0
"""Per-run ε a site aims for when it gives neither a noise multiplier nor a target."""
DEFAULT_PROXIMAL_MU = 0.01

# CLI argument groups of ``fedlora simulate`` (metadata["group"]).
DATA, MODEL, TRAINING = "sites and data", "model and LoRA", "training"
AGGREGATION = "aggregation (docs/strategies.md)"
PRIVACY = "differential privacy (on by default; see docs/privacy.md)"
OUTPUT = "output"


def _setting(default: Any, help: str, group: str, **cli: Any) -> Any:
    """A field with its help and CLI group; ``cli``: flag, metavar, repeat, exclusive, choices."""
    return field(default=default, metadata={"help": help, "group": group, **cli})


@dataclass(frozen=True)
class RunConfig:
    """Everything a federated run needs, validated.

    Attributes mirror the kebab-case keys of ``[tool.flwr.app.config]`` (``lora_r`` is
    ``lora-r``); each field's ``metadata["help"]`` says what it does. List-valued settings are
    comma-separated strings in the flat form, ``None`` is ``"auto"``.
    """

    scenario: str = _setting(
        "hospitals", "built-in scenario: hospitals, banks or drug-reviews", DATA
    )
    task: Task = _setting("sft", "sft: prompt -> response; classification: text -> label", DATA)
    model: str = _setting(
        "tiny-llama",
        "preset (tiny-llama, tiny-gpt2, tiny-bloom, tiny-bert), hub id, local directory, or a "
        "GGUF file (dequantised on load; needs the gguf package: pip install 'fedlora[real]')",
        MODEL,
    )
    gguf_file: str = _setting(
        "",
        "with a directory or hub id as model: the GGUF file in it to load ('': none)",
        MODEL,
        metavar="NAME",
    )
    rounds: int = _setting(3, "federated rounds", TRAINING)
    sites: int = _setting(
        0, "number of sites; 0: the scenario's default (one per file with your own data)", DATA
    )
    alpha: float = _setting(0.5, "Dirichlet non-IID concentration (> 0; inf: an even split)", DATA)
    examples_per_site: int = _setting(120, "records per site of a built-in scenario", DATA)
    test_fraction: float = _setting(
        0.2, "share of each site's records held out for evaluation, in (0, 1)", DATA
    )
    data_files: tuple[str, ...] = _setting(
        (),
        "your own site data (JSONL or CSV), one file per site; repeat for each site",
        DATA,
        flag="--data",
        metavar="FILE",
        repeat=True,
    )
    test_files: tuple[str, ...] = _setting(
        (),
        "held-out file per --data file (default: hold out --test-fraction of each)",
        DATA,
        flag="--test-data",
        metavar="FILE",
        repeat=True,
    )
    labels: tuple[str, ...] = _setting((), "comma-separated label set for classification", DATA)
    lr: float = _setting(0.01, "learning rate of the sites' local optimizer", TRAINING)
    local_epochs: int = _setting(1, "passes over a site's data per round", TRAINING)
    batch_size: int = _setting(16, "records per local batch (expected, under DP)", TRAINING)
    max_steps: int = _setting(0, "cap on local steps per round (0: none)", TRAINING)
    optimizer: OptimizerName = _setting("adamw", "the sites' local optimizer", TRAINING)
    strategy: str = _setting(
        "fedavg", "aggregation (docs/strategies.md)", TRAINING, choices=STRATEGY_NAMES
    )
    proximal_mu: float | None = _setting(None, "fedprox μ; auto: 0.01", AGGREGATION)
    server_lr: float | None = _setting(
        None,
        "server learning rate of fedadam / fedyogi (auto: 0.01) and fedavgm (auto: 1.0)",
        AGGREGATION,
    )
    server_momentum: float = _setting(0.9, "fedavgm momentum", AGGREGATION)
    server_beta1: float = _setting(0.9, "fedadam / fedyogi first-moment decay", AGGREGATION)
    server_beta2: float = _setting(0.99, "fedadam / fedyogi second-moment decay", AGGREGATION)
    server_tau: float = _setting(1e-9, "fedadam / fedyogi adaptivity τ", AGGREGATION)
    trim_fraction: float = _setting(
        0.1, "trimmed-mean: share dropped at each end, [0, 0.5)", AGGREGATION
    )
    krum_byzantine: int = _setting(0, "krum / multi-krum: sites assumed Byzantine (f)", AGGREGATION)
    krum_selected: int = _setting(0, "multi-krum: updates averaged (m); 0: sites - f", AGGREGATION)
    update_norm_bound: float = _setting(
        0.0,
        "reject updates farther than this (L2) from the global adapter; 0: only the built-in "
        "limit on absurd updates",
        AGGREGATION,
    )
    min_fit: int = _setting(1, "accepted updates a round needs", AGGREGATION)
    round_retries: int = _setting(
        0, "retry a round with fewer accepted updates this many times, then stop", AGGREGATION
    )
    secure_aggregation: bool = _setting(
        False,
        "SecAgg+: the coordinator learns only the sum of the sites' updates (docs/security.md)",
        AGGREGATION,
    )
    secure_aggregation_threshold: int = _setting(
        0, "secure aggregation: fewest sites that must remain; 0: a majority", AGGREGATION
    )
    secure_aggregation_range: float = _setting(
        8.0, "secure aggregation: largest magnitude of a value a site may send", AGGREGATION
    )
    wire_dtype: WireDtype = _setting(
        "float32",
        "dtype of the adapters on the wire; bfloat16 halves the bytes, rounding each value to "
        "8 significant bits (lossless for bf16-trained adapters)",
        AGGREGATION,
    )
    site_ranks: tuple[str, ...] = _setting(
        (),
        "hetero-rank: the sites' own LoRA ranks, e.g. site-a=4,site-b=16 (each <= lora-r)",
        AGGREGATION,
    )
    lora_r: int = _setting(8, "LoRA rank", MODEL)
    lora_alpha: int = _setting(16, "LoRA scaling α (updates are scaled by α / r)", MODEL)
    lora_dropout: float = _setting(0.0, "dropout on the LoRA input, [0, 1)", MODEL)
    lora_targets: tuple[str, ...] = _setting(
        (), "comma-separated module names (default: per architecture)", MODEL
    )
    max_length: int = _setting(128, "tokens per example (longer ones are truncated)", MODEL)
    seed: int = _setting(0, "seed of data, partitioning, initialisation and sampling", TRAINING)
    dp: bool = _setting(
        True,
        "DP-SGD on every site; the flag --no-dp trains without it (warned)",
        PRIVACY,
        flag="--no-dp",
    )
    noise_multiplier: float | None = _setting(
        None,
        "σ of DP-SGD (>= 0); auto: calibrated to target-epsilon",
        PRIVACY,
        metavar="S",
        exclusive=True,
    )
    target_epsilon: float | None = _setting(
        None,
        f"calibrate σ to reach this ε over the run; auto: {DEFAULT_TARGET_EPSILON:g} unless "
        "noise-multiplier is given",
        PRIVACY,
        metavar="E",
        exclusive=True,
    )
    delta: float | None = _setting(None, "δ, in (0, 1); auto: 0.1 / site records", PRIVACY,
                                   metavar="D")  # fmt: skip
    max_grad_norm: float = _setting(1.0, "per-record clipping norm of DP-SGD", PRIVACY, metavar="C")
    budget_epsilon: float = _setting(
        10.0, "per-site lifetime ε budget of its data", PRIVACY, metavar="B"
    )
    site_budgets: tuple[str, ...] = _setting(
        (),
        "budget of one site (repeat per site; flat form: site-a=4,site-b=6)",
        PRIVACY,
        flag="--site-budget",
        metavar="SITE=EPS",
        repeat=True,
    )
    accountant: AccountantChoice = _setting("prv", "privacy accountant of the sites", PRIVACY)
    dp_mode: DpMode = _setting(
        "hooks", "Opacus per-sample gradients: hooks, or ghost clipping", PRIVACY
    )
    secure_rng: bool = _setting(False, "noise and sampling from OS entropy", PRIVACY)
    ledger_root: str = _setting(
        "",
        "where simulated sites keep their privacy ledgers (default: $FEDLORA_HOME/ledgers, "
        "else $XDG_DATA_HOME/fedlora/ledgers, else ~/.local/share/fedlora/ledgers)",
        PRIVACY,
        metavar="DIR",
    )
    new_ledger: bool = _setting(
        False, "retire a ledger whose data changed and start a new one", PRIVACY
    )
    fit_budget: bool = _setting(
        False,
        "raise each site's noise until the whole planned run fits its remaining budget",
        PRIVACY,
    )
    central_dp: CentralDpMode = _setting(
        "off", "client-level DP on the server's aggregate", PRIVACY
    )
    central_noise_multiplier: float = _setting(
        1.0, "σ of the client-level noise (central DP)", PRIVACY
    )
    central_clip_norm: float = _setting(
        0.1, "clipping norm of a site's update (central DP)", PRIVACY
    )
    central_delta: float | None = _setting(
        None, "client-level δ, in (0, 1); auto: 1 / (10 · sites)", PRIVACY
    )
    out: str = _setting("runs", "parent folder of run directories", OUTPUT)
    resume: str = _setting(
        "", "a run id under out: continue that run from its checkpoint (flwr run)", OUTPUT
    )
    device: DeviceChoice = _setting("auto", "where sites train (auto: cuda if any)", TRAINING)
    bf16: Bf16Choice = _setting("auto", "bfloat16 autocast (auto: where supported)", TRAINING)
    gradient_checkpointing: bool = _setting(False, "recompute activations to save memory", TRAINING)
    client_cpus: float = _setting(1.0, "CPU cores per simulated site", TRAINING)
    client_gpus: float | None = _setting(
        None, "GPU fraction per simulated site; auto: shared by the sites", TRAINING
    )
    node_wait_timeout: float = _setting(
        120.0, "seconds to wait for the sites to connect at the start", TRAINING
    )
    round_timeout: float = _setting(
        3600.0, "seconds to wait for a site's reply in a round; then it is missing", TRAINING
    )
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._check_types()
        _check_at_least_one("rounds", self.rounds)
        if isinstance(self.sites, bool) or not isinstance(self.sites, int) or self.sites < 0:
            raise ConfigError(
                f"sites must be >= 1 (0 means the scenario's default), got {self.sites}"
            )
        if self.sites == 0 and self.data_files:
            object.__setattr__(self, "sites", len(self.data_files))
        check_basics(self)
        check_sizes(self)
        if self.resume:
            check_run_id(self.resume, key="resume")
        check_aggregation(self)
        check_privacy(self)
        if self.extra:
            raise ConfigError(f"unknown config key(s): {', '.join(sorted(self.extra))}")

    def _check_types(self) -> None:
        """``Literal`` choices; no NaN, and infinity only where it means something."""
        for f in fields(self):
            value, kind = getattr(self, f.name), field_kinds().get(f.name)
            if kind is None:
                continue
            if kind.choices and value not in kind.choices:
                valid = ", ".join(kind.choices)
                raise ConfigError(f"{key_of(f.name)} must be one of {valid}, got {value!r}")
            if kind.base is not float or isinstance(value, bool):
                continue
            if not isinstance(value, int | float):
                continue
            if math.isnan(value) or (math.isinf(value) and f.name not in MAY_BE_INFINITE):
                raise ConfigError(f"{key_of(f.name)} must be a finite number, got {value}")

    @property
    def effective_proximal_mu(self) -> float:
        """FedProx's μ for the sites: ``proximal-mu``, 0.01 when auto, 0 for other strategies."""
        if self.strategy != "fedprox":
            return 0.0
        return DEFAULT_PROXIMAL_MU if self.proximal_mu is None else self.proximal_mu

    @property
    def site_budget_map(self) -> dict[str, float]:
        """Per-site budget overrides from ``site-budgets`` (``name=epsilon`` items)."""
        return named_values(self.site_budgets, "site-budgets", "epsilon", float)

    @property
    def site_rank_map(self) -> dict[str, int]:
        """Per-site LoRA ranks from ``site-ranks`` (``name=rank`` items; hetero-rank)."""
        return named_values(self.site_ranks, "site-ranks", "rank", int)

    @property
    def uses_own_data(self) -> bool:
        """True when sites read the user's files rather than a built-in scenario."""
        return bool(self.data_files)

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> RunConfig:
        """Parse a flat kebab-case mapping (Flower run config) into a validated config.

        ``"auto"`` is ``None``; a pre-``"auto"`` numeric "use the default" value (``-1.0``,
        ``0``) is read as ``"auto"`` with a deprecation warning
        (:func:`fedlora.config.flat.upgrade_legacy`).

        Parameters
        ----------
        flat
            Keys as in ``[tool.flwr.app.config]``; values bool, int, float or str (the CLI
            also passes tuples for repeated flags).

        Returns
        -------
        RunConfig
            The validated configuration.

        Raises
        ------
        ConfigError
            For an unknown key, a value of the wrong type, or an impossible value.
        """
        by_key = {key_of(name): name for name in field_kinds()}
        unknown = sorted(set(flat) - set(by_key))
        if unknown:
            valid = ", ".join(sorted(by_key))
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)} (valid keys: {valid})")
        kinds = field_kinds()
        kwargs = {
            by_key[key]: kinds[by_key[key]].parse(key, value)
            for key, value in upgrade_legacy(flat).items()
        }
        return cls(**kwargs)

    def to_flat(self) -> dict[str, FlatValue]:
        """Return the flat kebab-case form, the inverse of :meth:`from_flat` (field order)."""
        return {key_of(name): to_flat_value(getattr(self, name)) for name in field_kinds()}

    def replace(self, **changes: Any) -> RunConfig:
        """Return a copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)


@cache
def field_kinds() -> dict[str, FieldKind]:
    """Every run-config field (``extra`` aside) by name, with its type, in field order."""
    hints = get_type_hints(RunConfig)
    return {f.name: FieldKind(hints[f.name]) for f in fields(RunConfig) if f.name != "extra"}


def _check_at_least_one(key: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if value < 1:
        raise ConfigError(f"{key} must be >= 1, got {value}")
