"""The accounting of central-DP releases: the client-level δ, ε so far, and the server ledger.

:class:`~fedlora.strategies.central_dp.CentralDP` releases one noisy aggregate per round;
:class:`CentralReleases` accounts each as one Poisson-subsampled Gaussian release (both Opacus
accountants, :func:`fedlora.privacy.accounting.epsilons`, over every round so far) and appends
it to the hash-chained :class:`~fedlora.privacy.server_ledger.ServerPrivacyLedger` before the
aggregate is returned. A reopened ledger brings back the earlier rounds' releases, so a resumed
run's ε covers the whole run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fedlora.errors import ConfigError, FedloraError, LedgerError
from fedlora.privacy.accounting import Release, check_delta, default_delta, epsilons
from fedlora.privacy.hashchain import finite_or_none, utc_now
from fedlora.privacy.server_ledger import ServerLedgerEntry, ServerPrivacyLedger

logger = logging.getLogger(__name__)


def central_delta(delta: float | None, sites: int) -> float:
    """The client-level δ: ``delta`` when set, else ``1 / (10·sites)``.

    δ must be well below ``1 / sites`` (a mechanism that publishes one site's whole update
    with probability ``1/sites`` would otherwise qualify); a tenth of it mirrors the per-record
    default of the sites (:func:`fedlora.privacy.accounting.default_delta`).

    Raises
    ------
    ConfigError
        For ``sites < 1`` or a set ``delta`` outside (0, 1).
    """
    if delta is None:
        if sites < 1:
            raise ConfigError(f"central DP needs at least one site, got {sites}")
        return default_delta(sites)
    check_delta(delta)
    return float(delta)


class CentralReleases:
    """The rounds released so far, their ε, and the ledger that records each.

    Parameters
    ----------
    mode, sites, sampled, delta
        The central-DP set-up the ledger is opened (or reopened) with.
    noise_multiplier
        The total sigma every round is accounted with.
    """

    def __init__(
        self, *, mode: str, sites: int, sampled: int, delta: float, noise_multiplier: float
    ) -> None:
        self.mode = mode
        self.sites = sites
        self.sampled = sampled
        self.delta = delta
        self.noise_multiplier = noise_multiplier
        self.sample_rate = sampled / sites
        self.releases: list[Release] = []
        self.ledger: ServerPrivacyLedger | None = None
        self.last: dict[str, Any] | None = None

    def open_ledger(self, path: Path) -> ServerPrivacyLedger:
        """Attach the server ledger at ``path`` (created, or reloaded and continued).

        Raises
        ------
        LedgerError
            When rounds were already released without a ledger, or the ledger is corrupted,
            altered, or of another set-up.
        """
        if self.ledger is not None or self.releases:
            raise LedgerError(
                "the server privacy ledger must be attached once, before the first round"
            )
        ledger = ServerPrivacyLedger.open(
            Path(path), mode=self.mode, sites=self.sites, sampled=self.sampled, delta=self.delta
        )
        self.ledger = ledger
        self.releases = ledger.releases()
        return ledger

    def record(
        self,
        *,
        clip_norm: float,
        next_clip_norm: float,
        update_noise_multiplier: float,
        clipped_count: float | None,
        clipped_count_stddev: float | None,
        received: int,
        std: float,
    ) -> None:
        """Account one more round and write it to the ledger (when one is attached).

        Raises
        ------
        LedgerError
            When the round cannot be recorded; it then counts as not released.
        """
        releases = [*self.releases, Release(self.noise_multiplier, self.sample_rate, 1)]
        with np.errstate(divide="ignore"):  # Opacus's PRV takes log(1 - q) at q = 1.
            eps = epsilons(releases, delta=self.delta)
        entry = ServerLedgerEntry(
            round=len(releases),
            mode=self.mode,
            noise_multiplier=self.noise_multiplier,
            update_noise_multiplier=update_noise_multiplier,
            clip_norm=clip_norm,
            next_clip_norm=next_clip_norm,
            clipped_count=clipped_count,
            clipped_count_stddev=clipped_count_stddev,
            updates=received,
            sampled=self.sampled,
            sample_rate=self.sample_rate,
            delta=self.delta,
            epsilon_prv=eps["prv"],
            epsilon_rdp=eps["rdp"],
            time=utc_now(),
        )
        if self.ledger is not None:
            self.ledger.append(entry)
        self.releases = releases
        logger.info(
            "central DP round %d: clip norm %.4g, noise std %.4g, epsilon %.4g (prv) %.4g (rdp) "
            "at delta %.3g",
            entry.round,
            clip_norm,
            std,
            entry.epsilon_prv,
            entry.epsilon_rdp,
            self.delta,
        )
        self.last = {
            "mode": self.mode,
            "noise-multiplier": self.noise_multiplier,
            "clip-norm": clip_norm,
            "delta": self.delta,
            "sample-rate": self.sample_rate,
            "rounds": entry.round,
            "epsilon-prv": finite_or_none(entry.epsilon_prv),
            "epsilon-rdp": finite_or_none(entry.epsilon_rdp),
        }
        if clipped_count is not None:
            self.last["clipped-fraction"] = clipped_count / self.sampled

    def last_round(self) -> dict[str, Any]:
        """The privacy of the last released round (see ``CentralDP.last_round_privacy``).

        Raises
        ------
        FedloraError
            Before the first release.
        """
        if self.last is None:
            raise FedloraError("central DP: no round has been aggregated yet")
        return dict(self.last)
