"""Per-round overhead of fedlora against a minimal plain-Flower app on the same workload.

Both sides run in this one process, one after the other, under Flower's simulation engine
(``run_simulation``, Ray, one virtual SuperNode per site, 1 CPU per ClientApp):

(a) fedlora: ``fedlora.simulations.runner.simulate`` -- fedlora's coordinator round loop, message
    protocol, ClientApp (base-model fingerprint check, adapter checks), strategy, the PEFT
    adapter directory it writes every round and ``metrics.jsonl``. Its per-round time comes
    from ``metrics.jsonl`` (``fedlora.progress.round_seconds``). A fedlora round is one exchange
    with each site: its train message also carries the evaluation of the previous round's
    adapter, and the last adapter is evaluated in one more exchange.
(b) plain Flower: ``bench/plain_flower_app.py`` -- a hand-written ServerApp loop (send train to
    every node, Flower's weighted FedAvg ``aggregate_arrayrecords``, send evaluate to every node)
    and a ClientApp with a plain AdamW loop.

The workload is identical: the same site files (fedlora's generated scenario data, read back
from ``<out>/.scenario-data``), the same base model + LoRA (``fedlora.models``), the same
tokenisation and batches (``fedlora.data``), optimizer (AdamW, weight decay 0), learning rate,
batch size, local epochs and evaluation batch size (32).

What is measured on both sides: the wall time from building round 1's train messages to
holding every site's evaluation of the last round's adapter, per round (the plain app times
each round from its train messages to its evaluation replies). Startup is excluded on
both: Ray start, the server's model load, and a round-0 evaluation of the initial adapter at
every site (which loads the model and data into each ClientApp process; both sides keep them
in memory afterwards). Both poll for replies every 0.05 s. The table reports the median over
rounds 1..R of each side and their ratio.

Run from the repository root::

    .venv/bin/python bench/round_overhead.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
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
from plain_flower_app import run_plain  # this script's folder; Ray workers import it too

from fedlora.config import RunConfig
from fedlora.progress import round_seconds
from fedlora.simulations.materialize import resolve_config, simulated_sites
from fedlora.simulations.runner import simulate

TARGET_RATIO = 1.10


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Median per-round wall time of fedlora vs a plain Flower app, same workload."
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per side")
    parser.add_argument("--sites", type=int, default=3, help="simulated sites (SuperNodes)")
    parser.add_argument("--task", choices=("classification", "sft"), default="classification")
    parser.add_argument("--model", default="tiny-llama", help="preset, local dir or hub id")
    parser.add_argument("--examples-per-site", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--scenario", default="hospitals")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs per side, in ABBA order (fedlora, plain, plain, fedlora, ...)",
    )
    parser.add_argument(
        "--plain-first", action="store_true", help="start the ABBA order with the plain app"
    )
    add_output_arguments(parser, verbose_help="let Flower and Ray log")
    return parser.parse_args(argv)


def _quiet(verbose: bool) -> None:
    if not verbose:
        quiet_flower()


@dataclass(frozen=True)
class SideRun:
    """One simulation of one side: its timed rounds (1..R) and what they computed."""

    seconds: list[float]
    train_loss: list[float]
    eval_loss: list[float]
    total_s: float


def _run_fedlora(config: RunConfig, run_id: str, verbose: bool) -> SideRun:
    started = time.monotonic()
    run_dir = simulate(config, run_id=run_id, verbose=verbose)
    total = time.monotonic() - started
    records = completed_rounds(run_dir, config.rounds)
    timed = [r for r in records if int(r["round"]) >= 1]
    return SideRun(
        seconds=round_seconds(records),
        train_loss=[float(r["train"]["train-loss"]) for r in timed],
        eval_loss=[float(r["eval"]["loss"]) for r in timed],
        total_s=total,
    )


def _run_plain(config: RunConfig, run_id: str, verbose: bool) -> SideRun:
    del run_id  # the plain app writes nothing
    started = time.monotonic()
    rounds = run_plain(
        config,
        simulated_sites(config),
        device=config.device,
        client_gpus=config.client_gpus or 0.0,
        verbose=verbose,
    )
    return SideRun(
        seconds=[r.seconds for r in rounds],
        train_loss=[r.train_loss for r in rounds],
        eval_loss=[r.eval_loss for r in rounds],
        total_s=time.monotonic() - started,
    )


def _summary(runs: list[SideRun]) -> dict[str, Any]:
    rounds = [seconds for run in runs for seconds in run.seconds]
    return {
        "median-s": round(statistics.median(rounds), 4),
        "rounds-s": [[round(s, 4) for s in run.seconds] for run in runs],
        "run-medians-s": [round(statistics.median(run.seconds), 4) for run in runs],
        "total-s": [round(run.total_s, 2) for run in runs],
        "train-loss": [round(x, 6) for x in runs[0].train_loss],
        "eval-loss": [round(x, 6) for x in runs[0].eval_loss],
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.rounds < 1 or args.repeats < 1:
        raise SystemExit("--rounds and --repeats must be >= 1")
    _quiet(args.verbose)
    # Ray workers must import plain_flower_app by name (not get it pickled by value), so its
    # per-process model cache lives as long as fedlora's does.
    bench_dir = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [bench_dir, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    load_before = os.getloadavg()[0]
    first, second = ("plain", "fedlora") if args.plain_first else ("fedlora", "plain")
    order = abba_schedule(args.repeats, first, second)
    sides = {"fedlora": _run_fedlora, "plain": _run_plain}
    runs: dict[str, list[SideRun]] = {"fedlora": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="fedlora-bench-") as tmp:
        config = resolve_config(
            RunConfig(
                scenario=args.scenario,
                task=args.task,
                model=args.model,
                sites=args.sites,
                rounds=args.rounds,
                examples_per_site=args.examples_per_site,
                batch_size=args.batch_size,
                lr=args.lr,
                device=args.device,
                bf16="off",
                # the plain app trains without DP: so does fedlora here (DP costs are
                # bench/dp_overhead.py's)
                dp=False,
                client_cpus=1.0,
                client_gpus=0.0 if args.device == "cpu" else 1.0 / args.sites,
                out=str(args.out or Path(tmp)),
            )
        )
        simulated_sites(config)  # materialise the site files once, before either side runs
        for index, name in enumerate(order):
            runs[name].append(sides[name](config, f"bench-{os.getpid()}-{index}", args.verbose))

    fedlora, plain = _summary(runs["fedlora"]), _summary(runs["plain"])
    ratio = fedlora["median-s"] / plain["median-s"]
    machine = (
        f"{os.cpu_count()} CPU cores ({platform.machine()}), device {args.device}, "
        f"load average {load_before:.2f} at start"
    )
    result: dict[str, Any] = {
        "benchmark": "round_overhead",
        "measured": (
            "median over all timed rounds (rounds 1..R of every run) of per-round wall time "
            "(train at every site, FedAvg, evaluation of the new adapter at every site; fedlora "
            "also checks adapters and writes a PEFT adapter dir, and its round-r evaluation "
            "travels in round r+1's train message, the last one in an exchange of its own, "
            "counted in round R); Ray start, model loading and a round-0 warm-up evaluation "
            "excluded on both sides"
        ),
        "task": args.task,
        "model": args.model,
        "sites": args.sites,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "examples-per-site": args.examples_per_site,
        "batch-size": args.batch_size,
        "order": order,
        "machine": machine,
        "fedlora": fedlora,
        "plain": plain,
        "ratio": round(ratio, 4),
        "target-ratio": TARGET_RATIO,
        "within-target": ratio <= TARGET_RATIO,
    }

    print(
        f"\nround overhead: fedlora vs plain Flower -- {args.task}, {args.model}, "
        f"{args.sites} sites, {args.examples_per_site} examples/site, batch {args.batch_size}, "
        f"run order {' '.join(order)}; {machine}"
    )
    print(f"measured: {result['measured']}")
    timed = args.rounds * args.repeats
    print(f"{'rounds':>6}  {'fedlora s':>10}  {'plain s':>10}  {'fedlora/plain':>13}")
    print(f"{timed:>6}  {fedlora['median-s']:>10.3f}  {plain['median-s']:>10.3f}  {ratio:>13.3f}")
    print(f"per-run medians: fedlora {fedlora['run-medians-s']}  plain {plain['run-medians-s']}")
    print(
        "workload check, round-1 train loss: "
        f"fedlora {fedlora['train-loss'][0]:.6f}  plain {plain['train-loss'][0]:.6f}"
    )
    verdict = "within" if ratio <= TARGET_RATIO else "ABOVE"
    print(f"target fedlora/plain <= {TARGET_RATIO:.2f}: {verdict}")
    emit_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
