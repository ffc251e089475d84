"""The protocol's messages as bytes: length-prefixed fields, checked when read.

Every reader refuses a malformed input with :class:`~fedlora.secagg.types.SecAggError` (a
truncated field, a wrong field count, text that is not UTF-8, an absurd length), so a site or
the coordinator never acts on a message it could not read whole.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedlora.secagg.types import Advertisement, SecAggError, UnmaskReply, UnmaskRequest

MAX_FIELDS = 1 << 20


def pack_fields(*fields: bytes) -> bytes:
    """``fields`` joined, each prefixed with its length (4 bytes, big-endian)."""
    return b"".join(len(field).to_bytes(4, "big") + field for field in fields)


def unpack_fields(data: bytes, count: int | None = None) -> list[bytes]:
    """The fields of :func:`pack_fields`' output; ``count``: how many there must be.

    Raises
    ------
    SecAggError
        When the data is truncated or has another number of fields.
    """
    fields: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data) or len(fields) >= MAX_FIELDS:
            raise SecAggError("a secure-aggregation message is truncated")
        size = int.from_bytes(data[offset : offset + 4], "big")
        offset += 4
        if offset + size > len(data):
            raise SecAggError("a secure-aggregation message is truncated")
        fields.append(bytes(data[offset : offset + size]))
        offset += size
    if count is not None and len(fields) != count:
        raise SecAggError(f"a secure-aggregation message has {len(fields)} fields, not {count}")
    return fields


def _text(field: bytes) -> str:
    try:
        return field.decode("utf-8")
    except UnicodeDecodeError:
        raise SecAggError("a secure-aggregation message has a name that is not UTF-8") from None


def _integer(field: bytes) -> int:
    text = _text(field)
    if not text.isdigit() or len(text) > 12:
        raise SecAggError(f"a secure-aggregation message has a bad number {text[:20]!r}")
    return int(text)


def encode_advertisement(ad: Advertisement) -> bytes:
    """An advertisement as bytes."""
    return pack_fields(
        ad.site.encode(),
        ad.run_id.encode(),
        str(ad.server_round).encode(),
        ad.encryption_key,
        ad.mask_key,
        ad.signing_key,
        ad.signature,
    )


def decode_advertisement(data: bytes) -> Advertisement:
    """An advertisement from :func:`encode_advertisement`'s bytes."""
    site, run_id, server_round, encryption, mask, signing, signature = unpack_fields(data, 7)
    return Advertisement(
        _text(site), _text(run_id), _integer(server_round), encryption, mask, signing, signature
    )


def encode_named(items: Mapping[str, bytes]) -> bytes:
    """Bytes by site name (shares to route, encrypted shares received)."""
    return pack_fields(*(part for name in sorted(items) for part in (name.encode(), items[name])))


def decode_named(data: bytes) -> dict[str, bytes]:
    """The mapping of :func:`encode_named`; a repeated name is refused."""
    fields = unpack_fields(data)
    if len(fields) % 2:
        raise SecAggError("a secure-aggregation message has an odd number of fields")
    items: dict[str, bytes] = {}
    for index in range(0, len(fields), 2):
        name = _text(fields[index])
        if name in items:
            raise SecAggError(f"a secure-aggregation message names {name!r} twice")
        items[name] = fields[index + 1]
    return items


def encode_request(request: UnmaskRequest) -> bytes:
    """An unmasking request as bytes."""
    return pack_fields(
        str(request.server_round).encode(),
        encode_named({name: b"" for name in request.survivors}),
        encode_named({name: b"" for name in request.dropped}),
    )


def decode_request(data: bytes) -> UnmaskRequest:
    """An unmasking request from :func:`encode_request`'s bytes."""
    server_round, survivors, dropped = unpack_fields(data, 3)
    return UnmaskRequest(
        _integer(server_round), tuple(decode_named(survivors)), tuple(decode_named(dropped))
    )


def encode_unmask_reply(reply: UnmaskReply) -> bytes:
    """A site's unmasking answer as bytes."""
    return pack_fields(
        reply.site.encode(),
        encode_named(reply.mask_key_shares),
        encode_named(reply.self_seed_shares),
    )


def decode_unmask_reply(data: bytes) -> UnmaskReply:
    """A site's unmasking answer from :func:`encode_unmask_reply`'s bytes."""
    site, keys, seeds = unpack_fields(data, 3)
    return UnmaskReply(_text(site), decode_named(keys), decode_named(seeds))


def encode_vector(vector: np.ndarray) -> bytes:
    """A masked input (uint32, little-endian) as bytes."""
    return vector.astype("<u4", copy=False).tobytes()


def decode_vector(data: bytes, length: int) -> np.ndarray:
    """A masked input of ``length`` values from :func:`encode_vector`'s bytes.

    A read-only view of ``data`` where the machine is little-endian (no copy: it is only added).
    """
    if len(data) != 4 * length:
        raise SecAggError(f"a masked input has {len(data)} bytes, expected {4 * length}")
    return np.frombuffer(data, dtype="<u4").astype(np.uint32, copy=False)


def encode_listing(total_examples: int, advertisements: list[Advertisement]) -> bytes:
    """The share stage's message: the round's example total and every advertisement."""
    listed = encode_named({ad.site: encode_advertisement(ad) for ad in advertisements})
    return pack_fields(str(total_examples).encode(), listed)


def decode_listing(data: bytes) -> tuple[int, list[Advertisement]]:
    """``(total_examples, advertisements)`` from :func:`encode_listing`'s bytes."""
    total, listed = unpack_fields(data, 2)
    ads = [decode_advertisement(item) for item in decode_named(listed).values()]
    return _integer(total), ads
