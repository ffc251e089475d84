"""fedlora's fast accounting is Opacus's accounting: the same floats, bit for bit.

Every ε here is compared with ``==`` against Opacus computing it the slow way; calibration
against Opacus ``get_noise_multiplier`` itself. The memo and the monotonicity the σ search
relies on are tested directly.
"""

import itertools
import math

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV
from opacus.accountants.analysis.prv import TruncatedPrivacyRandomVariable as OpacusTruncated
from opacus.accountants.utils import get_noise_multiplier

from fedlora.privacy import accounting, noise_search
from fedlora.privacy.accounting import (
    CALIBRATION_TOLERANCE,
    Release,
    calibrate_noise,
    calibrate_noise_to_fit,
    epsilon,
)
from fedlora.privacy.sgm_prv import _TruncatedPRV, prv_epsilon, safe_domain
from fedlora.privacy.sgm_rdp import DEFAULT_ORDERS, rdp_epsilon, rdp_per_step

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the")


def opacus_epsilon(history, *, delta, accountant):
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = list(history)
    if accountant == "rdp":
        return float(acc.get_epsilon(delta=delta))
    return float(acc.get_epsilon(delta=delta, eps_error=0.01))


# --- RDP: the per-step curve ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "sigma"),
    [(0.001, 0.5), (0.016, 0.638), (0.05, 1.0), (0.13, 0.8715), (0.3, 0.3), (0.5, 2.0),
     (0.9, 5.0), (0.05, 100.0), (1.0, 1.5), (0.2, 0.6)],
)  # fmt: skip
def test_rdp_per_step_is_opacus_bit_for_bit(q, sigma):
    theirs = rdp_analysis.compute_rdp(
        q=q, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
    )
    ours = rdp_per_step(noise_multiplier=sigma, sample_rate=q)
    assert np.array_equal(np.array(ours), theirs)


def test_orders_are_opacus_default_alphas():
    assert list(DEFAULT_ORDERS) == RDPAccountant.DEFAULT_ALPHAS


# --- ε over single releases and mixed histories, both accountants ------------------------------

HISTORIES = [
    [(0.8715, 0.13, 24)],
    [(0.638, 0.016, 189)],
    [(2.0, 0.5, 10)],
    [(5.0, 0.01, 1000)],
    [(1.0, 0.05, 60), (2.0, 0.05, 40), (0.8, 0.1, 7)],
    [(0.9, 0.13, 12), (1.1, 0.13, 12)],
]


@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("delta", [1e-3, 1e-5])
def test_prv_epsilon_is_opacus_bit_for_bit(history, delta):
    assert prv_epsilon(history, delta=delta, eps_error=0.01) == opacus_epsilon(
        history, delta=delta, accountant="prv"
    )


@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("delta", [1e-3, 1e-5])
def test_rdp_epsilon_is_opacus_bit_for_bit(history, delta):
    assert rdp_epsilon(history, delta=delta) == opacus_epsilon(
        history, delta=delta, accountant="rdp"
    )


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_multi_round_mixed_releases_match_opacus(accountant):
    releases = [
        Release(1.2, 0.1, 8),
        Release(0.9, 0.2, 5),
        Release(1.2, 0.1, 8),
        Release(0.9, 0.1, 8),
    ]
    history = [(1.2, 0.1, 16), (0.9, 0.2, 5), (0.9, 0.1, 8)]
    assert epsilon(releases, delta=1e-4, accountant=accountant) == opacus_epsilon(
        history, delta=1e-4, accountant=accountant
    )


def test_truncated_prv_mean_is_opacus_bit_for_bit():
    prv = PoissonSubsampledGaussianPRV(0.13, 0.8715)
    domain = safe_domain([(0.8715, 0.13, 24)], eps_error=0.01, delta_error=1e-6)
    ours = _TruncatedPRV(prv, domain.t_min, domain.t_max)
    theirs = OpacusTruncated(prv, domain.t_min, domain.t_max)
    for t in np.linspace(domain.t_min - 1, domain.t_max + 1, 997):
        assert ours._scalar_cdf(float(t)) == float(theirs.cdf(float(t)))
    assert ours.mean() == theirs.mean()


# --- the memo: one entry per distinct release ---------------------------------------------------


def test_memo_keys_separate_releases_differing_in_the_12th_digit():
    sigma, near = 0.87, 0.87 * (1 + 1e-12)
    assert sigma != near
    before = rdp_per_step.cache_info().currsize
    a = rdp_per_step(noise_multiplier=sigma, sample_rate=0.13)
    b = rdp_per_step(noise_multiplier=near, sample_rate=0.13)
    c = rdp_per_step(noise_multiplier=sigma, sample_rate=0.13 * (1 + 1e-12))
    assert rdp_per_step.cache_info().currsize >= before + 2  # σ may have been cached already
    assert a != b and a != c and b != c
    assert rdp_per_step(noise_multiplier=sigma, sample_rate=0.13) is a

    delta = 1e-3
    e1 = epsilon([Release(sigma, 0.13, 24)], delta=delta, accountant="prv")
    e2 = epsilon([Release(near, 0.13, 24)], delta=delta, accountant="prv")
    assert e1 != e2
    assert e1 == opacus_epsilon([(sigma, 0.13, 24)], delta=delta, accountant="prv")
    assert e2 == opacus_epsilon([(near, 0.13, 24)], delta=delta, accountant="prv")


