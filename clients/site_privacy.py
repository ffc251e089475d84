"""A site's own privacy policy and its budget guard.

The coordinator proposes a run (rounds, batch size, epochs, σ or a target ε); the site decides
whether it trains. Its budget, δ, ledger location and whether to start a new ledger are node
configuration; the run config supplies defaults only where the node config is silent, which is
how a simulated federation (no per-node config) sets them.

Node config keys: ``budget-epsilon``, ``delta``, ``noise-multiplier``, ``target-epsilon``,
``ledger-dir``, ``new-ledger``, ``secure-rng``, ``allow-no-dp``.

A *deployed* site (its node config names its ``train-file``) takes nothing that bounds its spend
from the coordinator: it must name its own ``budget-epsilon`` and ``ledger-dir``, its δ is its
own (node ``delta`` or 0.1 / records, never the run config's: a large δ would shrink ε), only
its node config can retire its ledger (``new-ledger``), and it refuses a run without DP unless
its node config says ``allow-no-dp``. Simulated sites, which
have no node config of their own, take these from the run config.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlora.config import DEFAULT_TARGET_EPSILON, RunConfig
from fedlora.errors import ConfigError
from fedlora.ledger import SiteLedger
from fedlora.privacy import (
    AccountantName,
    Release,
    StepPlan,
    calibrate_noise,
    check_delta,
    default_delta,
    epsilon,
    plan_steps,
)
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
    """What a site enforces: its budget, δ, its noise choice and where its ledger lives."""

    budget_epsilon: float
    delta: float
    noise_multiplier: float | None
    target_epsilon: float
    ledger_dir: Path
    start_new_ledger: bool
    secure_rng: bool


@dataclass(frozen=True)
class RoundDecision:
    """The guard's verdict on a proposed round."""

    plan: StepPlan
    noise_multiplier: float
    spent: float
    after: float
    budget: float

    @property
    def allowed(self) -> bool:
        """True when ε after the round stays within the budget (exact values, no margin)."""
        return self.after <= self.budget


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
    if delta is None:
        delta = default_delta(records) if deployed else config.delta or default_delta(records)
    check_delta(delta)
    sigma = _node_float(node, "noise-multiplier")
    target = _node_float(node, "target-epsilon")
    if sigma is not None and target is not None:
        raise ConfigError("node config gives both noise-multiplier and target-epsilon")
    if sigma is None and target is None and config.noise_multiplier >= 0:
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
        root = Path(config.ledger_root) if config.ledger_root else Path(config.out) / "ledgers"
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


@functools.lru_cache(maxsize=64)
def _calibrated(
    target: float, delta: float, sample_rate: float, steps: int, accountant: AccountantName
) -> float:
    sigma = calibrate_noise(
        target_epsilon=target,
        delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant,
    )
    logger.info(
        "calibrated noise multiplier %.6g for epsilon %g at delta %.3g over %d steps (q=%.4g)",
        sigma,
        target,
        delta,
        steps,
        sample_rate,
    )
    return sigma


def decide_round(
    config: RunConfig,
    policy: SitePolicy,
    ledger: SiteLedger,
    *,
    records: int,
    calibrations: MutableMapping[str, Any] | None = None,
) -> RoundDecision:
    """Plan this round's steps, fix σ, and compute ε before and after it.

    σ comes from the policy, or is calibrated so that the whole planned run (``rounds`` ×
    steps per round) reaches the target ε. The budget is compared with the dataset's lifetime ε
    (every ledger entry plus this round) by the run's accountant.

    Raises
    ------
    ConfigError
        When the target ε cannot be reached for the planned steps.

    ``calibrations`` (the node's ``Context.state`` record) keeps calibrated σ between rounds:
    a calibration is deterministic but costs seconds of PRV evaluations.
    """
    plan = plan_steps(
        records=records,
        batch_size=config.batch_size,
        local_epochs=config.local_epochs,
        max_steps=config.max_steps,
    )
    if policy.noise_multiplier is not None:
        sigma = policy.noise_multiplier
    else:
        inputs = (
            policy.target_epsilon,
            policy.delta,
            plan.sample_rate,
            plan.steps * config.rounds,
            config.accountant,
        )
        key = "|".join(repr(value) for value in inputs)
        if calibrations is not None and key in calibrations:
            sigma = float(calibrations[key])
        else:
            sigma = _calibrated(*inputs)
            if calibrations is not None:
                calibrations[key] = sigma
    history = ledger.releases()
    proposed = [*history, Release(sigma, plan.sample_rate, plan.steps)]
    return RoundDecision(
        plan=plan,
        noise_multiplier=sigma,
        spent=_spent(ledger, policy.delta, config.accountant),
        after=epsilon(proposed, delta=policy.delta, accountant=config.accountant),
        budget=policy.budget_epsilon,
    )


def _spent(ledger: SiteLedger, delta: float, accountant: AccountantName) -> float:
    """ε of the ledger so far: its last entry's value when computed at this δ, else afresh."""
    if ledger.entries and ledger.entries[-1].delta == delta:
        last = ledger.entries[-1]
        return last.epsilon_prv if accountant == "prv" else last.epsilon_rdp
    return epsilon(ledger.releases(), delta=delta, accountant=accountant)
