"""One DP training round at a site: policy, ledger, budget guard, DP-SGD, durable record.

Order matters: the ledger is locked, opened and validated before anything trains, the guard
decides with the exact accountant value, and the round is appended (fsynced) to the ledger
*before* the update leaves the site, so a crash can over-count a site's spend but never
under-count it. The ledger's lock is held from the read to the append: a second run on the same
data waits for it (bounded) and then sees the first run's spend.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ConfigRecord, Context
from peft import PeftModel

from fedlora.clients.dp_training import DpSettings, dp_train_locally
from fedlora.clients.site_policy import SitePolicy, ledger_delta, new_ledger_delta, site_policy
from fedlora.clients.site_privacy import RoundDecision, decide_round
from fedlora.clients.training import TrainResult
from fedlora.config import RunConfig
from fedlora.data import TokenizedDataset
from fedlora.privacy.accounting import AccountantName, Release, epsilon, epsilons
from fedlora.privacy.ledger import SiteLedger
from fedlora.privacy.ledger_entry import LedgerEntry
from fedlora.privacy.ledger_storage import data_fingerprint
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
    with SiteLedger.locked(
        policy.ledger_dir,
        site=site.name,
        data_fingerprint=fingerprint,
        records=records,
        delta=new_ledger_delta(policy, site.train_file, fingerprint),
        start_new=policy.start_new_ledger,
        holder=f"run {run_id} round {server_round}",
    ) as ledger:
        _sync_state(context, ledger)
        calibrations = context.state.config_records.setdefault(CALIBRATION_KEY, ConfigRecord())
        decision = decide_round(
            config,
            policy,
            ledger,
            records=records,
            run_id=run_id,
            server_round=server_round,
            calibrations=calibrations,
        )
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
        delta = ledger_delta(policy, ledger, site.name)
        entry = _record(ledger, settings, decision, delta, config, run_id, server_round)
        _remember(context, ledger)
    this_run = _run_epsilons(ledger, entry, run_id, delta)
    spent = entry.epsilon_prv if config.accountant == "prv" else entry.epsilon_rdp
    privacy = {
        **entry.to_json(),
        "site": site.name,
        "records": records,
        "data-fingerprint": fingerprint,
        "ledger": str(policy.ledger_dir.resolve()),
        "ledger-lines": ledger.lines,
        "ledger-head": ledger.head,
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


def _record(
    ledger: SiteLedger,
    settings: DpSettings,
    decision: RoundDecision,
    delta: float,
    config: RunConfig,
    run_id: str,
    server_round: int,
) -> LedgerEntry:
    """Append the trained round to the ledger (fsynced) and return its entry."""
    release = Release(settings.noise_multiplier, settings.sample_rate, settings.steps)
    lifetime = _epsilons_after(ledger.releases(), release, delta, decision, config)
    entry = LedgerEntry(
        run_id=run_id,
        round=server_round,
        steps=settings.steps,
        sample_rate=settings.sample_rate,
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        delta=delta,
        accountant=config.accountant,
        epsilon_prv=lifetime["prv"],
        epsilon_rdp=lifetime["rdp"],
        time=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
    )
    ledger.append(entry)
    return entry


def _run_epsilons(
    ledger: SiteLedger, entry: LedgerEntry, run_id: str, delta: float
) -> dict[AccountantName, float]:
    """ε of this run's rounds alone (the ledger already holds ``entry``)."""
    if ledger.releases(run_id) == ledger.releases():
        return {"prv": entry.epsilon_prv, "rdp": entry.epsilon_rdp}  # the whole history
    return epsilons(ledger.releases(run_id), delta=delta)


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
    budget = policy.budget_epsilon
    left = budget - decision.spent
    if decision.after > budget:
        reason = (
            f"site {site.name}: training this round would bring epsilon from "
            f"{decision.spent:.6g} to {decision.after:.6g}, above its budget {budget:g}"
        )
    else:
        reason = (
            f"site {site.name}: the run's {decision.rounds_left} remaining round(s) at noise "
            f"multiplier {decision.noise_multiplier:.4g} would bring epsilon from "
            f"{decision.spent:.6g} to {decision.planned:.6g}, above its budget {budget:g} "
            f"({left:.6g} left); not starting what cannot finish: lower target-epsilon, run "
            "fewer rounds, or set fit-budget to raise the noise until the run fits"
        )
    logger.warning("%s; not training", reason)
    return Declined(
        status=BUDGET_EXHAUSTED,
        detail={
            "epsilon-spent": decision.spent,
            "epsilon-next": decision.after,
            "epsilon-planned": decision.planned,
            "rounds-planned": decision.rounds_left,
            "budget-epsilon": budget,
            "budget-left": left,
            "reason": reason,
        },
    )
