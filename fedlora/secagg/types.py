"""The protocol's messages (plain dataclasses) and its errors.

A round walks four stages; the sets of sites that complete each are named as in Bell et al.:
``U1`` advertised keys, ``U2`` sent shares, ``U3`` sent a masked input, ``U4`` answered the
unmasking request. Sites are named by their site names; a site's Shamir index is its position
(from 1) in the sorted names of ``U1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedlora.errors import FedloraError

DOMAIN = b"fedlora/secagg/v1"
"""Prefix of every signed or derived value: keys of this protocol serve nothing else."""


def threshold_for(configured: int, advertised: int) -> int:
    """The round's threshold t: ``configured`` (>= 2), or 0: a majority of the ``advertised``.

    A majority (``advertised // 2 + 1``, at least 2) is Bell et al.'s safe default: fewer
    colluders than t cannot pool enough shares, and t survivors are needed to unmask.
    """
    if configured != 0 and configured < 2:
        raise SecAggError(f"the secure-aggregation threshold must be 0 or >= 2, got {configured}")
    return configured if configured else max(2, advertised // 2 + 1)


class SecAggError(FedloraError):
    """A secure-aggregation message or request that the protocol refuses."""

    error_code = 120


class ForgedKeyError(SecAggError):
    """A key advertisement whose signature fails or whose signing key is not the roster's."""

    def __init__(self, site: str, reason: str) -> None:
        super().__init__(f"key advertisement of site {site!r} refused: {reason}")
        self.site = site


class UnmaskRefusedError(SecAggError):
    """An unmasking request a site refuses (it would reveal more than the protocol allows)."""


class RoundAbandonedError(SecAggError):
    """Fewer sites than the threshold remain: nothing is unmasked or aggregated."""


@dataclass(frozen=True)
class Advertisement:
    """A site's two X25519 public keys for one round, signed with its identity key (Ed25519).

    ``encryption_key`` agrees the keys that encrypt shares; ``mask_key`` the pairwise masks.
    """

    site: str
    run_id: str
    server_round: int
    encryption_key: bytes
    mask_key: bytes
    signing_key: bytes
    signature: bytes

    def signed_bytes(self) -> bytes:
        """What the signature covers: the domain, run, round, site and both keys."""
        parts = [DOMAIN, b"advertise", self.run_id.encode(), str(self.server_round).encode()]
        parts += [self.site.encode(), self.encryption_key, self.mask_key]
        return b"\x00".join(len(p).to_bytes(4, "big") + p for p in parts)


@dataclass(frozen=True)
class UnmaskRequest:
    """The coordinator's request: self-mask shares of ``survivors``, key shares of ``dropped``."""

    server_round: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class UnmaskReply:
    """A site's answer: its shares of each dropped peer's mask key, each survivor's seed."""

    site: str
    mask_key_shares: Mapping[str, bytes]
    self_seed_shares: Mapping[str, bytes]
