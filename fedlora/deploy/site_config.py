"""A deployed site's configuration in one file (``site.toml``), validated at node start.

A site operator writes one TOML file per SuperNode::

    [site]
    name = "hospital-a"
    train-file = "data/train.jsonl"
    test-file = "data/test.jsonl"      # optional
    device = "auto"                    # auto | cpu | cuda
    cpu-threads = 4                    # optional: torch CPU threads (default: all cores)
    lora-rank = 4                      # optional: this site's LoRA rank (hetero-rank strategy)

    [privacy]
    budget-epsilon = 8.0               # lifetime ε budget of this site's data (required)
    ledger-dir = "ledger"              # where the privacy ledger lives (required)
    delta = 1e-5                       # optional, default 0.1 / records
    secure-rng = true                  # optional
    allow-no-dp = false                # optional

    [connection]
    superlink = "superlink.example.org:9093"
    root-certificates = "pki/ca.pem"
    auth-private-key = "pki/sites/hospital-a.key"
    secagg-identity-key = "pki/sites/hospital-a.secagg.key"   # optional, with secagg-roster:
    secagg-roster = "pki/secagg-roster.json"                  # secure aggregation's keys
    heartbeat-interval = 30            # optional: s between node heartbeats (10-1800)

Relative paths are resolved against the folder holding the TOML file. :func:`load_site_config`
checks everything a node needs before it connects (files readable, ledger directory writable,
key file private, certificate parsable) and raises :class:`~fedlora.errors.ConfigError` with a
one-line message naming the file and the key. :meth:`SiteConfig.to_node_config` renders the
node-config string ``flower-supernode --node-config`` takes, with the keys the ClientApp reads
(``clients/app.py`` and ``clients/site_policy.py``).

``insecure = true`` in ``[connection]`` (no TLS) is accepted only when the caller passes
``allow_insecure=True`` (the CLI's ``--insecure``): a typo in a config file must never turn
encryption off.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from fedlora.config import DeviceChoice
from fedlora.deploy.flower_values import node_config_value
from fedlora.deploy.site_checks import (
    auth_key_file,
    readable_file,
    root_certificates_file,
    secagg_files,
    superlink_address,
    writable_directory,
)
from fedlora.errors import ConfigError
from fedlora.flower_internals.tuning import check_heartbeat_interval

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["SITE_KEYS", "SiteConfig", "load_site_config"]

_DEVICES = ("auto", "cpu", "cuda")
_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_Kind = Literal["str", "path", "number", "bool"]

SITE_KEYS: dict[str, dict[str, _Kind]] = {
    "site": {
        "name": "str",
        "train-file": "path",
        "test-file": "path",
        "device": "str",
        "cpu-threads": "number",
        "lora-rank": "number",
    },
    "privacy": {
        "budget-epsilon": "number",
        "delta": "number",
        "ledger-dir": "path",
        "noise-multiplier": "number",
        "target-epsilon": "number",
        "new-ledger": "bool",
        "secure-rng": "bool",
        "allow-no-dp": "bool",
    },
    "connection": {
        "superlink": "str",
        "root-certificates": "path",
        "auth-private-key": "path",
        "secagg-identity-key": "path",
        "secagg-roster": "path",
        "insecure": "bool",
        "heartbeat-interval": "number",
    },
}
"""Every table and key ``site.toml`` may hold, with its type; anything else is an error."""

_REQUIRED = {
    "site": ("name", "train-file"),
    "privacy": ("budget-epsilon", "ledger-dir"),
    "connection": ("superlink",),
}


@dataclass(frozen=True)
class SiteConfig:
    """A validated ``site.toml``: the site, its privacy policy and its SuperLink connection.

    Every path is absolute.
    """

    source: Path
    name: str
    train_file: Path
    test_file: Path | None
    device: DeviceChoice
    cpu_threads: int | None
    lora_rank: int | None
    budget_epsilon: float
    ledger_dir: Path
    delta: float | None
    noise_multiplier: float | None
    target_epsilon: float | None
    new_ledger: bool | None
    secure_rng: bool | None
    allow_no_dp: bool | None
    superlink: str
    root_certificates: Path | None
    auth_private_key: Path | None
    insecure: bool
    heartbeat_interval: float | None = None
    secagg_identity_key: Path | None = None
    secagg_roster: Path | None = None

    def node_config(self) -> dict[str, str | float | bool]:
        """The node config the ClientApp reads, as a mapping (optional keys only when set)."""
        values: dict[str, str | float | bool | None] = {
            "site-name": self.name,
            "train-file": str(self.train_file),
            "test-file": str(self.test_file) if self.test_file else None,
            "budget-epsilon": self.budget_epsilon,
            "ledger-dir": str(self.ledger_dir),
            "delta": self.delta,
            "noise-multiplier": self.noise_multiplier,
            "target-epsilon": self.target_epsilon,
            "new-ledger": self.new_ledger,
            "secure-rng": self.secure_rng,
            "allow-no-dp": self.allow_no_dp,
            "device": self.device,
            "lora-rank": float(self.lora_rank) if self.lora_rank is not None else None,
            "secagg-identity-key": _text(self.secagg_identity_key),
            "secagg-roster": _text(self.secagg_roster),
            "secagg-ca": _text(self.root_certificates if self.secagg_roster else None),
        }
        return {key: value for key, value in values.items() if value is not None}

    def to_node_config(self) -> str:
        """The ``flower-supernode --node-config`` string of this site.

        Each value is written by :func:`fedlora.deploy.flower_values.node_config_value`, so
        Flower's parser reads it back unchanged.

        Raises
        ------
        ConfigError
            For a value Flower's parser cannot carry (both quote kinds, or a control
            character).
        """
        return " ".join(
            f"{key}={node_config_value(value)}" for key, value in self.node_config().items()
        )

    def supernode_environment(self) -> dict[str, str]:
        """Environment variables that apply ``device`` and ``cpu-threads`` to the ClientApp.

        ``device = "cpu"`` hides every GPU from the ClientApp (``CUDA_VISIBLE_DEVICES=""``);
        ``auto`` and ``cuda`` change nothing (``cuda`` is checked by the caller).
        ``cpu-threads = N`` caps torch's intra-op threads (``OMP_NUM_THREADS``, read by torch
        at start-up): several nodes sharing one host each take their share instead of all
        competing for every core.
        """
        environment = {"CUDA_VISIBLE_DEVICES": ""} if self.device == "cpu" else {}
        if self.cpu_threads is not None:
            environment["OMP_NUM_THREADS"] = str(self.cpu_threads)
        return environment


def load_site_config(path: Path | str, *, allow_insecure: bool = False) -> SiteConfig:
    """Read and validate a site's ``site.toml``.

    Parameters
    ----------
    path : Path or str
        The TOML file; relative paths inside it are resolved against its folder.
    allow_insecure : bool
        Accept ``insecure = true`` in ``[connection]`` (no TLS; never in production).

    Returns
    -------
    SiteConfig
        The validated configuration with absolute paths. The ledger directory exists.

    Raises
    ------
    ConfigError
        With a one-line message for a missing or malformed file, an unknown table or key, a
        value of the wrong type or range, an unreadable data file, a ledger directory that
        cannot be created or written, a private key readable by others, or a missing or
        unparsable root certificate.
    """
    source = Path(path).expanduser().absolute()
    raw = _read_toml(source)
    tables = _check_shape(raw, source)
    base = source.parent
    where = str(source)

    site, privacy, connection = tables["site"], tables["privacy"], tables["connection"]
    name = cast(str, site["name"])
    if not _SITE_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: [site] name must be 1-63 letters, digits, '-' or '_' starting with a "
            f"letter or digit, got {name!r}"
        )
    device = cast(str, site.get("device", "auto"))
    if device not in _DEVICES:
        raise ConfigError(f"{where}: [site] device must be one of auto, cpu, cuda, got {device!r}")
    threads = _optional_float(site, "cpu-threads")
    if threads is not None and (threads != int(threads) or threads < 1):
        raise ConfigError(f"{where}: [site] cpu-threads must be an integer >= 1, got {threads:g}")
    lora_rank = _optional_float(site, "lora-rank")
    if lora_rank is not None and (lora_rank != int(lora_rank) or lora_rank < 1):
        raise ConfigError(f"{where}: [site] lora-rank must be an integer >= 1, got {lora_rank:g}")
    train_file = readable_file(base, site["train-file"], where, "[site] train-file")
    test_file = (
        readable_file(base, site["test-file"], where, "[site] test-file")
        if "test-file" in site
        else None
    )

    budget = float(privacy["budget-epsilon"])
    if not (budget > 0 and math.isfinite(budget)):
        raise ConfigError(f"{where}: [privacy] budget-epsilon must be > 0, got {budget:g}")
    delta = _optional_float(privacy, "delta")
    if delta is not None and not 0 < delta < 1:
        raise ConfigError(f"{where}: [privacy] delta must be in (0, 1), got {delta:g}")
    sigma = _optional_float(privacy, "noise-multiplier")
    target = _optional_float(privacy, "target-epsilon")
    if sigma is not None and target is not None:
        raise ConfigError(f"{where}: [privacy] give noise-multiplier or target-epsilon, not both")
    if sigma is not None and not (sigma >= 0 and math.isfinite(sigma)):
        raise ConfigError(f"{where}: [privacy] noise-multiplier must be >= 0, got {sigma:g}")
    if target is not None and not (target > 0 and math.isfinite(target)):
        raise ConfigError(f"{where}: [privacy] target-epsilon must be > 0, got {target:g}")
    ledger_dir = writable_directory(base, privacy["ledger-dir"], where)

    superlink = superlink_address(cast(str, connection["superlink"]), where)
    insecure = bool(connection.get("insecure", False))
    root_certificates: Path | None = None
    auth_key: Path | None = None
    if insecure:
        if not allow_insecure:
            raise ConfigError(
                f"{where}: [connection] insecure = true turns TLS off; pass --insecure "
                "(allow_insecure=True) to confirm, and never do this outside a test network"
            )
        if "root-certificates" in connection:
            raise ConfigError(
                f"{where}: [connection] has both insecure = true and root-certificates; remove one"
            )
    else:
        if "root-certificates" not in connection:
            raise ConfigError(
                f"{where}: [connection] root-certificates is missing: the federation's "
                "ca.pem, to verify the SuperLink"
            )
        root_certificates = root_certificates_file(base, connection["root-certificates"], where)
        if "auth-private-key" not in connection:
            raise ConfigError(
                f"{where}: [connection] auth-private-key is missing: the site key "
                "(pki/sites/NAME.key) registered with the SuperLink"
            )
    if "auth-private-key" in connection:
        auth_key = auth_key_file(base, connection["auth-private-key"], where)
    secagg = secagg_files(base, connection, root_certificates, name, where)
    heartbeat = _optional_float(connection, "heartbeat-interval")
    if heartbeat is not None:
        try:
            check_heartbeat_interval(heartbeat)
        except ConfigError as error:
            raise ConfigError(f"{where}: [connection] {error}") from None

    return SiteConfig(
        source=source,
        name=name,
        train_file=train_file,
        test_file=test_file,
        device=cast(DeviceChoice, device),
        cpu_threads=None if threads is None else int(threads),
        lora_rank=None if lora_rank is None else int(lora_rank),
        budget_epsilon=budget,
        ledger_dir=ledger_dir,
        delta=delta,
        noise_multiplier=sigma,
        target_epsilon=target,
        new_ledger=_optional_bool(privacy, "new-ledger"),
        secure_rng=_optional_bool(privacy, "secure-rng"),
        allow_no_dp=_optional_bool(privacy, "allow-no-dp"),
        superlink=superlink,
        root_certificates=root_certificates,
        auth_private_key=auth_key,
        insecure=insecure,
        heartbeat_interval=heartbeat,
        secagg_identity_key=secagg[0] if secagg else None,
        secagg_roster=secagg[1] if secagg else None,
    )


def _read_toml(source: Path) -> dict[str, Any]:
    try:
        with source.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"site config {source} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"site config {source} is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read site config {source}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"site config {source} is not valid TOML: {exc}") from None


def _check_shape(raw: Mapping[str, Any], source: Path) -> dict[str, dict[str, Any]]:
    """Check tables, keys and value types; return the three tables (missing ones empty)."""
    unknown = sorted(set(raw) - set(SITE_KEYS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown table or key {unknown[0]!r} (tables: site, privacy, connection)"
        )
    tables: dict[str, dict[str, Any]] = {}
    for table, keys in SITE_KEYS.items():
        content = raw.get(table, {})
        if not isinstance(content, dict):
            raise ConfigError(f"{source}: {table} must be a table ([{table}])")
        for key, value in content.items():
            if key not in keys:
                raise ConfigError(
                    f"{source}: unknown key {key!r} in [{table}] (known: {', '.join(keys)})"
                )
            _check_type(value, keys[key], f"{source}: [{table}] {key}")
        missing = [key for key in _REQUIRED[table] if key not in content]
        if missing:
            raise ConfigError(f"{source}: [{table}] {missing[0]} is required")
        tables[table] = dict(content)
    return tables


def _check_type(value: Any, kind: _Kind, what: str) -> None:
    if kind == "bool":
        ok = isinstance(value, bool)
        expected = "true or false"
    elif kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        expected = "a number"
    else:
        ok = isinstance(value, str) and bool(value.strip())
        expected = "a non-empty string"
    if not ok:
        raise ConfigError(f"{what} must be {expected}, got {value!r}")


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _optional_float(table: Mapping[str, Any], key: str) -> float | None:
    return float(table[key]) if key in table else None


def _optional_bool(table: Mapping[str, Any], key: str) -> bool | None:
    return bool(table[key]) if key in table else None
