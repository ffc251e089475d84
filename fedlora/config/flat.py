"""The flat form of the run configuration: Flower's kebab-case keys and plain values.

Flower's run config (``[tool.flwr.app.config]``, ``flwr run --run-config``) holds only bool,
int, float and str, never ``None``. A setting whose default is worked out at run time (σ
calibrated to a target ε, δ from the site's record count, a strategy's own server learning
rate) is therefore written as the string :data:`AUTO` in the flat form and is ``None`` in
:class:`~fedlora.config.RunConfig`. Lists are comma-separated strings.

fedlora before this form wrote "use the default" as a number (``-1.0`` or ``0``); those values
are still read, with a warning naming what to write instead (:func:`upgrade_legacy`), so an
old ``pyproject.toml`` and an old run's checkpoint keep working.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable, Mapping
from dataclasses import Field
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from fedlora.errors import ConfigError

logger = logging.getLogger(__name__)

FlatValue = bool | int | float | str

AUTO = "auto"
"""The flat value of a setting left to its run-time default (``None`` in the dataclass)."""

LEGACY_AUTO: dict[str, float] = {
    "noise-multiplier": -1.0,
    "target-epsilon": 0.0,
    "delta": 0.0,
    "proximal-mu": -1.0,
    "server-lr": -1.0,
    "central-delta": 0.0,
    "client-gpus": -1.0,
}
"""The numbers that meant "use the default" before :data:`AUTO`; none is a legal value."""

_Value = TypeVar("_Value", int, float)
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def key_of(name: str) -> str:
    """The kebab-case key of a field name (``lora_r`` -> ``lora-r``)."""
    return name.replace("_", "-")


def split_list(value: str) -> tuple[str, ...]:
    """The items of a comma-separated string, stripped, empty items dropped."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def upgrade_legacy(flat: Mapping[str, Any], *, warn: bool = True) -> dict[str, Any]:
    """Return ``flat`` with the numeric "use the default" values replaced by :data:`AUTO`.

    Parameters
    ----------
    flat
        A flat run config.
    warn
        Log a warning per replaced value, saying what to write instead (a user's config);
        ``False`` for a run's own checkpoint, written by an earlier fedlora.
    """
    upgraded = dict(flat)
    for key, old in LEGACY_AUTO.items():
        value = upgraded.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value != old:
            continue
        upgraded[key] = AUTO
        if warn:
            logger.warning(
                '%s = %r is deprecated and read as "auto": write %s = "auto" (or leave the '
                "setting out) instead",
                key,
                value,
                key,
            )
    return upgraded


class FieldKind:
    """What a field holds: its base type, whether ``None`` (auto) is allowed, its choices."""

    def __init__(self, hint: Any) -> None:
        args = get_args(hint)
        self.optional = get_origin(hint) in (Union, types.UnionType) and type(None) in args
        if self.optional:
            (hint,) = (arg for arg in args if arg is not type(None))
        self.choices: tuple[str, ...] = ()
        if get_origin(hint) is Literal:
            self.choices = tuple(str(arg) for arg in get_args(hint))
            hint = str
        self.is_list = get_origin(hint) is tuple
        self.base: type = str if self.is_list else hint

    def parse(self, key: str, value: Any) -> Any:
        """Coerce one flat value (or a CLI value) to the field's type.

        Raises
        ------
        ConfigError
            For a value of the wrong type.
        """
        if self.optional and isinstance(value, str) and value.strip().lower() == AUTO:
            return None
        if self.is_list:
            if isinstance(value, tuple | list) and all(isinstance(v, str) for v in value):
                return tuple(value)
            if not isinstance(value, str):
                raise ConfigError(f"{key} must be a comma-separated string, got {value!r}")
            return split_list(value)
        auto = f' or "{AUTO}"' if self.optional else ""
        if self.base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        if self.base is int:
            return _number(key, value, int, f"an integer{auto}", allow_float=False)
        if self.base is float:
            return _number(key, value, float, f"a number{auto}", allow_float=True)
        return str(value)


def _number(
    key: str, value: Any, parse: Callable[[Any], _Value], what: str, *, allow_float: bool
) -> _Value:
    allowed: tuple[type, ...] = (int, float, str) if allow_float else (int, str)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise ConfigError(f"{key} must be {what}, got {value!r}")
    try:
        return parse(value)
    except ValueError:
        raise ConfigError(f"{key} must be {what}, got {value!r}") from None


def to_flat_value(value: Any) -> FlatValue:
    """The flat form of one field value: ``None`` -> :data:`AUTO`, a tuple -> ``a,b``."""
    if value is None:
        return AUTO
    if isinstance(value, tuple):
        return ",".join(value)
    return value  # type: ignore[no-any-return]


def field_help(f: Field[Any]) -> str:
    """The help text of a run-config field (its ``metadata["help"]``)."""
    return str(f.metadata.get("help", ""))
