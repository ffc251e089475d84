"""Typed run configuration, parsed once from Flower's flat kebab-case run config.

The same :class:`RunConfig` serves ``fedlora simulate`` (its flags are generated from the
dataclass), ``flwr run .`` (``[tool.flwr.app.config]`` plus ``--run-config`` overrides) and the
testing helpers. Impossible values raise :class:`~fedlora.errors.ConfigError` at construction;
unknown keys in a flat config are an error, never silently ignored. ``docs/configuration.md``
lists every setting (generated: ``python -m fedlora.cli.config_doc``).
"""

from __future__ import annotations

from fedlora.config.checks import (
    MAX_BATCH_TOKENS,
    MAX_LENGTH_LIMIT,
    MAX_SCENARIO_EXAMPLES,
    RUN_ID_PATTERN,
    check_run_id,
)
from fedlora.config.flat import AUTO, FlatValue, upgrade_legacy
from fedlora.config.settings import (
    DEFAULT_PROXIMAL_MU,
    DEFAULT_TARGET_EPSILON,
    STRATEGY_NAMES,
    AccountantChoice,
    Bf16Choice,
    CentralDpMode,
    DeviceChoice,
    DpMode,
    OptimizerName,
    RunConfig,
    Task,
    WireDtype,
    field_kinds,
)

__all__ = [
    "AUTO",
    "DEFAULT_PROXIMAL_MU",
    "DEFAULT_TARGET_EPSILON",
    "MAX_BATCH_TOKENS",
    "MAX_LENGTH_LIMIT",
    "MAX_SCENARIO_EXAMPLES",
    "RUN_ID_PATTERN",
    "STRATEGY_NAMES",
    "AccountantChoice",
    "Bf16Choice",
    "WireDtype",
    "CentralDpMode",
    "DeviceChoice",
    "DpMode",
    "FlatValue",
    "OptimizerName",
    "RunConfig",
    "Task",
    "check_run_id",
    "field_kinds",
    "upgrade_legacy",
]
