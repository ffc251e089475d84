# ruff: noqa: E402 (the thread settings come before numpy and torch load)
"""Federations of 10 to 100 sites on one machine: wall time, its split, memory, bytes, Krum.

Each (engine, sites) cell runs the same workload in a fresh Python process of its own:
``fedlora.simulations.runner.simulate`` with tiny-llama SFT, DP on (σ calibrated per site to
ε = 4 over the run, PRV accountant), the hospitals scenario with ``--examples-per-site``
records per site split evenly (so every site does the same work and time can be linear in
sites × rounds), ``--rounds`` rounds, on the CPU. Both engines give a site one torch thread:
a Ray actor gets ``OMP_NUM_THREADS=1`` from its one CPU, and the in-process run is started
with the same (on a loaded 2-core machine two threads per forward pass were 17x slower than
one: spin-waits on a busy core; ``_thread_probe`` measures it).

Measured per cell:

* wall: the child's ``simulate`` call, start-up included; ``loop``: rounds 0..R of the round
  loop (``metrics.jsonl``: each round's ``duration-s``, the last evaluation's too);
* per site-round (``loop / (sites × rounds)``) and, in the in-process engine (where the sites
  run in the measuring process), its split: ``training`` (the ClientApp's train handler less
  its accounting), ``accounting`` (σ calibration and lifetime ε, the calls the ClientApp makes
  into ``fedlora.privacy.accounting``), ``evaluation`` (the evaluate handler) and
  ``coordinator`` (the rest of the loop: messages, aggregation, checks, run directory);
* peak RSS: the child's whole process tree (Ray's raylet and workers included), sampled every
  0.2 s from ``/proc``; CPU: the child's own process time (the in-process engine's all);
* bytes per round: round 1's ``bytes-sent`` + ``bytes-received`` at the coordinator.

Then one tiny-llama forward pass at 2 and at 1 torch threads (why one thread per site), and
Krum's pairwise distances at ``--krum-sites`` updates of the tiny-llama adapter and of a
SmolLM2-135M-size one (r 8 on q, v of 30 layers × 576): the matrix form against the loop it
replaced, same inputs, median of 3.

    nice -n 5 python bench/scale.py [--sites 10 50 100] [--engines ray inprocess] \
        [--json bench-out/scale.json] [--plot docs/img/scale.png]
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread per process, set before numpy or torch load: on the shared 2-core
# machine a tiny forward pass took 17x longer with two threads than with one (_thread_probe).
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import add_output_arguments, completed_rounds, emit_result, quiet_flower

HERE = Path(__file__).resolve()
TARGET_EPSILON = 4.0


def _tree(root: int) -> list[int]:
    """``root`` and every process below it, from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _run_cell(engine: str, sites: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run one cell in a child process, sampling its process tree's RSS meanwhile."""
    result_file = out / f"{engine}-{sites}.json"
    command = [
        sys.executable, str(HERE), "--child", "--engine", engine, "--sites", str(sites),
        "--rounds", str(args.rounds), "--examples-per-site", str(args.examples_per_site),
        "--child-out", str(out / f"{engine}-{sites}"), "--child-result", str(result_file),
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "FEDLORA_HOME": str(out / "home")}
    child = subprocess.Popen(command, env=environment)
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], sum(_rss_bytes(pid) for pid in _tree(child.pid)))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = child.wait()
    stop.set()
    sampler.join()
    if code != 0:
        raise RuntimeError(f"{engine} with {sites} sites failed (exit {code})")
    cell: dict[str, Any] = json.loads(result_file.read_text())
    cell["peak-rss-mb"] = round(peak[0] / 2**20, 1)
    return cell


