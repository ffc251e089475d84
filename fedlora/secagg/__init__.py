"""Secure aggregation (SecAgg+, Bell et al. CCS 2020) for LoRA adapters: the pure protocol.

The coordinator learns only the sum of the sites' quantised, example-weighted updates. This
package holds the protocol as plain state machines exchanging dataclasses and bytes, with no
Flower in it: :mod:`.crypto` (X25519, HKDF, ChaCha20-Poly1305, Ed25519, the mask generator),
:mod:`.quantise` (floats into the ring Z/2^32), :mod:`.types` (the messages and errors),
:mod:`.site` (:class:`SiteSession`), :mod:`.coordinator` (:class:`CoordinatorSession`) and
:mod:`.wire` (the messages as bytes). The round loop drives it from
``fedlora.server.secure_round`` and ``fedlora.clients.secure_site``.
"""

from fedlora.secagg.coordinator import CoordinatorSession
from fedlora.secagg.crypto import KeyRoster
from fedlora.secagg.quantise import Quantiser
from fedlora.secagg.site import SiteSession
from fedlora.secagg.types import (
    Advertisement,
    ForgedKeyError,
    RoundAbandonedError,
    SecAggError,
    UnmaskRefusedError,
    UnmaskReply,
    UnmaskRequest,
)

__all__ = [
    "Advertisement",
    "CoordinatorSession",
    "ForgedKeyError",
    "KeyRoster",
    "Quantiser",
    "RoundAbandonedError",
    "SecAggError",
    "SiteSession",
    "UnmaskRefusedError",
    "UnmaskReply",
    "UnmaskRequest",
]
