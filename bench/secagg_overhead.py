"""Secure aggregation's cost: bytes per site per round and time, with and without, side by side.

Part 1, ``protocol``: the protocol alone (no training, no Flower) on random adapter-shaped
tensors, every site and the coordinator in this process, each side timed on its own; the
default is a LoRA the size of a 7B model's (r 16 on q and v of 32 layers x 4096: 8.4 M values)
at 10 sites, once with every site staying and once with one site dropping after it shared
(the coordinator then regenerates its masks). Without secure aggregation a site packs its
adapter (safetensors) and the coordinator unpacks every adapter and takes the example-weighted
mean (FedAvg's arithmetic); with it, a site flattens, shares, masks and answers the unmasking,
and the coordinator routes, adds, unmasks and decodes. Sites work in parallel in a real round,
so "round" is the slowest site plus the coordinator. Torch runs on one thread here (NumPy and
ChaCha20 do anyway): on a loaded 2-core machine torch's thread pool made FedAvg's float64 mean
of 5 x 2 M values cost 1.8 s of CPU instead of 0.02 s, which would flatter the secure side.

Part 1b, ``pieces``: where the protocol's time goes, each piece of one site's and of the
coordinator's per-value work timed alone (best CPU seconds of ``--repeat``) at the same size,
with the mask cipher (ChaCha20) beside AES-256-CTR, each writing into a fresh buffer and into
one reused cache-sized block (what :func:`fedlora.secagg.crypto.apply_masks` does).

Part 2, ``simulate``: tiny-llama federations on the in-process engine (no DP, 1 round) at 5
and 20 sites, with and without ``--secure-aggregation``, in ABBA order; the round's
``duration-s`` and the bytes per site from ``metrics.jsonl``.

    python bench/secagg_overhead.py protocol [--values 8388608] [--sites 10] [--repeat 3]
    python bench/secagg_overhead.py pieces [--values 8388608] [--sites 10] [--repeat 5]
    python bench/secagg_overhead.py simulate [--sites 5 20] [--repeat 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from bench.bench_common import abba_schedule, add_output_arguments, emit_result, quiet_flower
from fedlora.adapters import pack_adapter, unpack_adapter
from fedlora.secagg import CoordinatorSession, KeyRoster, Quantiser, SiteSession
from fedlora.secagg.crypto import MASK_BLOCK, Identity, apply_masks
from fedlora.secagg.quantise import layout_of
from fedlora.secagg.wire import (
    decode_advertisement,
    decode_listing,
    decode_named,
    decode_request,
    decode_unmask_reply,
    decode_vector,
    encode_advertisement,
    encode_listing,
    encode_named,
    encode_request,
    encode_unmask_reply,
    encode_vector,
)
from fedlora.strategies.helpers import weighted_mean


def lora_7b_like(values: int, rank: int = 16, width: int = 4096) -> dict[str, torch.Tensor]:
    """Random LoRA factors (A: r x width, B: width x r) adding up to about ``values`` values."""
    generator = torch.Generator().manual_seed(0)
    modules = max(1, values // (2 * rank * width))
    state = {}
    for index in range(modules):
        state[f"m{index:03d}.lora_A.weight"] = 0.02 * torch.randn(rank, width, generator=generator)
        state[f"m{index:03d}.lora_B.weight"] = 0.02 * torch.randn(width, rank, generator=generator)
    return state


class Clock:
    """Seconds spent per party (``site-<i>`` or ``coordinator``): wall and this process's CPU.

    On a shared machine the CPU time is the fairer figure (other processes' load inflates the
    wall time, unevenly between the runs being compared).
    """

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def run(self, party: str, work: Callable[[], Any]) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        value = work()
        self.wall[party] = self.wall.get(party, 0.0) + time.perf_counter() - wall
        self.cpu[party] = self.cpu.get(party, 0.0) + time.process_time() - cpu
        return value


def plain_round(states: list[dict[str, torch.Tensor]], counts: list[int]) -> dict[str, Any]:
    """Without secure aggregation: each site packs, the coordinator unpacks and averages."""
    clock = Clock()
    packed = [clock.run(f"site-{i}", lambda s=s: pack_adapter(s)) for i, s in enumerate(states)]
    total = sum(counts)
    clock.run(
        "coordinator",
        lambda: weighted_mean([unpack_adapter(p) for p in packed], [c / total for c in counts]),
    )
    return _summary(clock, uplink=statistics.mean(len(p) for p in packed), downlink=0)


def secure_round(
    states: list[dict[str, torch.Tensor]], counts: list[int], drop_after_share: bool
) -> dict[str, Any]:
    """With secure aggregation; every message goes through its byte encoding, as on the wire."""
    clock, quantiser = Clock(), Quantiser(8.0)
    names = [f"site-{i:02d}" for i in range(len(states))]
    up = dict.fromkeys(names, 0)
    down = dict.fromkeys(names, 0)
    layout = layout_of(states[0])
    length = sum(slot.size for slot in layout)
    sessions = {
        name: clock.run(
            name,
            lambda s=state, n=name, c=count: SiteSession(
                n, "bench", 1, 0, quantiser.flatten(s), c, quantiser, Identity(), KeyRoster(None)
            ),
        )
        for name, state, count in zip(names, states, counts, strict=True)
    }
    coordinator = CoordinatorSession("bench", 1, 0, length, KeyRoster(None))
    ads = {}
    for name in names:
        ads[name] = clock.run(name, lambda n=name: encode_advertisement(sessions[n].advertise()))
        up[name] += len(ads[name])
    listing = clock.run(
        "coordinator",
        lambda: encode_listing(
            sum(counts),
            coordinator.receive_advertisements(
                {n: decode_advertisement(a) for n, a in ads.items()},
                dict(zip(names, counts, strict=True)),
            ),
        ),
    )
    bundles = {}
    for name in names:
        down[name] += len(listing)

        def share(n: str = name) -> bytes:
            total, advertised = decode_listing(listing)
            return encode_named(sessions[n].share(advertised, total))

        bundles[name] = clock.run(name, share)
        up[name] += len(bundles[name])

    def route() -> dict[str, bytes]:
        incoming = coordinator.route_shares({n: decode_named(b) for n, b in bundles.items()})
        return {n: encode_named(shares) for n, shares in incoming.items()}

    routed = clock.run("coordinator", route)
    staying = names[1:] if drop_after_share else names
    masked = {}
    for name in staying:
        down[name] += len(routed[name])
        masked[name] = clock.run(
            name, lambda n=name: encode_vector(sessions[n].mask(decode_named(routed[n])))
        )
        up[name] += len(masked[name])
    request = clock.run(
        "coordinator",
        lambda: encode_request(
            coordinator.receive_masked({n: decode_vector(v, length) for n, v in masked.items()})
        ),
    )
    answers = {}
    for name in staying:
        down[name] += len(request)
        answers[name] = clock.run(
            name, lambda n=name: encode_unmask_reply(sessions[n].unmask(decode_request(request)))
        )
        up[name] += len(answers[name])
    clock.run(
        "coordinator",
        lambda: quantiser.decode(
            coordinator.unmask({n: decode_unmask_reply(a) for n, a in answers.items()}),
            layout,
            len(staying),
            coordinator.weight_sum,
        ),
    )
    return _summary(
        clock,
        uplink=statistics.mean(up[n] for n in staying),
        downlink=statistics.mean(down[n] for n in staying),
    )


def _summary(clock: Clock, *, uplink: float, downlink: float) -> dict[str, Any]:
    result: dict[str, Any] = {
        "uplink-bytes-per-site": round(uplink),
        "downlink-bytes-per-site": round(downlink),
    }
    for kind, spent in (("wall", clock.wall), ("cpu", clock.cpu)):
        sites = [seconds for party, seconds in spent.items() if party != "coordinator"]
        coordinator = spent.get("coordinator", 0.0)
        result[f"site-{kind}-s-max"] = max(sites)
        result[f"coordinator-{kind}-s"] = coordinator
        result[f"round-{kind}-s"] = max(sites) + coordinator
    return result


def protocol(args: argparse.Namespace) -> dict[str, Any]:
    """Part 1: the protocol alone, plain against secure, median of ``--repeat`` runs."""
    torch.set_num_threads(1)
    reference = lora_7b_like(args.values)
    values = sum(t.numel() for t in reference.values())
    generator = torch.Generator().manual_seed(1)
    states = [
        {n: t + 0.001 * torch.randn(t.shape, generator=generator) for n, t in reference.items()}
        for _ in range(args.sites)
    ]
    counts = [100 + 10 * index for index in range(args.sites)]
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "secure": [], "secure-1-dropout": []}
    warm = [{n: t[:1] for n, t in reference.items()} for _ in range(3)]
    plain_round(warm, [1, 1, 1])  # first calls (imports, allocator) are not the protocol's
    secure_round(warm, [1, 1, 1], drop_after_share=False)
    for _ in range(args.repeat):
        runs["plain"].append(plain_round(states, counts))
        runs["secure"].append(secure_round(states, counts, drop_after_share=False))
        runs["secure-1-dropout"].append(secure_round(states, counts, drop_after_share=True))
    result: dict[str, Any] = {"values": values, "sites": args.sites, "repeat": args.repeat}
    for kind, rows in runs.items():
        result[kind] = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    plain = result["plain"]
    for kind in ("secure", "secure-1-dropout"):
        row = result[kind]
        row["bytes-ratio"] = row["uplink-bytes-per-site"] / plain["uplink-bytes-per-site"]
        row["round-cpu-ratio"] = row["round-cpu-s"] / plain["round-cpu-s"]
    print(f"{values:,} values, {args.sites} sites, median of {args.repeat}; seconds: CPU (wall)")
    print(f"{'':17} {'up B/site':>11} {'down B/site':>11} {'site':>15} {'coordinator':>15}")
    for kind in runs:
        row = result[kind]
        print(
            f"{kind:17} {row['uplink-bytes-per-site']:>11,} {row['downlink-bytes-per-site']:>11,} "
            f"{row['site-cpu-s-max']:>6.2f} ({row['site-wall-s-max']:>6.2f}) "
            f"{row['coordinator-cpu-s']:>6.2f} ({row['coordinator-wall-s']:>6.2f})"
        )
    return result


def _cipher(name: str) -> CipherContext:
    key = bytes(range(32))
    if name == "chacha20":
        return Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()


def _blockwise(name: str, values: int) -> None:
    encryptor, zeros = _cipher(name), bytes(4 * MASK_BLOCK)
    scratch = np.empty(MASK_BLOCK, dtype="<u4")
    for start in range(0, values, MASK_BLOCK):
        size = 4 * min(MASK_BLOCK, values - start)
        encryptor.update_into(zeros[:size], scratch.data.cast("B")[:size])


def pieces(args: argparse.Namespace) -> dict[str, Any]:
    """Part 1b: each piece of the per-value work timed alone (best of ``--repeat``)."""
    torch.set_num_threads(1)
    state = lora_7b_like(args.values)
    values = sum(t.numel() for t in state.values())
    quantiser, layout = Quantiser(8.0), layout_of(state)
    flat = quantiser.flatten(state)
    encoded = quantiser.encode(flat, 0.1)
    wire = encode_vector(encoded)
    keys = [bytes([index]) * 32 for index in range(1, args.sites + 1)]
    work: dict[str, Callable[[], Any]] = {
        "keystream chacha20, fresh buffer": lambda: _cipher("chacha20").update(bytes(4 * values)),
        "keystream aes-256-ctr, fresh buffer": lambda: _cipher("aes").update(bytes(4 * values)),
        "keystream chacha20, reused block": lambda: _blockwise("chacha20", values),
        "keystream aes-256-ctr, reused block": lambda: _blockwise("aes", values),
        "site: flatten + range check": lambda: quantiser.flatten(state),
        "site: encode (weight, round, wrap)": lambda: quantiser.encode(flat, 0.1),
        f"site: add {args.sites} masks (self + pairs)": lambda: apply_masks(
            encoded.copy(), add=keys
        ),
        "site: masked input to bytes": lambda: encode_vector(encoded),
        "coordinator: read and add one input": lambda: np.add(
            encoded, decode_vector(wire, values), out=encoded.copy()
        ),
        "coordinator: decode the mean": lambda: quantiser.decode(
            np.zeros(values, np.uint32), layout, args.sites, 1.0
        ),
    }
    result: dict[str, Any] = {"values": values, "sites": args.sites, "repeat": args.repeat}
    print(f"{values:,} values; best CPU seconds of {args.repeat}")
    for piece, run in work.items():
        run()  # first call: page faults of new buffers, imports
        times = []
        for _ in range(args.repeat):
            start = time.process_time()
            run()
            times.append(time.process_time() - start)
        result[piece] = min(times)
        print(f"{piece:40} {min(times):.4f}")
    return result


def simulate_sites(args: argparse.Namespace) -> dict[str, Any]:
    """Part 2: tiny-llama federations, with and without secure aggregation (ABBA order)."""
    from fedlora.config import RunConfig
    from fedlora.rundir import RunDirectoryReader
    from fedlora.simulations.materialize import resolve_config
    from fedlora.simulations.runner import simulate

    quiet_flower()
    result: dict[str, Any] = {}
    root = args.out or Path(tempfile.mkdtemp(prefix="secagg-bench-"))
    for sites in args.sites:
        rows: dict[str, list[dict[str, float]]] = {"plain": [], "secure": []}
        for index, kind in enumerate(abba_schedule(args.repeat, "plain", "secure")):
            config = resolve_config(
                RunConfig(
                    model="tiny-llama",
                    sites=sites,
                    rounds=1,
                    examples_per_site=24,
                    alpha=float("inf"),
                    max_length=48,
                    batch_size=8,
                    dp=False,
                    device="cpu",
                    secure_aggregation=kind == "secure",
                    out=str(root / f"{sites}-{kind}-{index}"),
                )
            )
            run_dir = simulate(config, run_id="run", engine="inprocess")
            record = RunDirectoryReader(run_dir).read_metrics()[1]
            entries = record["sites"].values()
            rows[kind].append(
                {
                    "round-s": record["duration-s"],
                    "uplink-bytes-per-site": statistics.mean(e["bytes-received"] for e in entries),
                    "downlink-bytes-per-site": statistics.mean(e["bytes-sent"] for e in entries),
                    "protocol-s": (record.get("secure-aggregation") or {}).get(
                        "protocol-seconds", 0.0
                    ),
                }
            )
        summary = {
            kind: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for kind, rs in rows.items()
        }
        result[f"{sites}-sites"] = summary
        plain, secure = summary["plain"], summary["secure"]
        print(
            f"tiny-llama, {sites} sites: round {plain['round-s']:.2f} s -> "
            f"{secure['round-s']:.2f} s (protocol {secure['protocol-s']:.2f} s); uplink/site "
            f"{plain['uplink-bytes-per-site']:,.0f} -> {secure['uplink-bytes-per-site']:,.0f} B; "
            f"downlink/site {plain['downlink-bytes-per-site']:,.0f} -> "
            f"{secure['downlink-bytes-per-site']:,.0f} B"
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    proto = commands.add_parser("protocol", help="the protocol alone, random tensors")
    proto.add_argument("--values", type=int, default=32 * 2 * 16 * 2 * 4096)
    proto.add_argument("--sites", type=int, default=10)
    proto.add_argument("--repeat", type=int, default=3)
    add_output_arguments(proto, verbose_help="unused", run_data=False)
    parts = commands.add_parser("pieces", help="where the time goes, piece by piece")
    parts.add_argument("--values", type=int, default=32 * 2 * 16 * 2 * 4096)
    parts.add_argument("--sites", type=int, default=10)
    parts.add_argument("--repeat", type=int, default=5)
    add_output_arguments(parts, verbose_help="unused", run_data=False)
    sim = commands.add_parser("simulate", help="tiny-llama federations, in-process engine")
    sim.add_argument("--sites", type=int, nargs="+", default=[5, 20])
    sim.add_argument("--repeat", type=int, default=1)
    add_output_arguments(sim, verbose_help="unused")
    args = parser.parse_args()
    command = {"protocol": protocol, "pieces": pieces, "simulate": simulate_sites}
    result = command[args.command](args)
    emit_result({"bench": "secagg_overhead", "command": args.command, **result}, args.json)


if __name__ == "__main__":
    main()
