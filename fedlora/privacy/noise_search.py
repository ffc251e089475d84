"""σ searches that return exactly what a plain bisection would, with a handful of ε evaluations.

fedlora's calibrations are bisections on σ (Opacus ``get_noise_multiplier``'s, and the budget
fit's). A bisection's answer depends only on its yes/no decisions ("is ε(σ) above the
target?", "is the gap still above the tolerance?"), and each exact ε costs tens of ms. Here the
bisection is *replayed* against :class:`MonotoneEpsilon`, which answers a decision from ε values
already computed whenever they settle it, and computes ε exactly only when they do not.

The fact used: **ε is non-increasing in σ** (more Gaussian noise is a post-processing of less
noise, so no accountant that bounds the subsampled Gaussian tightly reports more ε for it; for
Opacus's numerical PRV and RDP values this is checked across a fine σ grid in the tests). So
ε(σ) ≤ ε(s) for every computed s ≤ σ, and ε(σ) ≥ ε(s) for every computed s ≥ σ.

To make the computed values the ones the decisions need, a cheap guide (an estimate of ε) is
first root-found at the two thresholds; the bisection is replayed against the guide's
interpolant to predict its path, and the exact ε is computed at the path's last points. The
exact replay then decides everything else from those. A wrong guide costs extra exact
evaluations, never a different answer.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

MAX_SIGMA = 1e6
"""Opacus ``get_noise_multiplier``'s limit on σ."""


class MonotoneEpsilon:
    """ε(σ), computed on demand; decisions settled by monotonicity where they can be.

    Parameters
    ----------
    epsilon
        The exact ε as a function of σ (non-increasing).
    """

    def __init__(self, epsilon: Callable[[float], float]) -> None:
        self._epsilon = epsilon
        self.known: dict[float, float] = {}

    def value(self, sigma: float) -> float:
        """ε(σ), computed once."""
        if sigma not in self.known:
            self.known[sigma] = self._epsilon(sigma)
        return self.known[sigma]

    def _bounds(self, sigma: float) -> tuple[float, float]:
        if sigma in self.known:
            value = self.known[sigma]
            return value, value
        upper = min((e for s, e in self.known.items() if s <= sigma), default=math.inf)
        lower = max((e for s, e in self.known.items() if s >= sigma), default=-math.inf)
        return lower, upper

    def above(self, sigma: float, level: float) -> bool:
        """ε(σ) > level, computing ε(σ) only if the known values leave it open."""
        lower, upper = self._bounds(sigma)
        if lower > level:
            return True
        if upper <= level:
            return False
        return self.value(sigma) > level

    def below(self, sigma: float, level: float) -> bool:
        """ε(σ) < level, computing ε(σ) only if the known values leave it open."""
        lower, upper = self._bounds(sigma)
        if upper < level:
            return True
        if lower >= level:
            return False
        return self.value(sigma) < level

    def gap_above(self, sigma: float, level: float, tolerance: float) -> bool:
        """Whether level − ε(σ) > tolerance (rounded subtraction is monotone in ε)."""
        lower, upper = self._bounds(sigma)
        if level - upper > tolerance:
            return True
        if not level - lower > tolerance:
            return False
        return level - self.value(sigma) > tolerance


def opacus_bisection(
    decide: MonotoneEpsilon, *, target: float, tolerance: float
) -> tuple[float, list[float]]:
    """Opacus ``get_noise_multiplier``'s search, decision for decision.

    Returns
    -------
    tuple
        The σ it returns, and every σ it looked at in order (the path).

    Raises
    ------
    ValueError
        As Opacus: "The privacy budget is too low." past :data:`MAX_SIGMA`.
    """
    path: list[float] = []
    sigma_low: float = 0
    sigma_high: float = 10
    started = False
    # Opacus starts from ε_high = inf, so the doubling loop always runs at least once.
    while not started or decide.above(sigma_high, target):
        started = True
        sigma_high = 2 * sigma_high
        path.append(sigma_high)
        if sigma_high > MAX_SIGMA:
            raise ValueError("The privacy budget is too low.")
    while decide.gap_above(sigma_high, target, tolerance):
        sigma = (sigma_low + sigma_high) / 2
        path.append(sigma)
        if decide.below(sigma, target):
            sigma_high = sigma
        else:
            sigma_low = sigma
    return sigma_high, path


