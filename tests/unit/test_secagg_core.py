"""Secure aggregation's core protocol (fedlora.secagg): sums, masks, dropouts, refusals."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from scipy import stats

from fedlora.adapters import AdapterState, adapter_state
from fedlora.config import RunConfig
from fedlora.errors import ConfigError
from fedlora.flower_internals.shamir import combine_secret, split_secret
from fedlora.models import apply_lora, load_base_model
from fedlora.secagg import (
    CoordinatorSession,
    ForgedKeyError,
    KeyRoster,
    Quantiser,
    RoundAbandonedError,
    SecAggError,
    SiteSession,
    UnmaskRefusedError,
    UnmaskReply,
    UnmaskRequest,
)
from fedlora.secagg.crypto import MASK_BLOCK, Identity, apply_masks, mask_stream
from fedlora.secagg.quantise import layout_of
from fedlora.secagg.wire import (
    decode_advertisement,
    decode_named,
    decode_request,
    decode_unmask_reply,
    encode_advertisement,
    encode_named,
    encode_request,
    encode_unmask_reply,
    pack_fields,
    unpack_fields,
)

RUN = "run-1"
ROUND = 3


@pytest.fixture(scope="module")
def adapters() -> dict[str, AdapterState]:
    shapes = {}
    for preset, task in (("tiny-llama", "sft"), ("tiny-bert", "classification")):
        base = load_base_model(preset, task=task, labels=["neg", "pos"])
        shapes[preset] = adapter_state(apply_lora(base, RunConfig(model=preset, task=task)))
    return shapes


def _site_states(reference: AdapterState, sites: int, seed: int) -> list[AdapterState]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            name: tensor + 0.3 * torch.randn(tensor.shape, generator=generator)
            for name, tensor in reference.items()
        }
        for _ in range(sites)
    ]


def _federation(names: list[str]) -> tuple[dict[str, Identity], KeyRoster]:
    identities = {name: Identity() for name in names}
    return identities, KeyRoster({name: ident.public for name, ident in identities.items()})


Update = tuple[np.ndarray, int]
"""A site's flattened update and its example count."""

QUANTISER = Quantiser(clip=8.0)


def _sessions(updates: dict[str, Update], threshold: int) -> dict[str, SiteSession]:
    identities, roster = _federation(sorted(updates))
    return {
        name: SiteSession(
            name, RUN, ROUND, threshold, update, count, QUANTISER, identities[name], roster
        )
        for name, (update, count) in updates.items()
    }


def _total(updates: dict[str, Update]) -> int:
    return sum(count for _, count in updates.values())


def _run(
    updates: dict[str, Update],
    threshold: int,
    drop: dict[str, set[str]] | None = None,
) -> tuple[np.ndarray, CoordinatorSession, dict[str, SiteSession]]:
    """A whole round; ``drop``: stage -> sites that stop answering before that stage."""
    drop = drop or {}
    sites = _sessions(updates, threshold)
    length = next(iter(updates.values()))[0].size
    coordinator = CoordinatorSession(RUN, ROUND, threshold, length, KeyRoster(None))
    live = set(sites) - drop.get("advertise", set())
    examples = {name: count for name, (_, count) in updates.items()}
    ads = coordinator.receive_advertisements(
        {name: sites[name].advertise() for name in live}, examples
    )
    kept(sites)
    live -= drop.get("share", set())
    total = coordinator.total_examples
    routed = coordinator.route_shares({name: sites[name].share(ads, total) for name in live})
    kept(sites)
    live -= drop.get("mask", set())
    request = coordinator.receive_masked(
        {name: sites[name].mask(routed[name]) for name in sorted(live)}
    )
    kept(sites)
    live -= drop.get("unmask", set())
    replies = {name: sites[name].unmask(request) for name in sorted(live)}
    return coordinator.unmask(replies), coordinator, sites


