"""A site's own privacy policy: its budget, its δ, its noise choice, where its ledger lives.

The coordinator proposes a run (rounds, batch size, epochs, σ or a target ε); the site decides
whether it trains (:mod:`fedlora.clients.site_privacy`). Its budget, δ, ledger location and
whether to start a new ledger are node configuration; the run config supplies defaults only
where the node config is silent, which is how a simulated federation (no per-node config) sets
them.

Node config keys: ``budget-epsilon``, ``delta``, ``noise-multiplier``, ``target-epsilon``,
``ledger-dir``, ``new-ledger``, ``secure-rng``, ``allow-no-dp``.

A *deployed* site (its node config names its ``train-file``) takes nothing that bounds its spend
from the coordinator: it must name its own ``budget-epsilon`` and ``ledger-dir``, its δ is its
own (node ``delta``, else its ledger's, else 0.1 / the records of its whole data file; never the
run config's, and never dependent on the coordinator's ``test-fraction``: a large δ would shrink
ε), only its node config can retire its ledger (``new-ledger``), and it refuses a run without
DP unless its node config says ``allow-no-dp``. Simulated sites, which have no node config of
their own, take these from the run config.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlora.config import DEFAULT_TARGET_EPSILON, RunConfig
from fedlora.data import read_records
from fedlora.errors import ConfigError, LedgerError
from fedlora.privacy.accounting import check_delta, default_delta
from fedlora.privacy.ledger import SiteLedger
from fedlora.privacy.ledger_storage import default_ledger_root
from fedlora.sites import SiteSpec

logger = logging.getLogger(__name__)

NODE_KEYS = (
    "budget-epsilon",
    "delta",
    "noise-multiplier",
    "target-epsilon",
    "ledger-dir",
    "new-ledger",
    "secure-rng",
    "allow-no-dp",
)
DEPLOYED_REQUIRED = ("budget-epsilon", "ledger-dir")


@dataclass(frozen=True)
class SitePolicy:
    """What a site enforces: its budget, δ, its noise choice and where its ledger lives.

    ``delta`` is the δ the site's configuration names (``None``: unset, the ledger's own or,
    for a new ledger, :func:`new_ledger_delta`).
    """

    budget_epsilon: float
    delta: float | None
    noise_multiplier: float | None
    target_epsilon: float
    ledger_dir: Path
    start_new_ledger: bool
    secure_rng: bool


def _node_float(node: Mapping[str, Any], key: str) -> float | None:
    if key not in node:
        return None
    try:
        return float(node[key])
    except (TypeError, ValueError):
        raise ConfigError(f"node config {key} must be a number, got {node[key]!r}") from None


def _node_bool(node: Mapping[str, Any], key: str, default: bool) -> bool:
    if key not in node:
        return default
    value = node[key]
    if isinstance(value, bool):
        return value
    if str(value).lower() in {"true", "1", "yes"}:
        return True
    if str(value).lower() in {"false", "0", "no"}:
        return False
    raise ConfigError(f"node config {key} must be true or false, got {value!r}")


def is_deployed(node: Mapping[str, Any]) -> bool:
    """True for a real site (it names its own ``train-file``), false for a simulated one."""
    return "train-file" in node


def check_dp_allowed(config: RunConfig, node: Mapping[str, Any]) -> None:
    """Refuse a run without DP at a deployed site that has not opted out in its node config.

    Raises
    ------
    ConfigError
        When the coordinator asks a deployed site to train without DP.
    """
    if config.dp or not is_deployed(node) or _node_bool(node, "allow-no-dp", False):
        return
    raise ConfigError(
        "this site trains only with differential privacy; the coordinator asked for dp=false "
        "(set allow-no-dp in the site's node config to permit it)"
    )


def site_policy(
    config: RunConfig,
    node: Mapping[str, Any],
    site: SiteSpec,
    *,
    records: int,
    data_fingerprint: str,
) -> SitePolicy:
    """Resolve the site's policy: node config first, then the run config's defaults.

    Raises
    ------
    ConfigError
        For an impossible value (σ < 0, budget or target <= 0, δ outside (0, 1)), both σ
        and a target given, or a deployed site without its own budget and ledger directory.
    """
    deployed = is_deployed(node)
    missing = [key for key in DEPLOYED_REQUIRED if deployed and key not in node]
    if missing:
        raise ConfigError(
            f"site {site.name}: node config must set {', '.join(missing)}; a deployed site "
            "keeps its own privacy budget and ledger"
        )
    budget = _node_float(node, "budget-epsilon")
    if budget is None:
        budget = config.site_budget_map.get(site.name, config.budget_epsilon)
    if not (budget > 0 and not math.isnan(budget)):
        raise ConfigError(f"budget-epsilon of site {site.name} must be > 0, got {budget}")
    delta = _node_float(node, "delta")
    if delta is None and not deployed and config.delta:
        delta = config.delta
    if delta is not None:
        check_delta(delta)
    sigma = _node_float(node, "noise-multiplier")
    target = _node_float(node, "target-epsilon")
    if sigma is not None and target is not None:
        raise ConfigError("node config gives both noise-multiplier and target-epsilon")
    if sigma is None and target is None and config.noise_multiplier is not None:
        sigma = config.noise_multiplier
    if sigma is None:
        target = target or config.target_epsilon or DEFAULT_TARGET_EPSILON
    if sigma is not None and not (sigma >= 0 and math.isfinite(sigma)):
        raise ConfigError(f"noise-multiplier must be >= 0, got {sigma}")
    if target is not None and not (target > 0 and math.isfinite(target)):
        raise ConfigError(f"target-epsilon must be > 0, got {target}")
    if "ledger-dir" in node:
        ledger_dir = Path(str(node["ledger-dir"]))
    else:
        root = Path(config.ledger_root) if config.ledger_root else default_ledger_root()
        ledger_dir = root / f"{site.name}-{data_fingerprint[:12]}"
    return SitePolicy(
        budget_epsilon=budget,
        delta=delta,
        noise_multiplier=sigma,
        target_epsilon=target or 0.0,
        ledger_dir=ledger_dir,
        start_new_ledger=_node_bool(node, "new-ledger", not deployed and config.new_ledger),
        secure_rng=_node_bool(node, "secure-rng", config.secure_rng),
    )


def new_ledger_delta(policy: SitePolicy, train_file: Path, fingerprint: str) -> float:
    """The δ a new ledger is fixed at: the configured one, else 0.1 / the data file's records.

    The records are those of the whole file, not of the training split that the run config's
    ``test-fraction`` carves out of it, so nothing the coordinator sends moves a site's δ.
    """
    if policy.delta is not None:
        return policy.delta
    return default_delta(_file_records(train_file, fingerprint))


@functools.lru_cache(maxsize=64)
def _file_records(path: Path, _fingerprint: str) -> int:
    """Records in the whole data file (cached per content: the fingerprint is in the key)."""
    return len(read_records(path))


def ledger_delta(policy: SitePolicy, ledger: SiteLedger, site: str) -> float:
    """The δ every check of this ledger uses: the one it was fixed at when it opened.

    Raises
    ------
    LedgerError
        When the site's configuration names another δ: composing the history at a larger δ
        would shrink its ε and refund budget already spent.
    """
    fixed = ledger.delta
    if fixed is None:
        if policy.delta is None:
            raise LedgerError(f"privacy ledger {ledger.path} has no delta and none is configured")
        return policy.delta
    if policy.delta is not None and policy.delta != fixed:
        raise LedgerError(
            f"site {site}: its privacy ledger {ledger.path} is fixed at delta {fixed!r}, but "
            f"this run sets delta {policy.delta!r}; a ledger's delta never changes (accounting "
            "its history at another delta would refund spent budget): set delta to "
            f"{fixed!r} or leave it unset"
        )
    return fixed
