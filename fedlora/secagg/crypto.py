"""The protocol's cryptography, all from ``cryptography``: agreement, derivation, sealing, masks.

Why the mask generator is fedlora's own
    Flower's SecAgg+ (``flwr.common.secure_aggregation.secaggplus_utils.pseudo_rand_gen``) folds
    the agreed 32-byte secret into a 32-bit seed for NumPy's Mersenne Twister: 2^32 guesses
    recover a mask, and the Mersenne Twister is not a cryptographic generator (its output
    reveals its state). :func:`apply_masks` instead keys ChaCha20 with the full 256-bit key
    that HKDF derives from the agreed secret, one key per pair (or site) and round,
    domain-separated by run, round and the site names, and reads its keystream as uint32
    values: uniform over the ring Z/2^32 and unpredictable without the key.

Why ChaCha20 and not AES-256-CTR
    Both are allowed. On the 2-core machine of ``bench/secagg_overhead.py pieces`` a 33.5 MB
    keystream written into a reused buffer takes 4.4 ms with ChaCha20 and 3.8 ms with
    AES-256-CTR (AES-NI): about 6 % of a secure round, too little to change a reviewed
    cipher for. What cost time was around the cipher: a fresh 33.5 MB buffer per mask (25 ms
    with either) and a copy of it. :func:`apply_masks` therefore writes each keystream a block
    at a time into one small buffer and adds it to the input in place, the block staying in
    the cache while every mask is added.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from fedlora.secagg.types import DOMAIN, Advertisement, ForgedKeyError, SecAggError

KEY_BYTES = 32
NONCE_BYTES = 12


def key_from_hex(value: object) -> bytes | None:
    """The raw key that ``value`` spells in hex, or None unless it is exactly 64 hex digits."""
    try:
        key = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        return None
    return key if len(key) == KEY_BYTES else None


def new_x25519() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw bytes: ``(private, public)``."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def public_x25519(private: bytes) -> bytes:
    """The raw public key of a raw X25519 private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def agree(private: bytes, public: bytes) -> bytes:
    """The X25519 shared secret of our ``private`` and a peer's ``public`` key.

    Raises
    ------
    SecAggError
        When ``public`` is not a valid 32-byte key (or agrees to the all-zero secret).
    """
    try:
        peer = X25519PublicKey.from_public_bytes(public)
        return X25519PrivateKey.from_private_bytes(private).exchange(peer)
    except ValueError as error:
        raise SecAggError(f"key agreement failed: {error}") from None


def derive(secret: bytes, purpose: str, *context: str | int) -> bytes:
    """A 256-bit key from ``secret`` by HKDF-SHA256, bound to ``purpose`` and ``context``."""
    parts = [DOMAIN, purpose.encode(), *(str(item).encode() for item in context)]
    info = b"\x00".join(len(p).to_bytes(4, "big") + p for p in parts)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """``nonce || ChaCha20-Poly1305(key, nonce, plaintext, associated)``, a random nonce."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def unseal(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """The plaintext of :func:`seal`'s output.

    Raises
    ------
    SecAggError
        When the ciphertext or its associated data was altered, or the key is wrong.
    """
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except (InvalidTag, ValueError):
        raise SecAggError("an encrypted share failed authentication") from None


MASK_BLOCK = 1 << 16
"""Values per block of :func:`apply_masks` (256 KiB of uint32): small enough for the cache."""
_ZEROS = bytes(4 * MASK_BLOCK)


def _keystream(key: bytes) -> CipherContext:
    if len(key) != KEY_BYTES:
        raise SecAggError(f"a mask key has {KEY_BYTES} bytes, got {len(key)}")
    # Each key serves one mask only (it is derived per pair or site and round), so the fixed
    # nonce is never reused with a key.
    return Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()


def apply_masks(
    vector: np.ndarray, *, add: Sequence[bytes] = (), subtract: Sequence[bytes] = ()
) -> None:
    """Add the masks of ``add`` and subtract those of ``subtract`` to ``vector``, in place.

    A key's mask is the first ``vector.size`` uint32 values (little-endian) of ChaCha20's
    keystream under it (see the module docstring); the arithmetic is the ring Z/2^32's
    (NumPy's uint32 wraparound). The result equals adding each :func:`mask_stream` whole.

    Raises
    ------
    SecAggError
        When ``vector`` is not a writable one-dimensional uint32 array, or a key is not
        32 bytes.
    """
    if vector.dtype != np.uint32 or vector.ndim != 1 or not vector.flags.writeable:
        raise SecAggError("masks apply to a writable one-dimensional uint32 vector")
    streams: list[tuple[CipherContext, np.ufunc]] = [(_keystream(key), np.add) for key in add]
    streams += [(_keystream(key), np.subtract) for key in subtract]
    scratch = np.empty(MASK_BLOCK, dtype="<u4")
    scratch_bytes, zeros = scratch.data.cast("B"), memoryview(_ZEROS)
    for start in range(0, vector.size, MASK_BLOCK):
        block = vector[start : start + MASK_BLOCK]
        size = block.size
        for encryptor, operation in streams:
            encryptor.update_into(zeros[: 4 * size], scratch_bytes[: 4 * size])
            operation(block, scratch[:size], out=block)


def mask_stream(key: bytes, count: int) -> np.ndarray:
    """``count`` uint32 values of ChaCha20's keystream under ``key``: one mask on its own."""
    mask = np.zeros(count, dtype=np.uint32)
    apply_masks(mask, add=[key])
    return mask


class Identity:
    """A site's Ed25519 identity key: what it signs its advertisements with."""

    def __init__(self, private: Ed25519PrivateKey | None = None) -> None:
        self._private = private if private is not None else Ed25519PrivateKey.generate()

    @classmethod
    def from_pem(cls, pem: bytes) -> Identity:
        """An identity from an unencrypted PEM (PKCS#8) Ed25519 private key.

        Raises
        ------
        SecAggError
            When the PEM is not an unencrypted Ed25519 private key.
        """
        try:
            key = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as error:
            raise SecAggError(f"the identity key is not a readable PEM key: {error}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SecAggError(f"the identity key must be Ed25519, got {type(key).__name__}")
        return cls(key)

    def to_pem(self) -> bytes:
        """The private key as an unencrypted PEM (PKCS#8), for the site's own disk only."""
        return self._private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())

    @property
    def public(self) -> bytes:
        """The raw 32-byte public key (what a roster lists)."""
        return self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, data: bytes) -> bytes:
        """An Ed25519 signature of ``data``."""
        return self._private.sign(data)


