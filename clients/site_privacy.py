"""A site's budget guard: whether it trains the proposed round, and at which σ.

The policy (:mod:`fedlora.clients.site_policy`) says what the site enforces; the guard plans the
round's steps, fixes σ (the policy's, or calibrated so that the whole planned run reaches the
target ε), and compares the data's lifetime ε after the round with the budget: exact accountant
values, no margin. δ is fixed by the ledger (:mod:`fedlora.privacy.ledger`): a site whose
configured δ differs from its ledger's is refused, whoever configured it. The guard also refuses
to *start* what it cannot finish: a round is declined when the run's remaining planned rounds at
this σ would take the data past its budget (``fit-budget`` instead raises σ until they fit).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from fedlora.clients.site_policy import SitePolicy, ledger_delta
from fedlora.config import RunConfig
from fedlora.privacy.accounting import (
    MAX_CALIBRATED_NOISE,
    AccountantName,
    Release,
    StepPlan,
    calibrate_noise,
    calibrate_noise_to_fit,
    epsilon,
    plan_steps,
)
from fedlora.privacy.ledger import SiteLedger

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundDecision:
    """The guard's verdict on a proposed round.

    ``after`` is the lifetime ε after this round; ``planned`` after this round and every
    later round the run plans (``rounds_left`` rounds in all, this one included) at the same σ.
    """

    plan: StepPlan
    noise_multiplier: float
    spent: float
    after: float
    budget: float
    planned: float
    rounds_left: int

    @property
    def allowed(self) -> bool:
        """True when the whole remaining run stays within the budget (exact values, no margin).

        A run that could train this round but not finish would spend privacy on a model it
        never completes, so the remaining plan must fit, not only the next round.
        """
        return self.after <= self.budget and self.planned <= self.budget


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
    run_id: str,
    server_round: int,
    calibrations: MutableMapping[str, Any] | None = None,
) -> RoundDecision:
    """Plan this round's steps, fix σ, and compute ε before and after it and after the run.

    σ comes from the policy, or is calibrated so that the whole planned run (``rounds`` ×
    steps per round) reaches the target ε; with ``fit-budget``, σ is raised further (never
    lowered) until the run's planned rounds fit what the data's budget has left after the
    other runs in its ledger. The budget is compared with the dataset's lifetime ε (every
    ledger entry plus this round, and plus the rounds after it up to ``rounds``) by the run's
    accountant, at the ledger's δ.

    Raises
    ------
    ConfigError
        When the target ε cannot be reached for the planned steps.
    LedgerError
        When the configured δ is not the ledger's.

    ``calibrations`` (the node's ``Context.state`` record) keeps calibrated σ between rounds:
    a calibration is deterministic but costs seconds of PRV evaluations.
    """
    delta = ledger_delta(policy, ledger, ledger.site)
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
            delta,
            plan.sample_rate,
            plan.steps * config.rounds,
            config.accountant,
        )
        sigma = _remembered(calibrations, inputs, lambda: _calibrated(*inputs))
    # Rounds before this one are in the ledger (a resumed or retried round included).
    rounds_left = max(1, config.rounds - server_round + 1)
    if config.fit_budget:
        fitted = _fit_to_budget(config, policy, ledger, plan, delta, run_id, calibrations)
        # Nothing fits: the loosest σ shows by how much, and the guard declines.
        sigma = max(sigma, MAX_CALIBRATED_NOISE if fitted is None else fitted)
    history = ledger.releases()
    this_round = Release(sigma, plan.sample_rate, plan.steps)
    after = epsilon([*history, this_round], delta=delta, accountant=config.accountant)
    planned = after
    if rounds_left > 1:
        remaining = Release(sigma, plan.sample_rate, plan.steps * rounds_left)
        planned = epsilon([*history, remaining], delta=delta, accountant=config.accountant)
    return RoundDecision(
        plan=plan,
        noise_multiplier=sigma,
        spent=_spent(ledger, delta, config.accountant),
        after=after,
        budget=policy.budget_epsilon,
        planned=planned,
        rounds_left=rounds_left,
    )


def _remembered(
    calibrations: MutableMapping[str, Any] | None,
    inputs: tuple[object, ...],
    compute: Any,
) -> Any:
    key = "|".join(repr(value) for value in inputs)
    if calibrations is not None and key in calibrations:
        return float(calibrations[key])
    value = compute()
    if calibrations is not None and value is not None:
        calibrations[key] = value
    return value


def _fit_to_budget(
    config: RunConfig,
    policy: SitePolicy,
    ledger: SiteLedger,
    plan: StepPlan,
    delta: float,
    run_id: str,
    calibrations: MutableMapping[str, Any] | None,
) -> float | None:
    """σ at which the run's ``rounds`` rounds fit the budget after the other runs' spend.

    Keyed on the other runs' history, not this run's own rounds, so every round of the run
    finds the same σ; ``None`` when no σ up to the calibration limit fits.
    """
    others = [e.release for e in ledger.entries if e.run_id != run_id]
    inputs = (
        "fit",
        policy.budget_epsilon,
        delta,
        plan.sample_rate,
        plan.steps * config.rounds,
        config.accountant,
        tuple(others),
    )

    def compute() -> float | None:
        sigma = calibrate_noise_to_fit(
            budget_epsilon=policy.budget_epsilon,
            delta=delta,
            history=others,
            sample_rate=plan.sample_rate,
            steps=plan.steps * config.rounds,
            accountant=config.accountant,
        )
        if sigma is not None:
            logger.info(
                "fit-budget: noise multiplier %.6g fits %d rounds within budget %g",
                sigma,
                config.rounds,
                policy.budget_epsilon,
            )
        return sigma

    return _remembered(calibrations, inputs, compute)  # type: ignore[no-any-return]


def _spent(ledger: SiteLedger, delta: float, accountant: AccountantName) -> float:
    """ε of the ledger so far: its last entry's value when computed at this δ, else afresh."""
    if ledger.entries and ledger.entries[-1].delta == delta:
        last = ledger.entries[-1]
        return last.epsilon_prv if accountant == "prv" else last.epsilon_rdp
    return epsilon(ledger.releases(), delta=delta, accountant=accountant)