class _Timer:
    """Wraps module functions, adding their wall time to a named total."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, module: Any, name: str, total: str) -> None:
        function = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[total] = self.seconds.get(total, 0.0) + (time.perf_counter() - started)

        setattr(module, name, timed)


def _child(args: argparse.Namespace) -> None:
    """One cell, in this process: simulate, then write what it measured."""
    quiet_flower()
    import torch

    torch.set_num_threads(1)
    from fedlora.clients import app, private_round, site_privacy
    from fedlora.config import RunConfig
    from fedlora.simulations.runner import simulate

    timer = _Timer()
    if args.engine == "inprocess":
        timer.wrap(app, "handle_train", "train-handler")
        timer.wrap(app, "handle_evaluate", "evaluation")
        for module, name in [
            (site_privacy, "calibrate_noise"),
            (site_privacy, "calibrate_noise_to_fit"),
            (site_privacy, "epsilon"),
            (private_round, "epsilon"),
            (private_round, "epsilons"),
        ]:
            timer.wrap(module, name, "accounting")
    config = RunConfig(
        sites=args.sites,
        rounds=args.rounds,
        examples_per_site=args.examples_per_site,
        alpha=float("inf"),
        target_epsilon=TARGET_EPSILON,
        accountant="prv",
        device="cpu",
        out=str(args.child_out),
    )
    wall, cpu = time.perf_counter(), time.process_time()
    run_dir = simulate(config, engine=args.engine, run_id="run")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    records = completed_rounds(run_dir, args.rounds)
    loop = sum(float(r["duration-s"]) for r in records) + float(
        records[-1].get("eval-duration-s", 0.0)
    )
    round_one = next(r for r in records if int(r["round"]) == 1)
    site_rounds = args.sites * args.rounds
    cell: dict[str, Any] = {
        "engine": args.engine,
        "sites": args.sites,
        "rounds": args.rounds,
        "wall-s": round(wall, 2),
        "cpu-s": round(cpu, 2),
        "loop-s": round(loop, 2),
        "per-site-round-s": round(loop / site_rounds, 4),
        "bytes-per-round": int(round_one["bytes-sent"]) + int(round_one["bytes-received"]),
        "driver-peak-rss-mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.engine == "inprocess":
        accounting = timer.seconds.get("accounting", 0.0)
        evaluation = timer.seconds.get("evaluation", 0.0)
        training = timer.seconds.get("train-handler", 0.0) - accounting
        coordinator = loop - training - accounting - evaluation
        for name, seconds in [
            ("training", training),
            ("accounting", accounting),
            ("evaluation", evaluation),
            ("coordinator", coordinator),
        ]:
            cell[f"{name}-s-per-site-round"] = round(seconds / site_rounds, 4)
    args.child_result.write_text(json.dumps(cell))


def _loop_distances(arrays: list[list[np.ndarray]]) -> np.ndarray:
    """The pairwise loop Krum used before its matrix form (the reference timed against)."""
    count = len(arrays)
    distances = np.zeros((count, count), dtype=np.float64)
    for i in range(count):
        for j in range(i + 1, count):
            total = 0.0
            for left, right in zip(arrays[i], arrays[j], strict=True):
                difference = (left - right).ravel()
                total += float(difference @ difference)
            distances[i, j] = distances[j, i] = total
    return distances


def _krum_timing(sites: int) -> list[dict[str, Any]]:
    """Median seconds of the loop and of the matrix form for two adapter sizes."""
    from fedlora.strategies.krum import _squared_distances

    rng = np.random.default_rng(0)
    shapes = {
        "tiny-llama (r 8, q v, 2 x 64)": [(8, 64), (64, 8)] * 4,
        "SmolLM2-135M size (r 8, q v, 30 x 576)": [(8, 576), (576, 8)] * 60,
    }
    rows = []
    for label, tensors in shapes.items():
        arrays = [[rng.standard_normal(shape) for shape in tensors] for _ in range(sites)]
        times: dict[str, list[float]] = {"loop": [], "matrix": []}
        for _ in range(3):
            for name, function in [("loop", _loop_distances), ("matrix", _squared_distances)]:
                started = time.perf_counter()
                value = function(arrays)
                times[name].append(time.perf_counter() - started)
                if name == "loop":
                    reference = value
                else:
                    np.testing.assert_allclose(value, reference, rtol=1e-9)
        loop, matrix = (statistics.median(times[n]) for n in ("loop", "matrix"))
        rows.append(
            {
                "adapter": label,
                "values": int(sum(np.prod(s) for s in tensors)),
                "sites": sites,
                "loop-s": round(loop, 4),
                "matrix-s": round(matrix, 4),
                "speed-up": round(loop / matrix, 1),
            }
        )
    return rows


def _thread_probe() -> dict[str, float]:
    """Median seconds of one tiny-llama forward pass (16 x 128 tokens) at 2 and 1 torch threads."""
    import torch

    from fedlora.models import TINY_VOCAB_SIZE, load_base_model

    model = load_base_model("tiny-llama", task="sft").model
    tokens = torch.randint(
        0, TINY_VOCAB_SIZE, (16, 128), generator=torch.Generator().manual_seed(0)
    )
    result = {}
    for threads in (2, 1):
        torch.set_num_threads(threads)
        times = []
        with torch.no_grad():
            model(input_ids=tokens)
            for _ in range(5):
                started = time.perf_counter()
                model(input_ids=tokens)
                times.append(time.perf_counter() - started)
        result[f"forward-s-{threads}-threads"] = round(statistics.median(times), 4)
    torch.set_num_threads(1)
    return result


def _plot(cells: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for engine in sorted({c["engine"] for c in cells}):
        mine = sorted((c for c in cells if c["engine"] == engine), key=lambda c: c["sites"])
        x = [c["sites"] * c["rounds"] for c in mine]
        left.plot(x, [c["loop-s"] for c in mine], marker="o", label=f"{engine}: wall")
        if engine == "inprocess":  # its CPU time: every site runs in the measured process
            left.plot(x, [c["cpu-s"] for c in mine], marker="o", ls="--", label=f"{engine}: CPU")
        rss = [c["peak-rss-mb"] for c in mine]
        right.plot([c["sites"] for c in mine], rss, marker="o", label=f"{engine}: process tree")
    left.set(xlabel="site-rounds", ylabel="seconds", title="time (shared, loaded machine)")
    right.set(xlabel="sites", ylabel="peak RSS (MB)", title="memory", ylim=(0, None))
    left.legend()
    right.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--engines", nargs="+", default=["inprocess", "ray"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples-per-site", type=int, default=60)
    parser.add_argument("--krum-sites", type=int, default=100)
    parser.add_argument("--plot", type=Path, default=None, help="write the plot here (PNG)")
    add_output_arguments(parser, verbose_help="unused; Flower stays quiet")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="inprocess", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        args.sites = args.sites[0]
        _child(args)
        return 0
    out = args.out or Path(tempfile.mkdtemp(prefix="fedlora-scale-"))
    cells = []
    for engine in args.engines:
        for sites in args.sites:
            cell = _run_cell(engine, sites, args, out)
            print(json.dumps(cell), flush=True)
            cells.append(cell)
    result = {
        "machine": f"{os.cpu_count()} CPUs",
        "cells": cells,
        "krum": _krum_timing(args.krum_sites),
        "threads": _thread_probe(),
    }
    if args.plot is not None and cells:
        _plot(cells, args.plot)
    emit_result(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