class KeyRoster:
    """The sites' identity keys an advertisement is checked against.

    ``keys``: site name -> raw Ed25519 public key (a deployment's enrolled sites). ``None``
    (simulation only): any site may advertise, and its signature is checked against the key it
    advertises, which proves integrity but not who it is.
    """

    def __init__(self, keys: Mapping[str, bytes] | None) -> None:
        self.keys = dict(keys) if keys is not None else None

    @classmethod
    def from_json(cls, text: str) -> KeyRoster:
        """A roster from JSON ``{"site name": "<64 hex digits: raw Ed25519 public key>"}``.

        Raises
        ------
        SecAggError
            When the text is not such an object (a key of another length, not hex, ...).
        """
        try:
            payload = json.loads(text)
        except ValueError as error:
            raise SecAggError(f"the secure-aggregation roster is not JSON: {error}") from None
        if not isinstance(payload, dict) or not payload:
            raise SecAggError("the secure-aggregation roster must be a non-empty JSON object")
        keys = {}
        for site, value in payload.items():
            key = key_from_hex(value)
            if key is None:
                raise SecAggError(f"the roster's key for {site!r} is not 64 hex digits")
            keys[str(site)] = key
        return cls(keys)

    @property
    def authenticated(self) -> bool:
        """Whether advertisements are checked against enrolled keys (not self-asserted)."""
        return self.keys is not None

    def verify(self, advertisement: Advertisement, run_id: str, server_round: int) -> None:
        """Accept ``advertisement`` for this run and round, or refuse it naming its site.

        Raises
        ------
        ForgedKeyError
            Unknown site, a signing key that is not the roster's, a bad signature, another
            run or round, or malformed keys.
        """
        site = advertisement.site
        if self.keys is not None:
            if site not in self.keys:
                raise ForgedKeyError(site, "the site is not on the roster")
            if advertisement.signing_key != self.keys[site]:
                raise ForgedKeyError(site, "its signing key is not the roster's key for it")
        if advertisement.run_id != run_id or advertisement.server_round != server_round:
            raise ForgedKeyError(
                site,
                f"it is for run {advertisement.run_id!r} round {advertisement.server_round}, "
                f"not run {run_id!r} round {server_round}",
            )
        keys = (advertisement.encryption_key, advertisement.mask_key)
        if any(len(key) != KEY_BYTES for key in keys) or keys[0] == keys[1]:
            raise ForgedKeyError(site, "its public keys are malformed")
        try:
            verifier = Ed25519PublicKey.from_public_bytes(advertisement.signing_key)
            verifier.verify(advertisement.signature, advertisement.signed_bytes())
        except (InvalidSignature, ValueError):
            raise ForgedKeyError(site, "the signature does not verify") from None
