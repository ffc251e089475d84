"""``fedlora simulate``'s run-config flags, generated from :class:`~fedlora.config.RunConfig`.

One loop over the dataclass's fields adds one flag per setting, with the field's help, choices
and default; a flag the user does not give is left out, so the dataclass's own default
applies. The parsed flags go through :meth:`RunConfig.from_flat`, the one parser of settings.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import Field, fields
from typing import Any

from fedlora.config import AUTO, RunConfig, field_kinds
from fedlora.config.flat import FieldKind, key_of
from fedlora.config.settings import DEFAULT_TARGET_EPSILON, PRIVACY
from fedlora.errors import ConfigError

NOT_FLAGS: dict[str, str] = {
    "resume": (
        "`fedlora simulate --resume RUN_DIR` names the run directory itself; the `resume` key "
        "(a run id under `out`) is for `flwr run`"
    ),
}
"""Run-config fields deliberately without a ``simulate`` flag, with the reason."""

GROUP_DESCRIPTIONS = {
    PRIVACY: "Each site gives σ or a target ε for the whole run (default: target ε "
    f"{DEFAULT_TARGET_EPSILON:g}); its budget caps the lifetime ε of its data.",
}


def count(text: str) -> int:
    """An integer argument, also written as an integral number such as ``1e6``.

    Counts are often typed in scientific notation; accepting it lets :class:`RunConfig`
    refuse an absurd size with its bound and reason instead of argparse's usage dump.
    """
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if not (math.isfinite(value) and value.is_integer()):
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}")
    return int(value)


def _number_or_auto(text: str) -> float | str:
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'invalid number: {text!r} (or "{AUTO}")') from None


def run_config_fields() -> list[Field[Any]]:
    """The run-config fields that are ``simulate`` flags, in field order."""
    kinds = field_kinds()
    return [f for f in fields(RunConfig) if f.name in kinds and f.name not in NOT_FLAGS]


def flag_of(f: Field[Any]) -> str:
    """The ``simulate`` flag of a field: ``metadata["flag"]`` or ``--`` and its key."""
    return str(f.metadata.get("flag", f"--{key_of(f.name)}"))


def default_text(f: Field[Any]) -> str | None:
    """How a field's default reads in help and docs; ``None`` where it goes without saying."""
    value = f.default
    if value is None:
        return AUTO
    if isinstance(value, bool) or value in ("", ()):
        return None
    return f"{value:g}" if isinstance(value, float) else str(value)


def help_text(f: Field[Any]) -> str:
    """A field's help with its choices (when not a ``Literal``) and default."""
    text = str(f.metadata["help"])
    shown = f.metadata.get("choices")
    if shown:
        text += f": {', '.join(shown)}"
    default = default_text(f)
    if default is not None:
        text += f" (default: {default})"
    return text.replace("%", "%%")


def add_run_config_flags(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Add one flag per run-config field to ``parser``, in argument groups.

    Returns
    -------
    dict
        The argument groups by title, so the command can add its own flags to them.
    """
    groups: dict[str, Any] = {}
    exclusive: dict[str, Any] = {}
    kinds = field_kinds()
    for f in run_config_fields():
        title = str(f.metadata["group"])
        if title not in groups:
            groups[title] = parser.add_argument_group(title, GROUP_DESCRIPTIONS.get(title))
        target = groups[title]
        if f.metadata.get("exclusive"):
            if title not in exclusive:
                exclusive[title] = target.add_mutually_exclusive_group()
            target = exclusive[title]
        target.add_argument(
            flag_of(f), dest=f.name, default=argparse.SUPPRESS, help=help_text(f),
            **_argument_options(f, kinds[f.name]),
        )  # fmt: skip
    return groups


def _argument_options(f: Field[Any], kind: FieldKind) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if "metavar" in f.metadata:
        options["metavar"] = f.metadata["metavar"]
    if kind.base is bool:
        options["action"] = "store_false" if f.default else "store_true"
        return options
    if f.metadata.get("repeat"):
        options["action"] = "append"
    elif kind.choices:
        options["choices"] = kind.choices
    elif kind.base is int:
        options["type"] = count
    elif kind.base is float:
        options["type"] = _number_or_auto if kind.optional else float
    return options


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Build the run configuration from parsed ``simulate`` arguments.

    Raises
    ------
    ConfigError
        For a flag the run configuration refuses, naming the flag where the CLI checks it.
    """
    given = {key_of(f.name): getattr(args, f.name) for f in run_config_fields() if f.name in args}
    if "sites" in given and given["sites"] < 1:
        raise ConfigError(f"sites must be >= 1, got {given['sites']}")
    if given.get("test-files") and not given.get("data-files"):
        raise ConfigError("--test-data needs --data (one --test-data per --data file)")
    _check_privacy_flags(given)
    return RunConfig.from_flat(given)


def _check_privacy_flags(given: dict[str, Any]) -> None:
    """Refuse, naming the flag, values the CLI never took as "use the default"."""

    def number(key: str) -> float | None:
        value = given.get(key)
        return value if isinstance(value, float) else None

    sigma, target, delta = number("noise-multiplier"), number("target-epsilon"), number("delta")
    if sigma is not None and sigma < 0:
        raise ConfigError(f"--noise-multiplier must be >= 0, got {sigma}")
    if target is not None and not target > 0:
        raise ConfigError(f"--target-epsilon must be > 0, got {target}")
    if delta is not None and not 0 < delta < 1:
        raise ConfigError(f"--delta must be in (0, 1), got {delta}")
