"""Client-level (central) differential privacy on the server: DP-FedAvg as a strategy wrapper.

:class:`CentralDP` wraps an averaging strategy (FedAvg) and turns each round into one Gaussian
release protecting every *site* as a whole (McMahan et al. 2018, "Learning differentially
private recurrent language models"; Andrew et al. 2021, "Differentially private learning with
adaptive clipping"). Per round, with ``m`` the number of sites sampled per round and ``C`` the
clip norm:

1. each site's update ``d_i = state_i - global`` is clipped to L2 norm ``C``, flat over all
   adapter tensors (Flower's ``adaptive_clip_inputs_inplace``);
2. the clipped updates are averaged with **uniform** weights and the fixed denominator ``m``:
   ``global + sum_i clip(d_i) / m``. The inner FedAvg computes the uniform mean: it receives
   the states ``global + clip(d_i)``, all with ``num_examples = 1``. Weighting by examples is
   deliberately replaced: the sensitivity ``C / m`` of the mean to one site only holds for
   uniform weights. When ``n != m`` updates arrive (a sampled site failed or refused), the
   mean's step is rescaled by ``n / m``, as if absent sites had sent zero updates;
3. Gaussian noise of standard deviation ``compute_stdv(sigma_u, C, m) = sigma_u * C / m`` is
   added to every coordinate, drawn from a :class:`numpy.random.Generator` of the wrapper's own
   (seeded from OS entropy unless a seed is given), never from numpy's global state;
4. in ``adaptive`` mode the clip norm then moves geometrically toward the quantile ``gamma``
   (``target_clipped_quantile``) of the update norms (Andrew et al., Alg. 1):
   ``C <- C * exp(-lr * (b - gamma))`` with ``b`` the noisy fraction of updates *not* clipped
   (``|d_i| <= C``): ``b = 1/2 + (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m``. With every
   sampled site present this is ``(sum_i b_i + N(0, sigma_b^2)) / m``; a missing site counts
   as neutral. ``C`` is carried across rounds.

Privacy statement
    The guarantee is (ε, δ)-DP at *client level* under add/remove of one site's entire
    contribution, for what the server releases: the sequence of global adapters (and, in
    adaptive mode, the clip norms and the noisy clipped fractions). The server is trusted to
    add the noise (and sees the raw updates unless secure aggregation is on). Evaluation
    metrics the sites report are not covered.
    Each round is accounted as one Poisson-subsampled Gaussian release with sample rate
    ``q = m / sites`` and noise multiplier ``sigma`` (``q = 1.0`` when all sites train every
    round, as in :class:`fedlora.server.federation.Federation`; ``q < 1`` assumes each site is
    sampled independently with probability ``q``). ε is reported by both Opacus accountants (PRV and
    RDP) via :func:`fedlora.privacy.accounting.epsilons` over all rounds so far.

With secure aggregation (fixed mode only)
    Each site clips its own update (:mod:`fedlora.privacy.update_clipping`, the same function)
    before masking; this wrapper receives one uniform mean of the clipped updates
    (:class:`~fedlora.strategies.base.SummedUpdate`) and runs steps 2-3 on it unchanged: the
    same noise, ledger and ε. Adaptive mode needs each site's clipped-or-not bit: refused.

Limitations
    The noise comes from numpy's PCG64 in floating point, not a cryptographically secure
    generator; like any floating-point Gaussian mechanism it is open in principle to the
    precision attacks of Mironov (2012). With few sites client-level DP is weak: the default
    ``δ = 1 / (10 sites)`` is large and ε is high at any useful noise level.

Server ledger
    Every round is accounted and appended to the hash-chained server ledger before the aggregate
    is returned (:mod:`fedlora.strategies.central_releases`; the run's ledger is
    ``runs/<id>/privacy/server-ledger.jsonl``, attached by :meth:`CentralDP.open_run`).
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from flwr.supercore.differential_privacy import compute_stdv

from fedlora.adapters import AdapterState
from fedlora.config.checks import SECURE_ADAPTIVE_REFUSAL
from fedlora.errors import ConfigError, FedloraError, LedgerError
from fedlora.io import atomic_write_json
from fedlora.privacy.server_ledger import (
    SERVER_LEDGER_FILE,
    SERVER_LEDGER_VERSION,
    ServerLedgerEntry,
    ServerPrivacyLedger,
    read_server_ledger,
)
from fedlora.strategies.base import SiteUpdate, Strategy, check_finite
from fedlora.strategies.central_releases import CentralReleases, central_delta
from fedlora.strategies.dp_clipping import (
    check_mechanism,
    clip_updates,
    next_clip_norm,
    noisy_unclipped_fraction,
    secure_clipped_mean,
    split_adaptive_noise,
    to_numpy,
)
from fedlora.strategies.fedavg import FedAvg

__all__ = [
    "CENTRAL_MODES",
    "SERVER_LEDGER_FILE",
    "SERVER_LEDGER_VERSION",
    "CentralDP",
    "CentralMode",
    "ServerLedgerEntry",
    "ServerPrivacyLedger",
    "central_delta",
    "read_server_ledger",
]

logger = logging.getLogger(__name__)

CentralMode = Literal["fixed", "adaptive"]
CENTRAL_MODES: tuple[CentralMode, ...] = ("fixed", "adaptive")


class CentralDP(Strategy):
    """DP-FedAvg with fixed or adaptive clipping around an averaging strategy (module docstring).

    Parameters
    ----------
    inner
        The wrapped strategy; it must average exactly like :class:`FedAvg` (the privacy
        guarantee rests on a uniform mean).
    mode
        ``"fixed"`` (clip norm ``clip_norm`` throughout) or ``"adaptive"`` (``clip_norm`` is
        the initial norm, adapted every round).
    noise_multiplier
        The total noise multiplier sigma the rounds are accounted with (>= 0; 0 means no privacy).
    clip_norm
        The (initial) L2 clip norm ``C`` of a site's whole adapter update.
    sites
        The number of sites in the federation.
    sampled_per_round
        The expected number of sites sampled per round, ``m``: the fixed denominator of the
        mean and of the noise. Defaults to ``sites`` (every site trains every round).
    delta
        The client-level δ; ``None`` picks ``1 / (10·sites)``.
    target_clipped_quantile, clip_norm_lr, clipped_count_stddev
        Adaptive clipping: the quantile of update norms ``C`` tracks, the geometric step
        size, and the noise on the unclipped count (``None``: ``m / 20`` when sigma > 0,
        else 0).
    ledger_path
        Where to keep the :class:`ServerPrivacyLedger`; ``None`` keeps no ledger (see
        :meth:`open_ledger` to attach one later, before the first round).
    seed
        Seed of the noise generator, for tests; ``None`` seeds from OS entropy.

    Raises
    ------
    ConfigError
        For an unknown mode, sigma < 0, ``C <= 0``, δ outside (0, 1), a bad site count, an inner
        strategy that does not average uniformly, or an adaptive sigma the clipped-count noise
        cannot carry.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        mode: str,
        noise_multiplier: float,
        clip_norm: float,
        sites: int,
        sampled_per_round: int | None = None,
        delta: float | None = None,
        target_clipped_quantile: float = 0.5,
        clip_norm_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
        ledger_path: Path | None = None,
        seed: int | None = None,
    ) -> None:
        if mode not in CENTRAL_MODES:
            raise ConfigError(
                f"central-dp mode must be one of {', '.join(CENTRAL_MODES)}, got {mode!r}"
            )
        if type(inner).aggregate is not FedAvg.aggregate:
            raise ConfigError(
                f"central DP needs an inner strategy that averages like fedavg, got {inner.name!r}"
            )
        check_mechanism(
            noise_multiplier, clip_norm, target_clipped_quantile, clip_norm_lr, clipped_count_stddev
        )
        if isinstance(sites, bool) or not isinstance(sites, int) or sites < 1:
            raise ConfigError(f"central DP needs at least one site, got {sites}")
        sampled = sites if sampled_per_round is None else sampled_per_round
        if not 1 <= sampled <= sites:
            raise ConfigError(f"sites sampled per round must be in [1, {sites}], got {sampled}")
        try:
            self.delta = central_delta(delta, sites)
        except ConfigError as exc:
            raise ConfigError(f"central-delta: {exc}") from None

        self.inner = inner
        self.name = f"central-dp({inner.name})"
        self.mode: CentralMode = "adaptive" if mode == "adaptive" else "fixed"
        self.noise_multiplier = float(noise_multiplier)
        self.clip_norm = float(clip_norm)
        self.sites = sites
        self.sampled = sampled
        self.sample_rate = sampled / sites
        self.target_clipped_quantile = float(target_clipped_quantile)
        self.clip_norm_lr = float(clip_norm_lr)
        self.update_noise_multiplier = self.noise_multiplier
        self.clipped_count_stddev = 0.0
        if self.mode == "adaptive":
            self.clipped_count_stddev, self.update_noise_multiplier = split_adaptive_noise(
                self.noise_multiplier, sampled, clipped_count_stddev
            )
        self._rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
        self._releases = CentralReleases(
            mode=self.mode,
            sites=sites,
            sampled=sampled,
            delta=self.delta,
            noise_multiplier=self.noise_multiplier,
        )
        if ledger_path is not None:
            self.open_ledger(ledger_path)

    @property
    def rounds(self) -> int:
        """Rounds released so far (including those of a reopened ledger)."""
        return len(self._releases.releases)

    @property
    def ledger(self) -> ServerPrivacyLedger | None:
        """The attached server ledger, if any."""
        return self._releases.ledger

    def open_ledger(self, path: Path) -> ServerPrivacyLedger:
        """Attach the server ledger at ``path`` (created, or reloaded and continued).

        Raises
        ------
        LedgerError
            When rounds were already aggregated without a ledger, or the ledger is corrupted,
            altered, or of another set-up.
        """
        return self._releases.open_ledger(path)

    def prepare(self, global_state: AdapterState) -> None:
        """The inner strategy's preparation."""
        self.inner.prepare(global_state)

    def open_run(self, run_dir: Path) -> None:
        """Attach the ledger ``run_dir/privacy/server-ledger.jsonl`` (:meth:`open_ledger`)."""
        self.inner.open_run(run_dir)
        self.open_ledger(Path(run_dir) / "privacy" / SERVER_LEDGER_FILE)

    def update_reference(self, update: AdapterState, global_state: AdapterState) -> AdapterState:
        """What the inner strategy's sites send."""
        return self.inner.update_reference(update, global_state)

    def round_metrics(self) -> dict[str, Any]:
        """The inner strategy's entries and ``central-privacy`` (:meth:`last_round_privacy`)."""
        return {**self.inner.round_metrics(), "central-privacy": self.last_round_privacy()}

    def aggregate(self, global_state: AdapterState, updates: list[SiteUpdate]) -> AdapterState:
        """Clip, average uniformly, add noise, account, and record one round.

        Parameters
        ----------
        global_state
            The adapter the sites started this round from.
        updates
            The validated updates of this round (at least one, at most one per site).

        Returns
        -------
        AdapterState
            The noisy aggregate, each tensor in the dtype and order of ``global_state``.

        Raises
        ------
        FloatingPointError, FedloraError
            For non-finite values; a secure sum ``secure_clipped_mean`` refuses (or adaptive).
        LedgerError
            When the round cannot be recorded; the aggregate is then not released.
        """
        if not updates:
            raise FedloraError("central DP: no update to aggregate")
        if len({update.site for update in updates}) != len(updates) or len(updates) > self.sites:
            raise FedloraError(
                f"central DP: {len(updates)} updates from {self.sites} sites; each site may "
                "contribute at most once per round"
            )
        names = list(global_state)
        base = [to_numpy(global_state[name]) for name in names]
        clip_norm = self.clip_norm
        secure = secure_clipped_mean(global_state, updates, clip_norm, self.sampled)
        if secure is not None and self.mode == "adaptive":
            raise ConfigError(SECURE_ADAPTIVE_REFUSAL)
        if secure is None:
            start_state, clipped_updates, unclipped = clip_updates(global_state, updates, clip_norm)
            mean = self.inner.aggregate(start_state, clipped_updates)
            start, result, received = base, [to_numpy(mean[name]) for name in names], len(updates)
        else:  # The sites clipped (from what they received, start) and masked: only the mean.
            (start, result, received), unclipped = secure, 0
        if received != self.sampled or start is not base:
            # Fixed denominator m: the uniform mean over the n received updates becomes
            # global + sum_i clip(d_i) / m, as if absent sampled sites sent zero updates.
            if received < self.sampled:
                logger.warning(
                    "central DP: %d of %d sampled sites sent an update; absent ones count as "
                    "zero updates",
                    received,
                    self.sampled,
                )
            scale = received / self.sampled
            result = [g + (r - s) * scale for g, s, r in zip(base, start, result, strict=True)]
        stddev = compute_stdv(self.update_noise_multiplier, clip_norm, self.sampled)
        if stddev > 0:
            for array in result:
                array += self._rng.normal(0.0, stddev, array.shape)

        clipped_count: float | None = None
        if self.mode == "adaptive":
            noise = self.clipped_count_stddev
            unclipped_fraction = noisy_unclipped_fraction(
                unclipped=unclipped,
                received=received,
                sampled=self.sampled,
                noise=float(self._rng.normal(0.0, noise)) if noise > 0 else 0.0,
            )
            clipped_count = self.sampled * (1 - unclipped_fraction)
            self.clip_norm = next_clip_norm(
                clip_norm,
                unclipped_fraction,
                learning_rate=self.clip_norm_lr,
                target_quantile=self.target_clipped_quantile,
            )

        self._releases.record(
            clip_norm=clip_norm,
            next_clip_norm=self.clip_norm,
            update_noise_multiplier=self.update_noise_multiplier,
            clipped_count=clipped_count,
            clipped_count_stddev=self.clipped_count_stddev if self.mode == "adaptive" else None,
            received=received,
            std=stddev,
        )
        aggregate: AdapterState = {
            name: torch.from_numpy(array).to(
                device=global_state[name].device, dtype=global_state[name].dtype
            )
            for name, array in zip(names, result, strict=True)
        }
        check_finite(aggregate)
        return aggregate

    def save_state(self, path: Path) -> None:
        """Write what a restart needs beyond the server ledger: the current clip norm.

        The ledger (reloaded by :meth:`open_ledger`) holds every release for the accounting;
        the clip norm the next round uses (adaptive mode) comes from here, so a resumed run
        continues from the checkpointed round exactly.
        """
        atomic_write_json(
            Path(path), {"strategy": self.name, "mode": self.mode, "clip-norm": self.clip_norm}
        )

    def load_state(self, path: Path, *, reference: AdapterState | None = None) -> None:
        """Restore :meth:`save_state`'s clip norm (``reference`` is accepted for symmetry).

        Raises
        ------
        LedgerError
            For an unreadable file or one written by another central-DP set-up.
        """
        del reference
        try:
            state = json.loads(Path(path).read_text(encoding="utf-8"))
            clip_norm = float(state["clip-norm"])
            mode = state["mode"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise LedgerError(f"central-DP state {path} is unreadable: {error}") from None
        if mode != self.mode or state.get("strategy") != self.name:
            raise LedgerError(
                f"central-DP state {path} is from {state.get('strategy')!r} ({mode}), "
                f"not {self.name!r} ({self.mode})"
            )
        if not (clip_norm > 0 and math.isfinite(clip_norm)):
            raise LedgerError(f"central-DP state {path} has an invalid clip norm {clip_norm}")
        self.clip_norm = clip_norm

    def last_round_privacy(self) -> dict[str, Any]:
        """The privacy of the last aggregated round, for ``metrics.jsonl``.

        Returns
        -------
        dict
            ``mode``, ``noise-multiplier`` (the accounted sigma), ``clip-norm`` (the norm the
            round's updates were clipped to), ``delta``, ``sample-rate``, ``rounds`` (released
            so far), ``epsilon-prv`` and ``epsilon-rdp`` (over all rounds; ``None`` when
            unbounded, i.e. sigma = 0), and in adaptive mode ``clipped-fraction`` (the noisy
            fraction of clipped updates that drove the clip-norm update).

        Raises
        ------
        FedloraError
            Before the first :meth:`aggregate`.
        """
        return self._releases.last_round()
