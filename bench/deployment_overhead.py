"""Per-round wall time of the same federation in simulation and in a real deployment on loopback.

The same 2-site, 3-round tiny workload runs on both sides, one after the other in this run:

(a) simulation: ``fedlora.simulations.runner.simulate`` -- Flower's simulation engine in this
process,
    one Ray actor per site (1 CPU each) that keeps its model and data in memory between
    messages;
(b) deployment: ``fedlora.deploy.loopback.LocalDeployment`` -- a TLS SuperLink with SuperNode
    authentication, as ``fedlora deploy superlink`` starts it (empty pulls held until a message
    comes, ``fedlora.flower_internals.link_superlink``), and one SuperNode per site on 127.0.0.1 as
    ``fedlora deploy supernode`` starts it (short polls, one warm worker per site,
    ``fedlora.flower_internals.node_worker``), the run submitted with ``flwr run . CONNECTION
    --stream``;
(c) cold deployment, once, for reference (``--cold-runs 0`` skips it): the same with Flower's
    immediate pull answers (``pull_hold=0``; the SuperLink still keeps its Control API to the
    operator, which costs one address check per request) and plain ``flower-supernode`` nodes
    (``fedlora deploy supernode --cold``): Flower's 3 s idle polls and a fresh
    ``flwr-clientapp`` process per message.

The workload is identical: the same site files (written once; the deployment's sites get
byte-identical copies in their own folders, with the same site names), the same run config
(tiny-llama SFT, DP on with a fixed noise multiplier so no calibration differs, RDP
accountant, the same batch size, sequence length and privacy budget), both on the CPU, and
one CPU thread per site on both sides (a simulated site is a Ray actor with one CPU, Ray sets
its ``OMP_NUM_THREADS=1``; a deployed site gets ``[site] cpu-threads = 1``).

What is measured, the same way on both sides, from the run's ``metrics.jsonl``, which
fedlora's round loop (``server/federation.py``) writes in both: the wall time from building
round 1's train messages to holding every site's evaluation of the last round's adapter,
per round (``fedlora.progress.round_seconds``: each round's ``duration-s`` -- its training, which
also carries the previous round's evaluation, and aggregation -- with the last adapter's own
evaluation exchange, ``eval-duration-s``, counted in the last round). Start-up
(Ray, the SuperLink and SuperNodes, ``flwr run``'s upload, the round-0 evaluation) is
excluded on both. The table reports the median over all timed rounds of each side and the
ratio deployment / simulation. Runs alternate in ABBA order when ``--repeats`` is 2 or more;
each deployment run gets a fresh deployment, so its sites start with empty privacy ledgers
as each simulation's sites do.

Afterwards the cost of a fresh ClientApp process is measured in fresh Python processes: the
interpreter alone, ``import fedlora.clients.app``, and the model + LoRA build and data tokenisation
a fresh process repeats for every message.

Run from the repository root::

    .venv/bin/python bench/deployment_overhead.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_common import (  # this script's folder
    abba_schedule,
    add_output_arguments,
    completed_rounds,
    emit_result,
    quiet_flower,
)

from fedlora.config import RunConfig
from fedlora.deploy.loopback import LocalDeployment, RunConfigValue, SiteData
from fedlora.flower_internals.tuning import DEFAULT_POLL_INTERVAL_S
from fedlora.progress import round_seconds
from fedlora.simulations.runner import simulate
from fedlora.testing import write_sft_file

ROOT = Path(__file__).resolve().parents[1]

TARGET_RATIO = 1.5
SITES = ("site-a", "site-b")

# In a fresh process: what a ClientApp does before it can train (clients/runtime.py).
_COLD_MESSAGE = """
import json, sys, time
t0 = time.perf_counter()
import fedlora.clients.app
t1 = time.perf_counter()
from pathlib import Path
from fedlora.clients.runtime import get_datasets, get_model
from fedlora.config import RunConfig
from fedlora.flower_internals.tuning import DEFAULT_POLL_INTERVAL_S
from fedlora.sites import SiteSpec
flat, train, test = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
config = RunConfig.from_flat(flat)
loaded = get_model(config)
t2 = time.perf_counter()
get_datasets(SiteSpec("site-a", Path(train), Path(test)), config, loaded)
t3 = time.perf_counter()
print(json.dumps({"import-s": t1 - t0, "model-s": t2 - t1, "data-s": t3 - t2}))
"""


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Median per-round wall time of the same federation in simulation and in a "
            "deployment on 127.0.0.1."
        )
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per run")
    parser.add_argument("--examples-per-site", type=int, default=24, help="training records")
    parser.add_argument("--test-examples", type=int, default=8, help="held-out records per site")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs per side, in ABBA order (simulation, deployment, deployment, simulation)",
    )
    parser.add_argument(
        "--deployment-first", action="store_true", help="start the ABBA order with the deployment"
    )
    parser.add_argument(
        "--cold-samples", type=int, default=3, help="fresh processes per cold-start measurement"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL_INTERVAL_S,
        help="the warm nodes' longest wait between pulls (fedlora deploy supernode's default)",
    )
    parser.add_argument(
        "--cold-runs", type=int, default=1, help="runs on plain flower-supernode nodes (0: none)"
    )
    add_output_arguments(parser, verbose_help="let Flower, Ray and fedlora log")
    return parser.parse_args(argv)


def _quiet(verbose: bool) -> None:
    if verbose:
        logging.basicConfig(level=logging.INFO)
    else:
        quiet_flower()


@dataclass(frozen=True)
class SideRun:
    """One run of one side: its timed rounds (1..R) and what they computed."""

    seconds: list[float]
    eval_loss: list[float]
    epsilon: dict[str, float]  # each site's ε of this run (RDP), after round R
    total_s: float


def _read_run(run_dir: Path, rounds: int, total_s: float) -> SideRun:
    records = completed_rounds(run_dir, rounds)
    timed = [r for r in records if int(r["round"]) >= 1]
    privacy = timed[-1].get("privacy", {})
    return SideRun(
        seconds=round_seconds(records),
        eval_loss=[float(r["eval"]["loss"]) for r in timed],
        epsilon={
            site: float(entry.get("run-epsilon-rdp", float("nan")))
            for site, entry in sorted(privacy.items())
            if isinstance(entry, dict)
        },
        total_s=total_s,
    )


def _summary(runs: list[SideRun]) -> dict[str, Any]:
    rounds = [seconds for run in runs for seconds in run.seconds]
    return {
        "median-s": round(statistics.median(rounds), 3),
        "rounds-s": [[round(s, 3) for s in run.seconds] for run in runs],
        "run-medians-s": [round(statistics.median(run.seconds), 3) for run in runs],
        "total-s": [round(run.total_s, 1) for run in runs],
        "eval-loss": [[round(x, 6) for x in run.eval_loss] for run in runs],
        "epsilon": [{site: round(e, 4) for site, e in run.epsilon.items()} for run in runs],
    }


def _wall(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL
    )
    return time.perf_counter() - started, result.stdout


def _cold_message(
    flat: dict[str, RunConfigValue], train: Path, test: Path, samples: int
) -> dict[str, float]:
    """Median costs of a fresh ClientApp-like process, each in a new interpreter."""
    python = [sys.executable, "-c"]
    interpreter = [_wall([*python, "pass"])[0] for _ in range(samples)]
    imports = [_wall([*python, "import fedlora.clients.app"])[0] for _ in range(samples)]
    parts: list[dict[str, float]] = []
    whole: list[float] = []
    for _ in range(samples):
        seconds, stdout = _wall([*python, _COLD_MESSAGE, json.dumps(flat), str(train), str(test)])
        whole.append(seconds)
        parts.append(json.loads(stdout.strip().splitlines()[-1]))
    return {
        "python-start-s": round(statistics.median(interpreter), 3),
        "python-import-clients-app-s": round(statistics.median(imports), 3),
        "in-process-import-s": round(statistics.median(p["import-s"] for p in parts), 3),
        "model-lora-s": round(statistics.median(p["model-s"] for p in parts), 3),
        "data-tokenize-s": round(statistics.median(p["data-s"] for p in parts), 3),
        "cold-message-process-s": round(statistics.median(whole), 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.rounds < 1 or args.repeats < 1 or args.cold_samples < 1 or args.cold_runs < 0:
        raise SystemExit("--rounds, --repeats and --cold-samples must be >= 1, --cold-runs >= 0")
    _quiet(args.verbose)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    load_before = os.getloadavg()[0]
    first, second = (
        ("deployment", "simulation") if args.deployment_first else ("simulation", "deployment")
    )
    order = abba_schedule(args.repeats, first, second)
    runs: dict[str, list[SideRun]] = {"simulation": [], "deployment": [], "cold": []}
    flat: dict[str, RunConfigValue] = {
        "rounds": args.rounds,
        "sites": len(SITES),
        "model": "tiny-llama",
        "task": "sft",
        "max-length": args.max_length,
        "batch-size": args.batch_size,
        "noise-multiplier": 1.0,
        "accountant": "rdp",
        "budget-epsilon": 50.0,
        "device": "cpu",
        "bf16": "off",
    }
    startup_s = 0.0
    cold: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        out = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedlora-")))
        out = out.absolute()
        data = out / "data"
        trains = [write_sft_file(data / f"{s}.jsonl", s, args.examples_per_site) for s in SITES]
        tests = [write_sft_file(data / f"{s}.test.jsonl", s, args.test_examples) for s in SITES]

        def site_data(warm: bool) -> dict[str, SiteData]:
            return {
                name: SiteData(
                    train,
                    test,
                    budget_epsilon=50.0,
                    device="cpu",
                    cpu_threads=1,
                    warm=warm,
                    poll_interval=args.poll_interval,
                )
                for name, train, test in zip(SITES, trains, tests, strict=True)
            }

        sites = site_data(warm=True)
        for index, side in enumerate(order):
            started = time.monotonic()
            if side == "simulation":
                config = RunConfig.from_flat(
                    {
                        **flat,
                        "data-files": ",".join(map(str, trains)),
                        "test-files": ",".join(map(str, tests)),
                        "client-gpus": 0.0,
                        "out": str(out / "simulation" / f"run-{index}"),
                    }
                )
                run_dir = simulate(config, run_id=f"bench-{index}", verbose=args.verbose)
            else:
                # A fresh deployment per run, as a fresh simulation: each site starts with an
                # empty privacy ledger on both sides. A site with history from an earlier run
                # also computes this run's ε apart from its lifetime ε (one more PRV
                # accounting per round, ~0.8 s here), which is not deployment overhead.
                with LocalDeployment(
                    out / f"deployment-{index}", sites, connection=f"bench{index}"
                ) as deployment:
                    startup_s = time.monotonic() - started
                    started = time.monotonic()
                    run_dir = deployment.submit(flat)
            runs[side].append(_read_run(run_dir, args.rounds, time.monotonic() - started))
            print(f"{side} run {len(runs[side])}: rounds {runs[side][-1].seconds}", flush=True)
        if args.cold_runs:
            cold_sites = site_data(warm=False)
            with LocalDeployment(
                out / "cold", cold_sites, connection="cold", pull_hold=0
            ) as cold_dep:
                for _ in range(args.cold_runs):
                    started = time.monotonic()
                    run_dir = cold_dep.submit(flat)
                    runs["cold"].append(_read_run(run_dir, args.rounds, time.monotonic() - started))
                    print(f"cold run {len(runs['cold'])}: rounds {runs['cold'][-1].seconds}")
        cold = _cold_message(flat, trains[0], tests[0], args.cold_samples)

    simulation, deployed = _summary(runs["simulation"]), _summary(runs["deployment"])
    ratio = deployed["median-s"] / simulation["median-s"]
    cold_side = _summary(runs["cold"]) if runs["cold"] else None
    cold_ratio = cold_side["median-s"] / simulation["median-s"] if cold_side else None
    machine = (
        f"{os.cpu_count()} CPU cores ({platform.machine()}), CPU only, "
        f"load average {load_before:.2f} at start"
    )
    # one train message per round (carrying the previous round's evaluation), one more at the end
    messages_per_site_round = (args.rounds + 1) / args.rounds
    result: dict[str, Any] = {
        "benchmark": "deployment_overhead",
        "measured": (
            "median over rounds 1..R of every run of metrics.jsonl duration-s (the last round "
            "with its adapter's evaluation, eval-duration-s): from building round 1's train "
            "messages to holding every site's evaluation of the last adapter, per round; "
            "Ray / SuperLink / SuperNode start-up, flwr run and round 0 excluded on both sides"
        ),
        "workload": {**flat, "sites": len(SITES), "examples-per-site": args.examples_per_site},
        "poll-interval-s": args.poll_interval,
        "repeats": args.repeats,
        "order": order,
        "machine": machine,
        "simulation": simulation,
        "deployment": {**deployed, "startup-s": round(startup_s, 1)},
        "ratio": round(ratio, 3),
        "cold-deployment": cold_side,
        "cold-ratio": None if cold_ratio is None else round(cold_ratio, 3),
        "target-ratio": TARGET_RATIO,
        "within-target": ratio <= TARGET_RATIO,
        "cold-message": cold,
        "extra-per-round-s": round(deployed["median-s"] - simulation["median-s"], 3),
        "messages-per-site-per-round": messages_per_site_round,
    }

    print(
        f"\ndeployment overhead: {len(SITES)} sites, {args.rounds} rounds, tiny-llama SFT, "
        f"{args.examples_per_site} examples/site, batch {args.batch_size}, DP σ=1.0 (rdp), "
        f"run order {' '.join(order)}; {machine}"
    )
    print(f"measured: {result['measured']}")
    timed = args.rounds * args.repeats
    print(f"{'side':>10}  {'rounds':>6}  {'median s':>9}  {'per-run medians s':>20}  total s")
    sides = [("simulation", simulation), ("deployment", deployed)]
    if cold_side is not None:
        sides.append(("cold", cold_side))
    for label, summary in sides:
        medians = ", ".join(f"{m:.2f}" for m in summary["run-medians-s"])
        totals = ", ".join(f"{t:.0f}" for t in summary["total-s"])
        count = len(summary["rounds-s"]) * args.rounds if label == "cold" else timed
        print(f"{label:>10}  {count:>6}  {summary['median-s']:>9.3f}  {medians:>20}  {totals}")
    print(f"deployment / simulation: {ratio:.2f}×  (deployment start-up {startup_s:.0f} s)")
    if cold_ratio is not None:
        print(f"cold deployment (plain flower-supernode) / simulation: {cold_ratio:.2f}×")
    verdict = "within" if ratio <= TARGET_RATIO else "ABOVE"
    print(f"target deployment/simulation <= {TARGET_RATIO:.2f}: {verdict}")
    print(
        "fresh process, medians of "
        f"{args.cold_samples}: python start {cold['python-start-s']:.2f} s, "
        f"python -c 'import fedlora.clients.app' {cold['python-import-clients-app-s']:.2f} s, "
        f"model + LoRA {cold['model-lora-s']:.2f} s, data {cold['data-tokenize-s']:.2f} s, "
        f"whole cold message set-up {cold['cold-message-process-s']:.2f} s"
    )
    print(
        "workload check, eval loss per round: "
        f"simulation {simulation['eval-loss'][0]}  deployment {deployed['eval-loss'][0]}"
    )
    emit_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
