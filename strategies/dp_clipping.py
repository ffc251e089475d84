"""Central DP's arithmetic on updates: clipping, the fixed denominator, the adaptive clip norm.

Helpers of :class:`~fedlora.strategies.central_dp.CentralDP` (see its module docstring for the
mechanism and its privacy argument). Everything is float64 numpy, as Flower's
``flwr.supercore.differential_privacy`` helpers expect.

Adaptive noise split
    ``sigma`` is the *total* noise multiplier asked for. Flower's
    ``compute_adaptive_noise_params`` splits it into the update noise
    ``sigma_u = (sigma^-2 - (2 sigma_b)^-2)^(-1/2)`` and the clipped-count noise ``sigma_b``
    (default ``m / 20`` as in Flower), so that the two Gaussian queries together
    (sensitivities ``C / m`` and ``1 / (2m)``) compose to exactly one Gaussian mechanism of
    multiplier ``sigma`` (Andrew et al., Thm. 1). The accountant therefore uses ``sigma``. The
    split is impossible when ``sigma >= 2 sigma_b``; that is refused as a
    :class:`~fedlora.errors.ConfigError`.

Deliberate differences from Flower's ``DifferentialPrivacyServerSideAdaptiveClipping``
    Flower's wrapper feeds the fraction of *clipped* updates into ``exp(-lr * (f - gamma))``,
    which shrinks ``C`` when every update is clipped; here ``b`` is the fraction of unclipped
    updates, as in the paper, so ``C`` grows when every update is clipped. Flower also draws
    the round's noise with the already-updated ``C``; here the noise uses the ``C`` the updates
    were clipped to (the actual sensitivity), and only then is ``C`` updated for the next
    round. Flower's ``add_gaussian_noise_inplace`` uses numpy's global random state, so the
    noise is drawn here instead. A zero update is never passed to Flower's clipping helper
    (it divides by the norm).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
from flwr.supercore.differential_privacy import (
    adaptive_clip_inputs_inplace,
    compute_adaptive_noise_params,
    get_norm,
)

from fedlora.adapters import AdapterState, check_compatible
from fedlora.errors import ConfigError
from fedlora.strategies.base import SiteUpdate

Arrays = list[npt.NDArray[np.float64]]


def to_numpy(tensor: torch.Tensor) -> npt.NDArray[np.float64]:
    """A float64 copy of ``tensor`` (numpy has no bfloat16; the copy is never shared)."""
    array: npt.NDArray[np.float64] = (
        tensor.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
    )
    return array


def to_state(names: list[str], arrays: Arrays) -> AdapterState:
    """``arrays`` as an adapter state under ``names`` (float64 tensors sharing their memory)."""
    return {name: torch.from_numpy(array) for name, array in zip(names, arrays, strict=True)}


def clip_updates(
    global_state: AdapterState, updates: list[SiteUpdate], clip_norm: float
) -> tuple[AdapterState, list[SiteUpdate], int]:
    """Clip each update's distance from ``global_state`` to L2 norm ``clip_norm``, flat.

    Returns
    -------
    tuple
        The global adapter in float64; the states ``global + clip(d_i)``, each with
        ``num_examples = 1`` (the mean that follows must be uniform); and how many updates
        were within ``clip_norm`` (not clipped).

    Raises
    ------
    AdapterError
        For an update that does not fit the global adapter.
    FloatingPointError
        For an update with NaN or infinite values (it cannot be clipped).
    """
    names = list(global_state)
    base = [to_numpy(global_state[name]) for name in names]
    clipped: list[SiteUpdate] = []
    unclipped = 0
    for update in updates:
        check_compatible(global_state, update.state)
        delta = [to_numpy(update.state[name]) - g for name, g in zip(names, base, strict=True)]
        norm = get_norm(delta)
        if not math.isfinite(norm):
            bad = next(n for n, d in zip(names, delta, strict=True) if not np.isfinite(d).all())
            raise FloatingPointError(
                f"site {update.site} sent non-finite values in {bad}; it cannot be clipped"
            )
        # A zero update is within any norm; Flower's helper would divide by its norm.
        was_clipped = norm > 0 and adaptive_clip_inputs_inplace(delta, clip_norm)
        unclipped += 0 if was_clipped else 1
        restored = [g + d for g, d in zip(base, delta, strict=True)]
        clipped.append(SiteUpdate(update.site, to_state(names, restored), 1))
    return to_state(names, base), clipped, unclipped


def noisy_unclipped_fraction(*, unclipped: int, received: int, sampled: int, noise: float) -> float:
    """``b = 1/2 + (sum_i (b_i - 1/2) + noise) / m``: the released fraction of unclipped updates.

    With every sampled site present this is ``(unclipped + noise) / m``; a missing site counts
    as neutral (Andrew et al. 2021, Alg. 1).
    """
    return 0.5 + ((unclipped - received / 2) + noise) / sampled


def next_clip_norm(
    clip_norm: float, unclipped_fraction: float, *, learning_rate: float, target_quantile: float
) -> float:
    """The geometric step ``C · exp(-lr · (b - γ))`` of the clip norm toward quantile ``γ``."""
    return clip_norm * math.exp(-learning_rate * (unclipped_fraction - target_quantile))


def split_adaptive_noise(
    noise_multiplier: float, sampled: int, clipped_count_stddev: float | None
) -> tuple[float, float]:
    """Flower's split of the total sigma into ``(sigma_b, sigma_u)`` for adaptive clipping.

    ``sigma_b`` is the clipped-count noise (``None``: ``m / 20``), ``sigma_u`` the update noise;
    together they compose to one Gaussian mechanism of multiplier ``noise_multiplier``.

    Raises
    ------
    ConfigError
        When ``noise_multiplier >= 2 sigma_b``, saying how to fix the set-up.
    """
    try:
        stddev, sigma_update = compute_adaptive_noise_params(
            noise_multiplier, sampled, clipped_count_stddev
        )
    except ValueError:
        limit = 2 * (sampled / 20 if clipped_count_stddev is None else clipped_count_stddev)
        raise ConfigError(
            f"central-dp adaptive: central-noise-multiplier {noise_multiplier:g} needs a "
            f"clipped-count noise above {noise_multiplier / 2:g}, but {sampled} sampled "
            f"sites give {limit / 2:g} (noise multiplier must be < {limit:g}); lower "
            "central-noise-multiplier, add sites, or use central-dp=fixed"
        ) from None
    return float(stddev), float(sigma_update)
