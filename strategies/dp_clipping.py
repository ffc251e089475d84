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

from flwr.supercore.differential_privacy import compute_adaptive_noise_params, get_norm

from fedlora.adapters import AdapterState
from fedlora.errors import AdapterError, ConfigError, FedloraError
from fedlora.privacy.update_clipping import Arrays, clip_delta, to_numpy, to_state
from fedlora.strategies.base import SiteUpdate, SummedUpdate

__all__ = [
    "Arrays",
    "check_mechanism",
    "clip_updates",
    "next_clip_norm",
    "noisy_unclipped_fraction",
    "secure_clipped_mean",
    "split_adaptive_noise",
    "to_numpy",
    "to_state",
]


def check_mechanism(
    noise_multiplier: float,
    clip_norm: float,
    target_clipped_quantile: float,
    clip_norm_lr: float,
    clipped_count_stddev: float | None,
) -> None:
    """Refuse impossible central-DP settings (``CentralDP``'s parameters of the same names).

    Raises
    ------
    ConfigError
        Naming the first setting out of its range.
    """
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise ConfigError(f"central-noise-multiplier must be >= 0, got {noise_multiplier}")
    if not (clip_norm > 0 and math.isfinite(clip_norm)):
        raise ConfigError(f"central-clip-norm must be > 0, got {clip_norm}")
    if not 0 <= target_clipped_quantile <= 1:
        raise ConfigError(
            f"target clipped quantile must be in [0, 1], got {target_clipped_quantile}"
        )
    if not clip_norm_lr > 0:
        raise ConfigError(f"clip-norm learning rate must be > 0, got {clip_norm_lr}")
    if clipped_count_stddev is not None and not clipped_count_stddev >= 0:
        raise ConfigError(f"clipped-count stddev must be >= 0, got {clipped_count_stddev}")


def clip_updates(
    global_state: AdapterState, updates: list[SiteUpdate], clip_norm: float
) -> tuple[AdapterState, list[SiteUpdate], int]:
    """Clip each update's distance from ``global_state`` to L2 norm ``clip_norm``, flat.

    Each update goes through :func:`fedlora.privacy.update_clipping.clip_delta`, the very
    clipping a site applies to its own update before a secure sum.

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
        _, delta, was_clipped = clip_delta(global_state, update.state, clip_norm, site=update.site)
        unclipped += 0 if was_clipped else 1
        restored = [g + d for g, d in zip(base, delta, strict=True)]
        clipped.append(SiteUpdate(update.site, to_state(names, restored), 1))
    return to_state(names, base), clipped, unclipped


def secure_clipped_mean(
    global_state: AdapterState, updates: list[SiteUpdate], clip_norm: float, sampled: int
) -> tuple[Arrays, Arrays, int] | None:
    """The start, mean and site count of a secure sum the sites clipped; ``None`` if plain.

    The sum's mean update is checked against the triangle inequality: a mean of updates each
    within ``C`` is within ``C`` (up to float64 rounding, hence the 1e-9 relative slack; this
    catches a site that did not clip grossly, it is not what the privacy rests on).

    Raises
    ------
    FedloraError
        For a sum that is not the round's only update, lacks its start or clip norm, was
        clipped to another norm, or counts no site or more than ``sampled``.
    AdapterError
        For a sum that does not fit the global adapter, or whose mean update is beyond ``C``.
    FloatingPointError
        For a sum with NaN or infinite values.
    """
    summed = [update for update in updates if isinstance(update, SummedUpdate)]
    if not summed:
        return None
    update = summed[0]
    if len(updates) != 1 or update.start is None or update.clip_norm is None:
        raise FedloraError(
            "central DP: a secure sum must be the round's only update and name the adapter its "
            "sites started from and the norm they clipped to"
        )
    if update.clip_norm != clip_norm:
        raise FedloraError(
            f"central DP: the sites clipped to {update.clip_norm:g}, this round needs {clip_norm:g}"
        )
    received = len(set(update.sites))
    if not 1 <= received <= sampled or received != len(update.sites):
        raise FedloraError(
            f"central DP: a secure sum of {len(update.sites)} sites, {received} distinct, "
            f"for {sampled} sampled"
        )
    shapes = {name: tensor.shape for name, tensor in global_state.items()}
    for what, state in (("start", update.start), ("mean", update.state)):
        if {name: tensor.shape for name, tensor in state.items()} != shapes:
            raise AdapterError(f"central DP: the secure sum's {what} does not fit the adapter")
    start = [to_numpy(update.start[name]) for name in shapes]
    mean = [to_numpy(update.state[name]) for name in shapes]
    norm = get_norm([m - s for m, s in zip(mean, start, strict=True)])
    if not math.isfinite(norm):
        raise FloatingPointError("central DP: the secure sum has non-finite values")
    if norm > clip_norm * (1 + 1e-9):
        raise AdapterError(
            f"central DP: the secure sum's mean update has norm {norm:.6g}, above the clip norm "
            f"{clip_norm:g}: a site did not clip its update"
        )
    return start, mean, received


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