def fit_bisection(
    decide: MonotoneEpsilon, *, budget: float, tolerance: float, max_sigma: float
) -> tuple[float | None, list[float]]:
    """The budget fit's search: double from 10 up to ``max_sigma``, then bisect.

    Returns ``None`` when even ``max_sigma`` spends more than ``budget``.
    """
    path = [max_sigma]
    if decide.above(max_sigma, budget):
        return None, path
    low, high = 0.0, min(10.0, max_sigma)
    path.append(high)
    while decide.above(high, budget):
        low, high = high, min(2 * high, max_sigma)
        path.append(high)
    while decide.gap_above(high, budget, tolerance) and high - low > 1e-4 * high:
        middle = (low + high) / 2
        path.append(middle)
        if not decide.above(middle, budget):
            high = middle
        else:
            low = middle
    return high, path


class Interpolant:
    """Piecewise-linear ε in (log σ, log ε) through guide points: a path predictor."""

    def __init__(self, points: dict[float, float]) -> None:
        usable = sorted((s, e) for s, e in points.items() if s > 0 and e > 0)
        self._x = [math.log(s) for s, _ in usable]
        self._y = [math.log(e) for _, e in usable]

    def __call__(self, sigma: float) -> float:
        """The interpolated (or end-segment extrapolated) ε at ``sigma``."""
        x, xs, ys = math.log(sigma), self._x, self._y
        k = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
        slope = (ys[k] - ys[k - 1]) / (xs[k] - xs[k - 1])
        return math.exp(ys[k - 1] + slope * (x - xs[k - 1]))


def find_sigma(
    guide: Callable[[float], float], *, level: float, points: dict[float, float]
) -> None:
    """Add guide values around σ where guide(σ) = level to ``points``.

    A safeguarded secant (Illinois) in (log σ, log ε), started from the tightest bracket the
    points already give (else from σ = 1 and σ = 20, widened step by step).
    """

    def at(sigma: float) -> float:
        if sigma not in points:
            points[sigma] = guide(sigma)
        return points[sigma]

    if level <= 0:
        return
    low = max((s for s, e in points.items() if e > level), default=None)
    high = min((s for s, e in points.items() if e <= level), default=None)
    for _ in range(40):
        if low is not None and high is not None:
            break
        if low is None:
            # Small σ means a wide PRV domain (a slow guide): step down gently.
            low = min(1.0, high / 1.5) if high is not None else 1.0
            if at(low) <= level:
                high, low = low, None
        else:
            high = max(20.0, low * 2)
            if at(high) > level:
                low, high = high, None
    if low is None or high is None or not at(high) > 0:
        return
    target = math.log(level)
    x0, y0 = math.log(low), math.log(at(low)) - target
    x1, y1 = math.log(high), math.log(at(high)) - target
    side = 0
    for _ in range(40):
        if x1 - x0 < 1e-5:
            return
        x = (x0 * y1 - x1 * y0) / (y1 - y0)  # regula falsi, Illinois-modified
        value = at(math.exp(x))
        if not value > 0:
            return
        y = math.log(value) - target
        if abs(y) < 1e-6:
            return
        if y > 0:
            x0, y0 = x, y
            if side == 1:
                y1 /= 2
            side = 1
        else:
            x1, y1 = x, y
            if side == -1:
                y0 /= 2
            side = -1


def steered(
    search: Callable[[MonotoneEpsilon], tuple[float | None, list[float]]],
    exact: MonotoneEpsilon,
    guide: Callable[[float], float],
    *,
    levels: tuple[float, ...],
) -> float | None:
    """Run ``search`` against ``exact`` after computing ε where a guide says it will look last.

    The answer is the one ``search`` gives against the exact ε alone (the guide only chooses
    which exact values are computed first).
    """
    points: dict[float, float] = {}
    for level in levels:
        find_sigma(guide, level=level, points=points)
    if len(points) >= 2:
        predictor = MonotoneEpsilon(Interpolant(points))
        try:
            predicted, path = search(predictor)
        except ValueError:
            predicted, path = None, []
        if predicted is not None:
            # The points that settle every other decision of the path by monotonicity: the
            # answer, the largest σ below it and the smallest above it that the path visits.
            below = [s for s in path if s < predicted]
            above = [s for s in path if s > predicted]
            for sigma in (predicted, max(below, default=None), min(above, default=None)):
                if sigma is not None:
                    exact.value(sigma)
    result, _ = search(exact)
    return result