def test_calibration_memo_is_keyed_by_every_input():
    args = {"target_epsilon": 4.0, "delta": 1e-3, "steps": 24, "accountant": "rdp"}
    a = calibrate_noise(sample_rate=0.13, **args)
    b = calibrate_noise(sample_rate=0.26, **args)
    assert a != b
    assert calibrate_noise(sample_rate=0.13, **args) == a
    assert calibrate_noise(sample_rate=0.13, **{**args, "steps": 48}) > a


# --- monotonicity: the fact the σ search leans on ------------------------------------------------


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_epsilon_is_non_increasing_in_sigma(accountant):
    sigmas = np.linspace(0.80, 0.95, 31)  # around the calibration below, spacing 0.005
    eps = [
        epsilon([Release(float(s), 0.13, 24)], delta=1e-3, accountant=accountant) for s in sigmas
    ]
    assert all(b <= a for a, b in itertools.pairwise(eps))


# --- calibration: Opacus's answer, minimal ---------------------------------------------


@pytest.mark.parametrize(
    ("target", "delta", "q", "steps", "accountant"),
    [(4.0, 1e-3, 0.13, 24, "prv"), (2.0, 1e-5, 0.05, 200, "rdp"), (1.0, 1e-5, 0.05, 500, "rdp")],
)
def test_calibration_is_opacus_get_noise_multiplier(target, delta, q, steps, accountant):
    ours = calibrate_noise(
        target_epsilon=target, delta=delta, sample_rate=q, steps=steps, accountant=accountant
    )
    theirs = get_noise_multiplier(
        target_epsilon=target,
        target_delta=delta,
        sample_rate=q,
        steps=steps,
        accountant=accountant,
        epsilon_tolerance=CALIBRATION_TOLERANCE,
    )
    assert ours == theirs


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_calibrated_sigma_is_the_smallest_the_search_finds(accountant):
    q, steps, delta, target = 0.13, 24, 1e-3, 4.0
    sigma = calibrate_noise(
        target_epsilon=target, delta=delta, sample_rate=q, steps=steps, accountant=accountant
    )
    reached = epsilon([Release(sigma, q, steps)], delta=delta, accountant=accountant)
    assert reached <= target
    assert target - reached <= CALIBRATION_TOLERANCE
    # The search's last lower end, just below σ, misses the target.
    exact = noise_search.MonotoneEpsilon(
        lambda s: epsilon([Release(s, q, steps)], delta=delta, accountant=accountant)
    )
    _, path = noise_search.opacus_bisection(exact, target=target, tolerance=CALIBRATION_TOLERANCE)
    below = max(s for s in path if s < sigma)
    assert epsilon([Release(below, q, steps)], delta=delta, accountant=accountant) >= target


def plain_fit(spent, budget, tolerance, max_sigma):
    """The budget fit as it was written before the replay: every ε computed."""
    if spent(max_sigma) > budget:
        return None
    low, high = 0.0, min(10.0, max_sigma)
    eps_high = spent(high)
    while eps_high > budget:
        low, high = high, min(2 * high, max_sigma)
        eps_high = spent(high)
    while budget - eps_high > tolerance and high - low > 1e-4 * high:
        middle = (low + high) / 2
        eps = spent(middle)
        if eps <= budget:
            high, eps_high = middle, eps
        else:
            low = middle
    return high


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_fit_to_budget_is_the_plain_search(accountant):
    history = [Release(1.0, 0.13, 12), Release(1.3, 0.13, 12)]
    q, steps, delta, budget = 0.13, 24, 1e-3, 6.0

    def spent(s):
        return epsilon([*history, Release(s, q, steps)], delta=delta, accountant=accountant)

    ours = calibrate_noise_to_fit(
        budget_epsilon=budget,
        delta=delta,
        history=history,
        sample_rate=q,
        steps=steps,
        accountant=accountant,
    )
    assert ours == plain_fit(spent, budget, CALIBRATION_TOLERANCE, accounting.MAX_CALIBRATED_NOISE)


# --- the replay itself, on a function with known answers ---------------------------------


def plain_opacus(eps, target, tolerance):
    eps_high, sigma_low, sigma_high = math.inf, 0, 10
    while eps_high > target:
        sigma_high = 2 * sigma_high
        eps_high = eps(sigma_high)
    while target - eps_high > tolerance:
        sigma = (sigma_low + sigma_high) / 2
        e = eps(sigma)
        if e < target:
            sigma_high, eps_high = sigma, e
        else:
            sigma_low = sigma
    return sigma_high


@pytest.mark.parametrize("target", [0.05, 0.3, 1.0, 2.5, 7.0, 40.0])
@pytest.mark.parametrize("guide_error", [0.0, 0.2, -0.5])
def test_replay_matches_plain_bisection_whatever_the_guide(target, guide_error):
    def curve(s):
        return 3.0 / s + 0.1 / s**2

    exact = noise_search.MonotoneEpsilon(curve)
    search = lambda decide: noise_search.opacus_bisection(  # noqa: E731
        decide, target=target, tolerance=0.01
    )
    ours = noise_search.steered(
        search, exact, lambda s: curve(s) * (1 + guide_error), levels=(target, target - 0.01)
    )
    assert ours == plain_opacus(curve, target, 0.01)
    if guide_error == 0.0:
        assert len(exact.known) <= 4  # the answer and its neighbours on the path
