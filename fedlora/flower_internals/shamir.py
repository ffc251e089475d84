"""Flower's Shamir secret sharing, behind the seam (``flwr.common.secure_aggregation``).

Flower's SecAgg+ splits each 16-byte chunk of a secret with PyCryptodome's Shamir over
GF(2^128) (random coefficients from the OS's CSPRNG) and prefixes each share with its index.
That is sound, so fedlora reuses it for the mask secrets rather than writing it again; the
module is not documented as Flower's public API, hence this seam and its canary test
(``tests/unit/test_secagg_core.py``).
"""

from __future__ import annotations

from fedlora.errors import FedloraError

try:
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
except ImportError as error:  # pragma: no cover - only on a Flower without the module
    _MISSING: ImportError | None = error
else:
    _MISSING = None

__all__ = ["split_secret", "combine_secret"]


def _check() -> None:
    if _MISSING is not None:
        raise FedloraError(
            "secure aggregation needs Flower's Shamir sharing "
            f"(flwr.common.secure_aggregation.crypto.shamir), missing here: {_MISSING}"
        )


def split_secret(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """``count`` shares of ``secret``, any ``threshold`` of which recover it."""
    _check()
    return create_shares(secret, threshold, count)


def combine_secret(shares: list[bytes]) -> bytes:
    """The secret from at least ``threshold`` of its shares.

    Raises
    ------
    ValueError
        When the shares do not combine to a well-padded secret (too few, or tampered).
    """
    _check()
    return combine_shares(shares)
