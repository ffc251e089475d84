"""Values written into Flower's ``--node-config`` and ``--run-config`` strings.

Flower splits those strings with the pattern ``key=('...'|"..."|non-space)`` and parses each
pair as TOML, so strings are written as TOML literal strings (single quotes: no escapes,
spaces and backslashes kept) or, for a value holding a single quote, as basic strings (double
quotes, backslashes escaped). A value the parser cannot carry is refused here, before a
process is started with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from fedlora.errors import ConfigError

__all__ = ["RunConfigValue", "node_config_value", "run_config_string"]

RunConfigValue = bool | int | float | str
"""A value of Flower's flat run config."""


def node_config_value(value: str | float | bool) -> str:
    """One value of a ``--node-config`` string, written so Flower parses it back unchanged.

    Raises
    ------
    ConfigError
        For a string with both quote kinds or a control character, or a non-finite number.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number):
            raise ConfigError(f"node config values must be finite numbers, got {value}")
        return repr(number)
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ConfigError(f"node config value {value!r} holds a control character")
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return '"' + value.replace("\\", "\\\\") + '"'
    raise ConfigError(
        f"node config value {value!r} holds both ' and \": flower-supernode cannot parse it; "
        "rename the file or folder"
    )


def run_config_string(values: Mapping[str, RunConfigValue]) -> str:
    """Render a run config as the ``--run-config`` string of ``flwr run``.

    Integers stay integers and floats floats (Flower checks them against the App's
    ``[tool.flwr.app.config]`` types), strings become TOML literal strings.

    Raises
    ------
    ConfigError
        For a key that is not ``kebab-case`` letters and digits, or a value Flower's parser
        cannot carry.
    """
    parts = []
    for key, value in values.items():
        if not key or not all(char.isalnum() or char in "-_." for char in key):
            raise ConfigError(f"run config key {key!r} must be letters, digits, '-', '_' or '.'")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        else:
            text = node_config_value(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)
