"""One DP training round at a site: policy, ledger, budget guard, DP-SGD, durable record.

Order matters: the ledger is opened and validated before anything trains, the guard decides
with the exact accountant value, and the round is appended (fsynced) to the ledger *before*
the update leaves the site, so a crash can over-count a site's spend but never under-count it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ConfigRecord, Context
from peft import PeftModel

from clients.dp_training import DpSettings, dp_train_locally
from clients.site_privacy import RoundDecision, SitePolicy, decide_round, site_policy
from clients.training import TrainResult
from fedlora.config import RunConfig
from fedlora.data import TokenizedDataset
from fedlora.ledger import LedgerEntry, SiteLedger, data_fingerprint
from fedlora.privacy import AccountantName, Release, epsilon, epsilons
from fedlora.protocol import BUDGET_EXHAUSTED
from fedlora.sites import SiteSpec

logger = logging.getLogger(__name__)

STATE_KEY = "privacy-ledger"
CALIBRATION_KEY = "privacy-calibration"


@dataclass(frozen=True)
class PrivateRound:
    """What a DP round produced: the training result and the spend to report."""

    result: TrainResult
    privacy: dict[str, Any]


@dataclass(frozen=True)
class Declined:
    """The site declined the round; ``detail`` is the machine-readable reason."""

    status: str
    detail: dict[str, Any]


def _history(releases: list[Release]) -> dict[str, list[float] | list[int]]:
    return {
        "noise-multipliers": [r.noise_multiplier for r in releases],
        "sample-rates": [r.sample_rate for r in releases],
        "steps": [r.steps for r in releases],
    }


def _sync_state(context: Context, ledger: SiteLedger) -> None:
    """Compare the accountant history the node keeps in memory with the ledger.

    The node's ``Context.state`` carries the history (σ, q, steps per round) between rounds;
    the ledger on disk is the source of truth. A node restarted since (empty state) simply
    continues from the ledger; a state that disagrees with the ledger is reported, and the
    ledger wins.
    """
    record = context.state.config_records.get(STATE_KEY)
    if record is None:
        return
    remembered = {key: record.get(key, []) for key in _history([])}
    same = (
        record.get("head") == ledger.head
        and record.get("path") == str(ledger.path)
        and remembered == _history(ledger.releases())
    )
    if not same:
        logger.warning(
            "site %s: node state (%d rounds) disagrees with ledger %s (%d rounds); "
            "continuing from the ledger, the source of truth",
            ledger.site,
            len(record.get("steps", [])),  # type: ignore[arg-type]
            ledger.path,
            len(ledger.entries),
        )


def _remember(context: Context, ledger: SiteLedger) -> None:
    context.state.config_records[STATE_KEY] = ConfigRecord(
        {
            "path": str(ledger.path),
            "head": ledger.head,
            **_history(ledger.releases()),
        }
    )


def train_with_privacy(
    model: PeftModel,
    train_set: TokenizedDataset,
    *,
    site: SiteSpec,
    config: RunConfig,
    context: Context,
    run_id: str,
    server_round: int,
    pad_id: int,
    device: torch.device,
    bf16: bool,
) -> PrivateRound | Declined:
    """Run one DP round if the site's budget allows it, and record it in the site's ledger.

    Raises
    ------
    ConfigError
        For an impossible privacy setting or an unreachable target ε.
    LedgerError
        For a corrupted or altered ledger, or a ledger of other data.
    """
    fingerprint = data_fingerprint(site.train_file)
    records = len(train_set)
    policy = site_policy(
        config, context.node_config, site, records=records, data_fingerprint=fingerprint
    )
    ledger = SiteLedger.open(
        policy.ledger_dir,
        site=site.name,
        data_fingerprint=fingerprint,
        records=records,
        start_new=policy.start_new_ledger,
    )
    _sync_state(context, ledger)
    calibrations = context.state.config_records.setdefault(CALIBRATION_KEY, ConfigRecord())
    decision = decide_round(config, policy, ledger, records=records, calibrations=calibrations)
    if not decision.allowed:
        return _decline(site, policy, decision)
    settings = DpSettings(
        noise_multiplier=decision.noise_multiplier,
        max_grad_norm=config.max_grad_norm,
        sample_rate=decision.plan.sample_rate,
        steps=decision.plan.steps,
        mode=config.dp_mode,
        secure_rng=policy.secure_rng,
    )
    result = dp_train_locally(
        model,
        train_set,
        config=config,
        settings=settings,
        pad_id=pad_id,
        device=device,
        bf16=bf16,
    )
    release = Release(settings.noise_multiplier, settings.sample_rate, settings.steps)
    lifetime = _epsilons_after(ledger.releases(), release, policy.delta, decision, config)
    if ledger.releases(run_id) == ledger.releases():
        this_run = lifetime  # the data's whole history is this run's
    else:
        this_run = epsilons([*ledger.releases(run_id), release], delta=policy.delta)
    entry = LedgerEntry(
        run_id=run_id,
        round=server_round,
        steps=settings.steps,
        sample_rate=settings.sample_rate,
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        delta=policy.delta,
        accountant=config.accountant,
        epsilon_prv=lifetime["prv"],
        epsilon_rdp=lifetime["rdp"],
        time=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
    )
    ledger.append(entry)
    _remember(context, ledger)
    spent = lifetime[config.accountant]
    privacy = {
        **entry.to_json(),
        "site": site.name,
        "records": records,
        "data-fingerprint": fingerprint,
        "ledger": str(policy.ledger_dir.resolve()),
        "budget-epsilon": policy.budget_epsilon,
        "run-epsilon-prv": this_run["prv"],
        "run-epsilon-rdp": this_run["rdp"],
        "epsilon": spent,
        "budget-left": policy.budget_epsilon - spent,
        "dp-mode": settings.mode,
    }
    logger.info(
        "site %s round %d: %d DP steps (q=%.4g, sigma=%.4g, C=%g); epsilon %.4g of budget %g",
        site.name,
        server_round,
        settings.steps,
        settings.sample_rate,
        settings.noise_multiplier,
        settings.max_grad_norm,
        spent,
        policy.budget_epsilon,
    )
    return PrivateRound(result=result, privacy=privacy)


def _epsilons_after(
    history: list[Release],
    release: Release,
    delta: float,
    decision: RoundDecision,
    config: RunConfig,
) -> dict[AccountantName, float]:
    """Lifetime ε after the round by both accountants; the guard already computed one."""
    other: AccountantName = "rdp" if config.accountant == "prv" else "prv"
    return {
        config.accountant: decision.after,
        other: epsilon([*history, release], delta=delta, accountant=other),
    }


def _decline(site: SiteSpec, policy: SitePolicy, decision: RoundDecision) -> Declined:
    reason = (
        f"site {site.name}: training this round would bring epsilon from {decision.spent:.6g} "
        f"to {decision.after:.6g}, above its budget {policy.budget_epsilon:g}"
    )
    logger.warning("%s; not training", reason)
    return Declined(
        status=BUDGET_EXHAUSTED,
        detail={
            "epsilon-spent": decision.spent,
            "epsilon-next": decision.after,
            "budget-epsilon": policy.budget_epsilon,
            "reason": reason,
        },
    )
