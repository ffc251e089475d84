"""Privacy accounting for DP-SGD: composition, ε, noise calibration, the DP step plan.

Pure functions, keyword-only, no Flower and no training code. ε values are the accountants'
own values (Opacus PRV / RDP) with no margin added or removed: a budget check compares them
as they are.

A *release* is one homogeneous stretch of DP-SGD: ``steps`` Poisson-subsampled Gaussian steps
at sample rate ``q`` and noise multiplier ``σ``. Composition is commutative, so releases with
the same ``(σ, q)`` are merged (their steps summed) before the accountant runs: ε after R rounds
of ``s`` steps is then the very same computation as one accountant run over ``R·s`` steps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from fedlora.errors import ConfigError
from fedlora.privacy import noise_search
from fedlora.privacy.sgm_prv import guide_prv_epsilon, prv_epsilon
from fedlora.privacy.sgm_rdp import rdp_epsilon

AccountantName = Literal["prv", "rdp"]
ACCOUNTANTS: tuple[AccountantName, ...] = ("prv", "rdp")
PRV_EPS_ERROR = 0.01
"""Opacus's default PRV ε discretisation error; its reported ε is the upper bound."""
CALIBRATION_TOLERANCE = 0.01
"""Largest gap below the target ε that noise calibration accepts."""
MAX_CALIBRATED_NOISE = 100.0
"""A target that needs more noise than this is refused as unreachable: the noise would be
a hundred times the clipping norm, drowning any update (and the search would take minutes)."""


@dataclass(frozen=True)
class Release:
    """``steps`` DP-SGD steps at sample rate ``sample_rate`` and noise ``noise_multiplier``."""

    noise_multiplier: float
    sample_rate: float
    steps: int


@dataclass(frozen=True)
class StepPlan:
    """How a site's local round is sampled: Poisson rate and the number of steps."""

    records: int
    sample_rate: float
    steps: int


def check_accountant(name: str) -> AccountantName:
    """Return ``name`` as an accountant name or raise a :class:`ConfigError` listing them."""
    if name not in ACCOUNTANTS:
        raise ConfigError(f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANTS)}")
    return name


def compose(releases: Iterable[Release]) -> list[tuple[float, float, int]]:
    """Merge releases sharing ``(σ, q)`` into Opacus accountant history entries.

    Returns
    -------
    list of tuple
        ``(noise_multiplier, sample_rate, steps)`` in order of first appearance, steps summed.
    """
    merged: dict[tuple[float, float], int] = {}
    for release in releases:
        if release.steps <= 0:
            continue
        key = (float(release.noise_multiplier), float(release.sample_rate))
        merged[key] = merged.get(key, 0) + int(release.steps)
    return [(sigma, q, steps) for (sigma, q), steps in merged.items()]


def epsilon(releases: Iterable[Release], *, delta: float, accountant: AccountantName) -> float:
    """ε at ``delta`` after all ``releases``, by the named accountant.

    Returns
    -------
    float
        0.0 for no steps; ``inf`` when any release has σ = 0 (no privacy at all).
    """
    check_delta(delta)
    return _history_epsilon(tuple(compose(releases)), delta, accountant)


@functools.lru_cache(maxsize=4096)
def _history_epsilon(
    history: tuple[tuple[float, float, int], ...], delta: float, accountant: AccountantName
) -> float:
    """ε of a composed history, memoised on exactly the history, δ and accountant.

    Opacus's own value: :mod:`fedlora.privacy.sgm_prv` / :mod:`fedlora.privacy.sgm_rdp` are
    its accountants' computations, bit for bit, at a fraction of the cost.
    """
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf
    if accountant == "rdp":
        return rdp_epsilon(history, delta=delta)
    return prv_epsilon(history, delta=delta, eps_error=PRV_EPS_ERROR)


def epsilons(releases: Sequence[Release], *, delta: float) -> dict[AccountantName, float]:
    """ε at ``delta`` by every accountant: ``{"prv": ..., "rdp": ...}``."""
    return {name: epsilon(releases, delta=delta, accountant=name) for name in ACCOUNTANTS}


def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName,
) -> float:
    """Smallest noise multiplier (to :data:`CALIBRATION_TOLERANCE`) reaching ``target_epsilon``.

    Parameters
    ----------
    target_epsilon, delta
        The (ε, δ) the whole planned run must stay within.
    sample_rate, steps
        The Poisson rate and the total planned steps (rounds × steps per round).
    accountant
        The accountant that defines ε.

    Raises
    ------
    ConfigError
        When the target cannot be reached for these steps at any noise level.
    """
    if target_epsilon <= 0 or not math.isfinite(target_epsilon):
        raise ConfigError(f"target epsilon must be a positive number, got {target_epsilon}")
    check_target_reachable(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant,
    )
    try:
        sigma = _calibrated(
            float(target_epsilon), float(delta), float(sample_rate), int(steps), accountant
        )
    except ValueError as exc:
        raise ConfigError(
            f"target epsilon {target_epsilon} at delta {delta:.3g} is unreachable for "
            f"{steps} steps at sample rate {sample_rate:.4g}: {exc}"
        ) from exc
    return float(sigma)


