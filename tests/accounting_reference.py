"""Independent reference accountants for tests: Google's dp_accounting plus exact quadrature.

dp_accounting's RDP at fractional orders is a looser upper bound than the true RDP (it sums
the absolute values of the series terms), so the exact reference takes the integer orders from
dp_accounting and integrates the fractional ones numerically (see
``tests/unit/test_privacy_accounting.py`` for the evidence).
"""

import math

import dp_accounting
import numpy as np
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon as rdp_to_dp
from scipy import integrate, optimize

# Opacus's RDPAccountant.DEFAULT_ALPHAS, written out so a change in Opacus is noticed.
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def sgm_event(q: float, sigma: float, steps: int):
    """``steps`` Poisson-subsampled Gaussian steps, as a dp_accounting event."""
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )


def relative_difference(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def log_a_exact(q: float, sigma: float, alpha: float) -> float:
    """log E_{z~N(0,σ²)}[((1-q) + q·exp((2z-1)/(2σ²)))^α] by adaptive quadrature.

    The Poisson-subsampled Gaussian's RDP at order α is this over (α - 1) (Mironov et al.
    2019, Sec 3.1); integrated in scaled form so that no term overflows.
    """
    log_q, log_1mq, s2 = math.log(q), math.log1p(-q), sigma * sigma

    def log_f(z: float) -> float:
        mix = np.logaddexp(log_1mq, log_q + (2 * z - 1) / (2 * s2))
        return -z * z / (2 * s2) - math.log(sigma * math.sqrt(2 * math.pi)) + alpha * mix

    # The integrand has its mass near z = 0 and near z = α (the shifted Gaussian's mode).
    lo, hi = -40 * sigma, alpha + 40 * sigma
    mode = optimize.minimize_scalar(lambda z: -log_f(z), bounds=(lo, hi), method="bounded").x
    scale = max(log_f(0.0), log_f(alpha), log_f(mode))
    value, _ = integrate.quad(
        lambda z: math.exp(log_f(z) - scale),
        lo,
        hi,
        points=sorted({0.0, 0.5, alpha, float(mode)}),
        epsabs=0,
        epsrel=1e-13,
        limit=500,
    )
    return scale + math.log(value)


def exact_rdp_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    integers = [a for a in ORDERS if float(a).is_integer()]
    exact = RdpAccountant(orders=integers)
    exact.compose(sgm_event(q, sigma, steps))
    by_order = dict(zip(integers, exact.rdp, strict=True))
    rdp = [
        by_order[a] if a in by_order else steps * log_a_exact(q, sigma, a) / (a - 1) for a in ORDERS
    ]
    return float(rdp_to_dp(ORDERS, rdp, delta)[0])


def pld_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """dp_accounting's PLD ε, discretised finely enough to sit within 0.01 of the truth."""
    pld = PLDAccountant(value_discretization_interval=min(1e-4, 0.01 / steps))
    pld.compose(sgm_event(q, sigma, steps))
    return float(pld.get_epsilon(delta))