def kept(sites: dict[str, SiteSession]) -> None:
    """Each session through bytes, as a site keeps it between messages."""
    for name, session in sites.items():
        sites[name] = SiteSession.restore(session.export())


def _plain_sum(updates: dict[str, Update], included: set[str], total: int) -> np.ndarray:
    """The sum of the included sites' encoded inputs, without any mask."""
    result = np.zeros(next(iter(updates.values()))[0].size, dtype=np.uint32)
    for name in included:
        update, count = updates[name]
        result += QUANTISER.encode(update, count / total)
    return result


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-bert"])
@pytest.mark.parametrize("sites", [2, 5, 10])
def test_unmasked_sum_is_the_plain_quantised_sum_and_the_mean_within_the_bound(
    adapters: dict[str, AdapterState], preset: str, sites: int
) -> None:
    states = _site_states(adapters[preset], sites, seed=sites)
    counts = [7 + 13 * index for index in range(sites)]
    updates = {
        f"site-{i}": (QUANTISER.flatten(state), count)
        for i, (state, count) in enumerate(zip(states, counts, strict=True))
    }
    total, coordinator, _ = _run(updates, threshold=max(2, sites // 2 + 1))
    assert np.array_equal(total, _plain_sum(updates, set(updates), sum(counts)))
    assert coordinator.counts()["masked"] == sites

    mean = QUANTISER.decode(total, layout_of(states[0]), sites, coordinator.weight_sum)
    assert coordinator.weight_sum == 1.0
    bound = QUANTISER.error_bound(sites, 1.0)
    for name in states[0]:
        exact = sum(c * s[name].double() for c, s in zip(counts, states, strict=True)) / sum(counts)
        error = (mean[name].double() - exact).abs()
        # half a quantisation step per site, plus the float32 cast of the mean
        assert float(error.max()) <= bound + 1e-7 * float(exact.abs().max())
        assert mean[name].dtype == states[0][name].dtype


def _stages_to_mask(
    updates: dict[str, Update], threshold: int
) -> tuple[dict[str, SiteSession], dict[str, np.ndarray]]:
    """Every site advertised, shared and masked (the coordinator's relaying done by hand)."""
    sites = _sessions(updates, threshold)
    ads = [site.advertise() for site in sites.values()]
    bundles = {name: site.share(ads, _total(updates)) for name, site in sites.items()}
    masked = {
        name: site.mask({s: b[name] for s, b in bundles.items() if s != name})
        for name, site in sites.items()
    }
    return sites, masked


def test_a_masked_input_is_uniform_over_the_ring_and_uncorrelated_with_the_update() -> None:
    generator = torch.Generator().manual_seed(1)
    plain = QUANTISER.flatten({"w": 0.1 * torch.randn(20_000, generator=generator)})
    updates = {"a": (plain, 5), "b": (np.zeros(20_000), 5), "c": (np.zeros(20_000), 5)}
    masked = _stages_to_mask(updates, threshold=2)[1]["a"]
    encoded = QUANTISER.encode(plain, 5 / 15)

    def chi_square_p(values: np.ndarray) -> tuple[float, float]:
        top = np.bincount((values >> np.uint32(28)).astype(np.int64), minlength=16)
        low = np.bincount((values & np.uint32(15)).astype(np.int64), minlength=16)
        return float(stats.chisquare(top).pvalue), float(stats.chisquare(low).pvalue)

    assert min(chi_square_p(masked)) > 1e-4
    assert max(chi_square_p(encoded)) < 1e-10  # the test can tell: the plain input fails
    signed = encoded.view(np.int32).astype(np.float64)
    correlation = np.corrcoef(signed, masked.astype(np.float64))[0, 1]
    assert abs(correlation) < 4 / np.sqrt(signed.size)


def _updates(sites: int) -> dict[str, Update]:
    rng = np.random.default_rng(sites)
    return {f"s{i}": (np.clip(rng.normal(size=500), -8, 8), 3 + i) for i in range(sites)}


@pytest.mark.parametrize("stage", ["share", "mask", "unmask"])
def test_two_dropouts_of_five_at_any_stage_are_recovered_with_threshold_three(stage: str) -> None:
    updates = _updates(5)
    gone = {"s1", "s3"}
    total, coordinator, _ = _run(updates, threshold=3, drop={stage: gone})
    # A site that dropped before sending its masked input is left out; after, it is in.
    included = set(updates) if stage == "unmask" else set(updates) - gone
    assert np.array_equal(total, _plain_sum(updates, included, _total(updates)))
    counts = coordinator.counts()
    assert counts["dropped"] == 2
    assert counts["recovered"] == (2 if stage == "mask" else 0)
    assert coordinator.weight_sum == sum(updates[s][1] for s in included) / _total(updates)


@pytest.mark.parametrize("stage", ["share", "mask", "unmask"])
def test_three_dropouts_of_five_abandon_the_round_and_reveal_nothing(stage: str) -> None:
    updates = _updates(5)
    gone = {"s0", "s2", "s4"}
    with pytest.raises(RoundAbandonedError, match="fewer than the secure-aggregation threshold 3"):
        _run(updates, threshold=3, drop={stage: gone})
    # The survivors refuse a request that names fewer than the threshold as survivors.
    survivor = _stages_to_mask(updates, threshold=3)[0]["s1"]
    with pytest.raises(UnmaskRefusedError, match="fewer than the threshold"):
        survivor.unmask(UnmaskRequest(ROUND, survivors=("s1", "s3"), dropped=("s0", "s2", "s4")))
    assert survivor.revealed_keys == set() and survivor.revealed_seeds == set()


def test_a_site_refuses_to_reveal_both_shares_of_one_peer() -> None:
    site = _stages_to_mask(_updates(5), threshold=3)[0]["s0"]
    with pytest.raises(UnmaskRefusedError, match=r"both .*\['s2'\]"):
        site.unmask(UnmaskRequest(ROUND, survivors=("s0", "s1", "s2"), dropped=("s2",)))
    assert site.revealed_keys == set() and site.revealed_seeds == set()
    # Asked in two requests: the second, naming a dropped peer as a survivor, is refused.
    first = site.unmask(UnmaskRequest(ROUND, survivors=("s0", "s1", "s2"), dropped=("s3",)))
    assert set(first.mask_key_shares) == {"s3"}
    with pytest.raises(UnmaskRefusedError, match=r"\['s3'\]"):
        site.unmask(UnmaskRequest(ROUND, survivors=("s0", "s1", "s3"), dropped=()))
    with pytest.raises(UnmaskRefusedError, match=r"\['s1'\]"):
        site.unmask(UnmaskRequest(ROUND, survivors=("s0", "s2", "s4"), dropped=("s1",)))


def test_forged_and_unknown_keys_are_refused_and_named() -> None:
    names = ["a", "b", "c", "d"]
    identities, roster = _federation(names)
    zero = np.zeros(4)
    sites = {
        n: SiteSession(n, RUN, ROUND, 2, zero, 1, QUANTISER, identities[n], roster) for n in names
    }
    ads = {n: s.advertise() for n, s in sites.items()}
    # b's mask key swapped after signing (a coordinator's substitution); c signs with a key
    # of its own that is not the roster's; "mallory" is no enrolled site at all.
    forged = dict(ads)
    forged["b"] = dataclasses.replace(ads["b"], mask_key=ads["d"].mask_key[::-1])
    impostor = SiteSession("c", RUN, ROUND, 2, zero, 1, QUANTISER, Identity(), roster).advertise()
    forged["c"] = impostor
    mallory = SiteSession("mallory", RUN, ROUND, 2, zero, 1, QUANTISER, Identity(), roster)
    mallory = mallory.advertise()
    forged["mallory"] = mallory
    for advertisement, reason in (
        (forged["b"], "signature does not verify"),
        (impostor, "not the roster's key"),
        (mallory, "not on the roster"),
        (dataclasses.replace(ads["d"], server_round=ROUND + 1), "round 4, not run"),
    ):
        with pytest.raises(ForgedKeyError, match=reason) as caught:
            sites["a"].share([ads["a"], advertisement], 4)
        assert caught.value.site == advertisement.site
        sites["a"].stage = "share"  # try the next forgery on a fresh stage
    coordinator = CoordinatorSession(RUN, ROUND, 2, 4, roster)
    accepted = coordinator.receive_advertisements(forged, dict.fromkeys(forged, 1))
    assert sorted(ad.site for ad in accepted) == ["a", "d"]
    assert set(coordinator.refused) == {"b", "c", "mallory"}
    assert "signature does not verify" in coordinator.refused["b"]


def test_a_share_altered_in_transit_is_refused() -> None:
    updates = _updates(3)
    sites = _sessions(updates, threshold=2)
    ads = [site.advertise() for site in sites.values()]
    bundles = {name: site.share(ads, _total(updates)) for name, site in sites.items()}
    tampered = bytearray(bundles["s1"]["s0"])
    tampered[-1] ^= 1
    with pytest.raises(SecAggError, match="failed authentication"):
        sites["s0"].mask({"s1": bytes(tampered), "s2": bundles["s2"]["s0"]})
    # A share sealed for s0 does not open at s2 (bound to sender and recipient).
    with pytest.raises(SecAggError, match="failed authentication"):
        sites["s2"].mask({"s1": bundles["s1"]["s0"], "s0": bundles["s0"]["s2"]})


def test_the_quantiser_refuses_what_it_cannot_encode_exactly() -> None:
    quantiser = Quantiser(clip=1.0)
    with pytest.raises(SecAggError, match="beyond the secure-aggregation range 1"):
        quantiser.flatten({"w": torch.tensor([0.5, -1.5])})
    with pytest.raises(SecAggError, match="non-finite"):
        quantiser.flatten({"w": torch.tensor([float("nan")])})
    with pytest.raises(SecAggError, match="weight must be in"):
        quantiser.encode(np.zeros(1), 1.5)
    layout = layout_of({"w": torch.zeros(2)})
    beyond = np.array([2**29 // 2 + 3, 0], dtype=np.int32).view(np.uint32)
    with pytest.raises(SecAggError, match="out of range"):
        quantiser.decode(beyond, layout, sites=2, weight_sum=0.5)
    with pytest.raises(SecAggError, match="weights sum to 0"):
        quantiser.decode(np.zeros(2, dtype=np.uint32), layout, sites=2, weight_sum=0.0)
    with pytest.raises(ValueError, match="positive"):
        Quantiser(clip=float("nan"))
    # A site whose own count exceeds the announced total refuses to share (its weight > 1).
    site = _sessions({"a": (np.zeros(2), 9)}, threshold=2)["a"]
    site.advertise()
    with pytest.raises(SecAggError, match="example total 4 is below its own 9"):
        site.share([], 4)


def _chacha20(key: bytes, count: int) -> np.ndarray:
    """The reference mask: ChaCha20's keystream under ``key`` (zero nonce) read as uint32."""
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(4 * count)), dtype="<u4").astype(np.uint32)


@pytest.mark.parametrize("count", [1, 5, MASK_BLOCK, 2 * MASK_BLOCK + 7])
def test_masks_applied_a_block_at_a_time_are_whole_chacha20_keystreams(count: int) -> None:
    keys = [bytes([index]) * 32 for index in range(1, 4)]
    start = np.arange(count, dtype=np.uint32) * np.uint32(2654435761)
    expected = start + _chacha20(keys[0], count) + _chacha20(keys[1], count)
    expected -= _chacha20(keys[2], count)
    vector = start.copy()
    apply_masks(vector, add=keys[:2], subtract=keys[2:])
    assert np.array_equal(vector, expected)
    assert np.array_equal(mask_stream(keys[2], count), _chacha20(keys[2], count))


def test_masks_refuse_a_short_key_and_a_vector_they_cannot_add_to_in_place() -> None:
    with pytest.raises(SecAggError, match="32 bytes, got 16"):
        apply_masks(np.zeros(4, dtype=np.uint32), add=[bytes(16)])
    for vector in (np.zeros(4, dtype=np.int64), np.zeros((2, 2), dtype=np.uint32)):
        with pytest.raises(SecAggError, match="writable one-dimensional uint32"):
            apply_masks(vector, add=[bytes(32)])
    frozen = np.zeros(4, dtype=np.uint32)
    frozen.flags.writeable = False
    with pytest.raises(SecAggError, match="writable"):
        apply_masks(frozen, subtract=[bytes(32)])


def _encode_whole(values: np.ndarray, weight: float, quantiser: Quantiser) -> np.ndarray:
    """The encoding written out at once in float64, as the issue's formula states it."""
    scaled = np.clip(values.astype(np.float64), -quantiser.clip, quantiser.clip)
    integers = np.rint(scaled * (weight * quantiser.scale)).astype(np.int64)
    return (integers & 0xFFFFFFFF).astype(np.uint32)


def test_float32_updates_encode_in_float64_a_block_at_a_time_as_the_whole_formula() -> None:
    # Most values are above 2^24 steps: a float32 product would round them to even steps.
    quantiser = Quantiser(clip=1.0)
    generator = torch.Generator().manual_seed(4)
    state = {"a": torch.rand(70_000, generator=generator) * 2 - 1, "b": torch.ones(3)}
    flat = quantiser.flatten(state)
    assert flat.dtype == np.float32
    for weight in (1.0, 0.37, 0.0):
        encoded = quantiser.encode(flat, weight)
        assert np.array_equal(encoded, _encode_whole(flat, weight, quantiser))
        assert np.array_equal(encoded, quantiser.encode(flat.astype(np.float64), weight))
    assert np.count_nonzero(quantiser.encode(flat, 0.37).view(np.int32) % 2)
    # Out of range: clipped as the formula clips; NaN: refused, not encoded as 0.
    wide = np.array([3.0, -3.0, 0.25])
    assert np.array_equal(quantiser.encode(wide, 0.5), _encode_whole(wide, 0.5, quantiser))
    with pytest.raises(SecAggError, match="NaN"):
        quantiser.encode(np.array([0.0, float("nan")]), 0.5)


def test_flatten_keeps_float32_only_when_it_is_exact_and_checks_every_tensor() -> None:
    quantiser = Quantiser(clip=1.0)
    half = {"a": torch.tensor([0.5], dtype=torch.bfloat16), "b": torch.tensor([-0.25])}
    assert quantiser.flatten(half).dtype == np.float32
    assert quantiser.flatten(half).tolist() == [0.5, -0.25]
    precise = {**half, "c": torch.tensor([1 / 3], dtype=torch.float64)}
    flat = quantiser.flatten(precise)
    assert flat.dtype == np.float64 and flat[2] == 1 / 3
    for bad, message in ((float("inf"), "tensor c has non-finite"), (-1.5, "tensor c has a")):
        with pytest.raises(SecAggError, match=message):
            quantiser.flatten({**half, "c": torch.tensor([0.0, bad, float("nan")][:2])})


def test_a_float32_update_is_kept_as_float32_and_a_tampered_one_is_refused() -> None:
    update = QUANTISER.flatten({"w": torch.tensor([0.1, -7.5, 3.0])})
    site = _sessions({"a": (update, 3)}, threshold=2)["a"]
    restored = SiteSession.restore(site.export())
    kept = restored._update
    assert kept is not None and kept.dtype == np.float32 and np.array_equal(kept, update)
    fields = unpack_fields(site.export(), 21)
    for tampered in (b"8" + fields[9][1:], fields[9][:-1]):
        with pytest.raises(SecAggError, match="unreadable update"):
            SiteSession.restore(pack_fields(*fields[:9], tampered, *fields[10:]))


def test_a_sum_at_the_ring_s_most_negative_value_is_out_of_range() -> None:
    layout = layout_of({"w": torch.zeros(2)})
    edge = np.array([0, -(2**31)], dtype=np.int32).view(np.uint32)
    with pytest.raises(SecAggError, match="out of range \\(2147483648 >"):
        QUANTISER.decode(edge, layout, sites=2, weight_sum=1.0)


def test_messages_round_trip_through_bytes_and_truncation_is_refused() -> None:
    sites = _sessions(_updates(2), threshold=2)
    ad = sites["s0"].advertise()
    assert decode_advertisement(encode_advertisement(ad)) == ad
    request = UnmaskRequest(ROUND, survivors=("a", "b"), dropped=("c",))
    assert decode_request(encode_request(request)) == request
    named = {"a": b"\x00\x01", "b": b""}
    assert decode_named(encode_named(named)) == named
    with pytest.raises(SecAggError, match="truncated"):
        decode_advertisement(encode_advertisement(ad)[:-3])
    answer = UnmaskReply("a", {"c": b"k"}, {"a": b"s", "b": b"t"})
    assert decode_unmask_reply(encode_unmask_reply(answer)) == answer


def test_flowers_shamir_sharing_recovers_from_any_threshold_and_not_fewer() -> None:
    # Canary for the seam (fedlora.flower_internals.shamir) on the installed Flower.
    secret = bytes(range(32))
    shares = split_secret(secret, 3, 5)
    assert combine_secret([shares[4], shares[0], shares[2]]) == secret
    with contextlib.suppress(ValueError):  # too few shares may also fail to unpad
        assert combine_secret(shares[:2]) != secret


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "median"}, "cannot run strategy median: it needs a coordinate-wise median"),
        ({"strategy": "krum"}, "cannot run strategy krum: it needs distances"),
        ({"strategy": "multi-krum"}, "cannot run strategy multi-krum"),
        ({"strategy": "trimmed-mean"}, "cannot run strategy trimmed-mean"),
        ({"strategy": "hetero-rank"}, "cannot run strategy hetero-rank: it needs each site's"),
        ({"central_dp": "adaptive"}, "cannot run central-dp=adaptive: adaptive clipping needs"),
        ({"sites": 1}, "needs at least 2 sites"),
        ({"secure_aggregation_threshold": 1}, "must be 0 \\(a majority\\) or 2..sites, got 1"),
        ({"sites": 3, "secure_aggregation_threshold": 4}, "2..sites, got 4"),
        ({"secure_aggregation_range": float("inf")}, "secure-aggregation-range must be"),
        ({"secure_aggregation_range": -1.0}, "range must be > 0"),
    ],
)
def test_secure_aggregation_refuses_at_start_what_it_cannot_serve(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        RunConfig(secure_aggregation=True, **settings)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)
    for strategy in ("fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm", "ffa-lora"):
        RunConfig(secure_aggregation=True, strategy=strategy)  # the sum serves these


def test_a_fixed_example_total_is_the_denominator_and_never_below_the_sum() -> None:
    updates = _updates(3)
    sites = _sessions(updates, 2)
    ads = {name: session.advertise() for name, session in sites.items()}
    length = next(iter(updates.values()))[0].size
    coordinator = CoordinatorSession(RUN, ROUND, 2, length, KeyRoster(None))
    coordinator.receive_advertisements(ads, dict.fromkeys(ads, 1), total=5)
    assert coordinator.total_examples == 5
    low = CoordinatorSession(RUN, ROUND, 2, length, KeyRoster(None))
    with pytest.raises(SecAggError, match="below the sites' 3"):
        low.receive_advertisements(ads, dict.fromkeys(ads, 1), total=2)