@functools.lru_cache(maxsize=256)
def _calibrated(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: AccountantName
) -> float:
    """Opacus ``get_noise_multiplier``'s answer, memoised: sites with equal inputs share it.

    The search is Opacus's bisection replayed decision for decision against the exact ε
    (:func:`fedlora.privacy.noise_search.opacus_bisection`); only the number of exact ε
    evaluations changes.
    """
    exact = noise_search.MonotoneEpsilon(
        lambda sigma: epsilon(
            [Release(sigma, sample_rate, steps)], delta=delta, accountant=accountant
        )
    )
    search = functools.partial(
        noise_search.opacus_bisection, target=target_epsilon, tolerance=CALIBRATION_TOLERANCE
    )
    sigma = noise_search.steered(
        search,
        exact,
        _guide(exact, [], sample_rate, steps, delta, accountant),
        levels=(target_epsilon, target_epsilon - CALIBRATION_TOLERANCE),
    )
    assert sigma is not None  # the Opacus search returns a σ or raises
    return sigma


def _guide(
    exact: noise_search.MonotoneEpsilon,
    history: Sequence[Release],
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: AccountantName,
) -> Callable[[float], float]:
    """An estimate of ε(σ) to steer a σ search; the exact ε itself where that is cheap (RDP)."""
    if accountant == "rdp":
        return exact.value

    def guide(sigma: float) -> float:
        history_sigma = compose([*history, Release(sigma, sample_rate, steps)])
        if any(s == 0 for s, _, _ in history_sigma):
            return math.inf
        return guide_prv_epsilon(history_sigma, delta=delta, eps_error=PRV_EPS_ERROR)

    return guide


def calibrate_noise_to_fit(
    *,
    budget_epsilon: float,
    delta: float,
    history: Sequence[Release],
    sample_rate: float,
    steps: int,
    accountant: AccountantName,
) -> float | None:
    """Smallest noise multiplier (to :data:`CALIBRATION_TOLERANCE`) whose ``steps`` fit a budget.

    The budget bounds the composition of ``history`` (what the data already spent) and the
    ``steps`` planned at the returned σ, by the exact accountant value: ε(history + planned)
    ≤ ``budget_epsilon``. The search is Opacus ``get_noise_multiplier``'s (double the upper
    bound, then bisect) with the history composed in.

    Returns
    -------
    float or None
        The noise multiplier, or ``None`` when even :data:`MAX_CALIBRATED_NOISE` does not fit
        (the history alone may already be at the budget).
    """
    history = list(history)

    def spent(sigma: float) -> float:
        planned = Release(sigma, sample_rate, steps)
        return epsilon([*history, planned], delta=delta, accountant=accountant)

    exact = noise_search.MonotoneEpsilon(spent)
    search = functools.partial(
        noise_search.fit_bisection,
        budget=budget_epsilon,
        tolerance=CALIBRATION_TOLERANCE,
        max_sigma=MAX_CALIBRATED_NOISE,
    )
    return noise_search.steered(
        search,
        exact,
        _guide(exact, history, sample_rate, steps, delta, accountant),
        levels=(budget_epsilon, budget_epsilon - CALIBRATION_TOLERANCE),
    )


def check_target_reachable(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName,
) -> None:
    """Refuse a target ε that needs more noise than :data:`MAX_CALIBRATED_NOISE`.

    Raises
    ------
    ConfigError
        When even that noise multiplier gives more than ``target_epsilon``.
    """
    if target_epsilon <= 0 or not math.isfinite(target_epsilon):
        raise ConfigError(f"target epsilon must be a positive number, got {target_epsilon}")
    loosest = epsilon(
        [Release(MAX_CALIBRATED_NOISE, sample_rate, steps)], delta=delta, accountant=accountant
    )
    if loosest > target_epsilon:
        raise ConfigError(
            f"target epsilon {target_epsilon} at delta {delta:.3g} is unreachable for {steps} "
            f"steps at sample rate {sample_rate:.4g}: even noise multiplier "
            f"{MAX_CALIBRATED_NOISE:g} gives epsilon {loosest:.4g}"
        )


def check_delta(delta: float) -> None:
    """Refuse a δ outside the open interval (0, 1)."""
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")


def default_delta(records: int) -> float:
    """δ for a site of ``records`` examples: a tenth of ``1 / records``."""
    if records < 1:
        raise ConfigError("a site with no records has no privacy accounting")
    return 0.1 / records


def plan_steps(*, records: int, batch_size: int, local_epochs: int, max_steps: int = 0) -> StepPlan:
    """The Poisson sample rate and step count of one local round.

    The expected batch is ``batch_size`` (``q = batch_size / records``, capped at 1) and an
    epoch is ``ceil(records / batch_size)`` steps; ``max_steps`` caps the round when set.
    """
    if records < 1:
        raise ConfigError("a site with no records cannot train")
    rate = min(1.0, batch_size / records)
    steps = local_epochs * math.ceil(records / batch_size)
    if max_steps:
        steps = min(steps, max_steps)
    return StepPlan(records=records, sample_rate=rate, steps=steps)
