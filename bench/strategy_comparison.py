"""Strategies side by side: utility and bytes per round under DP, and server aggregation time.

Two parts run in this one process, one after the other.

(1) Federation. The built-in ``hospitals`` scenario, task ``classification`` (route a triage
    message to one of 8 departments), ``tiny-llama`` + LoRA r=8 (alpha 16) on its default targets
    with its classification head, DP-SGD at every site (Opacus hooks). Every strategy of
    :data:`FEDERATION_STRATEGIES` runs the same federation -- same sites, same generated data, same
    seed, same settings -- with ``fedlora.simulations.runner.simulate(..., engine="inprocess")``
    (the real ServerApp round loop and ClientApp, sites one after another in this process, no Ray).
    Each run has its own output folder, hence its own fresh privacy ledgers.

    DP: a target ε per site for the whole run (``--epsilon``) with the default PRV accountant;
    each site calibrates σ for its own record count, batch and planned steps. The calibration is
    deterministic and cached per process (``fedlora.clients.site_privacy._calibrated``), so only the
    first strategy pays for it and every strategy trains with the same σ per site. The DP noise
    itself is not seeded: two runs of one strategy differ by their noise. Each site's budget is
    twice the target, so no round is refused. Local training: plain SGD, lr 1.0, expected
    Poisson batch 64, one epoch per round. Under DP noise this learns here; AdamW (the product's
    default) normalises every coordinate's step, so the noise moves the adapter as far as the
    signal does, and in trial runs it stayed at chance.

    ``hetero-rank`` trains site ``i`` at rank ``FEDERATION_SITE_RANKS[i % 3]`` (``site-ranks``;
    the global adapter stays at lora-r = 8, every site is sent it and cuts it to its own rank,
    and evaluates that cut). Should the installed registry lack ``hetero-rank``, the table says
    "not run: not wired end-to-end" instead of giving figures.

    Reported from each run's ``metrics.jsonl``: accuracy and loss of the evaluation on every
    site's held-out split (example-weighted over sites) before training and after the last round;
    mean ``bytes-sent`` (coordinator → sites: each round's train message with the global adapter,
    which also serves the previous adapter's evaluation, and in the last round the evaluate
    message of the final adapter) and ``bytes-received`` (sites → coordinator: the trained
    adapters) over rounds 1..R; each site's ε after the last round. FFA-LoRA's sites send only
    the ``B`` factors and the head, hetero-rank's sites their own rank's factors.

(2) Aggregation time. One ``aggregate`` call for ``--agg-sites`` sites (default 100) on an
    adapter shaped like LoRA r=8 on ``q_proj`` and ``v_proj`` of a 7B Llama: 32 layers, hidden
    4096, so 64 modules, each ``A`` 8 × 4096 and ``B`` 4096 × 8 (4.19 M values, 16.8 MB of
    float32 per site). The tensors are random float32 (global adapter plus small noise per site,
    random example counts). Strategies: FedAvg, FedAdam, coordinate median, trimmed mean (β 0.1),
    Krum (f = 0), built with ``strategies.build_strategy``'s defaults; FFA-LoRA, whose updates
    carry only the ``B`` factors; and HeteroRank with each site's rank drawn from {4, 8, 16} and
    global rank 8 (``set_global`` with the global adapter first, untimed; then ``aggregate``).
    Each strategy is one instance called on the same updates up to ``--agg-repeats`` times, with
    no further call once its calls have taken ``--agg-budget`` seconds (Krum and HeteroRank take
    minutes a call at 100 sites); the wall time of every call (``time.perf_counter``) is kept and
    the median reported. The updates (~1.7 GB for 100 sites) are built once; the
    heterogeneous-rank ones only after the others are freed. Peak RSS is the process's so far.

Both parts run with ``--threads`` torch threads (1 by default; see its help).

Run from the repository root (about 12 minutes on 2 cores, most of it one Krum and one HeteroRank
call at 100 sites)::

    .venv/bin/python bench/strategy_comparison.py

A quick smoke run (well under a minute)::

    .venv/bin/python bench/strategy_comparison.py --rounds 2 --examples 40 --agg-sites 10 \\
        --agg-strategies fedavg ffa-lora
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import transformers
from bench_common import add_output_arguments, emit_result, quiet_flower

from fedlora.adapters import AdapterState
from fedlora.config import RunConfig
from fedlora.lora_factors import is_lora_b
from fedlora.rundir import RunDirectoryReader
from fedlora.simulations.materialize import resolve_config, simulated_sites
from fedlora.simulations.runner import simulate
from fedlora.strategies import SiteUpdate, build_strategy, strategy_names
from fedlora.strategies.base import Strategy
from fedlora.strategies.hetero_rank import HeteroRank

FEDERATION_STRATEGIES = ("fedavg", "fedprox", "fedadam", "ffa-lora", "hetero-rank")
FEDERATION_SITE_RANKS = (2, 4, 8)
"""hetero-rank in the federation: site i trains at rank ``FEDERATION_SITE_RANKS[i % 3]``."""
AGGREGATION_STRATEGIES = (
    "fedavg",
    "fedadam",
    "median",
    "trimmed-mean",
    "krum",
    "ffa-lora",
    "hetero-rank",
)
LAYERS = 32
HIDDEN = 4096
RANK = 8
LORA_ALPHA = 16
HETERO_RANKS = (4, 8, 16)
PROJECTIONS = ("q_proj", "v_proj")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Strategies under DP (accuracy, loss, bytes per round, ε) and the time of "
        "one aggregation of 100 sites × a 7B-shaped LoRA adapter."
    )
    parser.add_argument("--rounds", type=int, default=5, help="federated rounds per strategy")
    parser.add_argument("--sites", type=int, default=5, help="sites (hospitals has 5 named)")
    parser.add_argument("--examples", type=int, default=200, help="generated examples per site")
    parser.add_argument("--epsilon", type=float, default=8.0, help="target ε per site, whole run")
    parser.add_argument("--model", default="tiny-llama", help="base model preset")
    parser.add_argument(
        "--optimizer",
        choices=("sgd", "adamw"),
        default="sgd",
        help="local optimizer (plain SGD learns under DP noise here; AdamW's per-coordinate "
        "normalisation turns the noise into full-size steps)",
    )
    parser.add_argument("--lr", type=float, default=1.0, help="local learning rate")
    parser.add_argument("--batch-size", type=int, default=64, help="expected Poisson batch")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agg-sites", type=int, default=100, help="sites in the timed aggregate")
    parser.add_argument(
        "--agg-strategies",
        nargs="+",
        choices=AGGREGATION_STRATEGIES,
        default=list(AGGREGATION_STRATEGIES),
        help="strategies to time (default: all)",
    )
    parser.add_argument("--agg-repeats", type=int, default=3, help="timed calls per strategy")
    parser.add_argument(
        "--agg-budget",
        type=float,
        default=60.0,
        help="seconds: no further call of a strategy once its calls took this long (Krum and "
        "hetero-rank at 100 sites take minutes a call)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch default). 1 by default: with 2 threads on a shared 2-core "
        "machine, MKL's QR and SVD ran 10-30x slower than with 1",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("federation", "aggregation"),
        default=["federation", "aggregation"],
    )
    add_output_arguments(parser, verbose_help="let Flower, transformers and Opacus log")
    return parser.parse_args(argv)


def _quiet(verbose: bool) -> None:
    if verbose:
        return
    quiet_flower()
    logging.getLogger("clients").setLevel(logging.ERROR)
    logging.getLogger("server").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning)
    # Opacus's PRV accountant takes log(1 - q) even when a site's sample rate q is 1.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"opacus\.")


# -- (1) federation -------------------------------------------------------------------------


def _federation_config(args: argparse.Namespace, strategy: str, out: Path) -> RunConfig:
    return RunConfig(
        scenario="hospitals",
        task="classification",
        model=args.model,
        strategy=strategy,
        rounds=args.rounds,
        sites=args.sites,
        examples_per_site=args.examples,
        optimizer=args.optimizer,
        lr=args.lr,
        batch_size=args.batch_size,
        local_epochs=args.local_epochs,
        seed=args.seed,
        dp=True,
        target_epsilon=args.epsilon,
        accountant="prv",
        budget_epsilon=2 * args.epsilon,
        device="cpu",
        bf16="off",
        out=str(out),
    )


def _site_ranks(config: RunConfig) -> dict[str, int]:
    """hetero-rank's ranks: the scenario's sites in order, cycling through the ranks."""
    sites = simulated_sites(resolve_config(config))
    return {
        site.name: FEDERATION_SITE_RANKS[index % len(FEDERATION_SITE_RANKS)]
        for index, site in enumerate(sites)
    }


def _run_strategy(args: argparse.Namespace, strategy: str, root: Path) -> dict[str, Any]:
    config = _federation_config(args, strategy, root / strategy)
    ranks: dict[str, int] = {}
    if strategy == "hetero-rank":
        ranks = _site_ranks(config)
        config = dataclasses.replace(
            config, site_ranks=tuple(f"{site}={rank}" for site, rank in ranks.items())
        )
    started = time.perf_counter()
    run_dir = simulate(config, run_id="run", engine="inprocess")
    wall_s = time.perf_counter() - started
    reader = RunDirectoryReader(run_dir)
    records = reader.read_metrics()
    rounds = [record for record in records if record["round"] >= 1]
    if len(rounds) != args.rounds:
        raise RuntimeError(
            f"{strategy}: {len(rounds)} rounds in {reader.metrics_path}, {args.rounds} run"
        )
    final = rounds[-1]
    epsilon: dict[str, float] = {}
    sigma: dict[str, float] = {}
    for record in rounds:  # a site's last spend; every site spends every round unless refused
        for site, spend in record["privacy"].items():
            epsilon[site] = round(float(spend["epsilon"]), 4)
            sigma[site] = round(float(spend["noise-multiplier"]), 4)
    problems = {
        f"round {record['round']}": {
            key: record[key] for key in ("refused", "rejected", "errors") if record.get(key)
        }
        for record in rounds
        if any(record.get(key) for key in ("refused", "rejected", "errors"))
    }
    return {
        "strategy": strategy,
        "initial-accuracy": round(records[0]["eval"]["accuracy"], 4),
        "initial-loss": round(records[0]["eval"]["loss"], 4),
        "accuracy": round(final["eval"]["accuracy"], 4),
        "loss": round(final["eval"]["loss"], 4),
        "accuracy-per-round": [round(record["eval"]["accuracy"], 4) for record in rounds],
        "loss-per-round": [round(record["eval"]["loss"], 4) for record in rounds],
        "eval-examples": int(final["eval"]["num-examples"]),
        "bytes-sent-mean": round(statistics.mean(record["bytes-sent"] for record in rounds)),
        "bytes-received-mean": round(
            statistics.mean(record["bytes-received"] for record in rounds)
        ),
        "epsilon": dict(sorted(epsilon.items())),
        "site-ranks": ranks or {site: config.lora_r for site in sorted(epsilon)},
        "site-bytes-received-mean": {
            site: round(
                statistics.mean(r["sites"].get(site, {}).get("bytes-received", 0) for r in rounds)
            )
            for site in sorted(final["sites"])
        },
        "noise-multiplier": dict(sorted(sigma.items())),
        "problems": problems,
        "wall-s": round(wall_s, 1),
    }


def _federation(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    rows = []
    not_run: dict[str, str] = {}
    for strategy in FEDERATION_STRATEGIES:
        if strategy not in strategy_names():
            not_run[strategy] = "not wired end-to-end"
            continue
        print(f"  federation: {strategy} ...", flush=True)
        rows.append(_run_strategy(args, strategy, root))
    return {
        "scenario": "hospitals",
        "task": "classification",
        "model": args.model,
        "rounds": args.rounds,
        "sites": args.sites,
        "examples-per-site": args.examples,
        "target-epsilon": args.epsilon,
        "accountant": "prv",
        "optimizer": args.optimizer,
        "lr": args.lr,
        "batch-size": args.batch_size,
        "local-epochs": args.local_epochs,
        "seed": args.seed,
        "rows": rows,
        "not-run": not_run,
    }


def _print_federation(result: dict[str, Any]) -> None:
    print(
        f"\n(1) Federation: {result['scenario']} {result['task']} (8 departments, chance 0.125), "
        f"{result['model']} + LoRA r=8, {result['sites']} sites × {result['examples-per-site']} "
        f"examples, {result['rounds']} rounds, batch {result['batch-size']}, "
        f"{result['optimizer']} lr {result['lr']}, "
        f"{result['local-epochs']} local epochs; DP target ε {result['target-epsilon']:g} per "
        f"site ({result['accountant']} accountant), seed {result['seed']}"
    )
    header = (
        f"{'strategy':<12}  {'acc r0':>6}  {'final acc':>9}  {'final loss':>10}  "
        f"{'sent B/round':>12}  {'recv B/round':>12}  {'recv / fedavg':>13}  "
        f"{'wall s':>6}  final ε per site"
    )
    print(header)
    rows = result["rows"]
    fedavg = next((row for row in rows if row["strategy"] == "fedavg"), None)
    for row in rows:
        ratio = (
            f"{row['bytes-received-mean'] / fedavg['bytes-received-mean']:.3f}"
            if fedavg and fedavg["bytes-received-mean"]
            else "-"
        )
        epsilon = ", ".join(f"{site} {value:.3f}" for site, value in row["epsilon"].items())
        print(
            f"{row['strategy']:<12}  {row['initial-accuracy']:>6.3f}  {row['accuracy']:>9.3f}  "
            f"{row['loss']:>10.4f}  {row['bytes-sent-mean']:>12,}  "
            f"{row['bytes-received-mean']:>12,}  {ratio:>13}  {row['wall-s']:>6.1f}  {epsilon}"
        )
    for name, why in result["not-run"].items():
        print(f"{name:<12}  not run: {why}")
    for row in rows:
        print(
            f"per round, {row['strategy']}: accuracy {row['accuracy-per-round']}, "
            f"loss {row['loss-per-round']}"
        )
        if len(set(row["site-ranks"].values())) > 1:
            print(
                f"  site ranks, {row['strategy']}: {row['site-ranks']}; uplink bytes/round per "
                f"site: {row['site-bytes-received-mean']}"
            )
        if row["problems"]:
            print(f"  refused / rejected / errors, {row['strategy']}: {row['problems']}")
    sigma = rows[0]["noise-multiplier"] if rows else {}
    print(f"calibrated σ per site: {sigma}")


# -- (2) aggregation time -------------------------------------------------------------------


def _module_names() -> list[tuple[str, str]]:
    prefix = "base_model.model.model.layers"
    return [
        (f"{prefix}.{layer}.self_attn.{proj}.lora_A.weight",
         f"{prefix}.{layer}.self_attn.{proj}.lora_B.weight")
        for layer in range(LAYERS)
        for proj in PROJECTIONS
    ]  # fmt: skip


def _global_state(generator: torch.Generator) -> AdapterState:
    state: AdapterState = {}
    for a_name, b_name in _module_names():
        state[a_name] = torch.randn(RANK, HIDDEN, generator=generator) / HIDDEN**0.5
        state[b_name] = torch.randn(HIDDEN, RANK, generator=generator) * 0.01
    return dict(sorted(state.items()))


def _homogeneous_updates(
    global_state: AdapterState, sites: int, generator: torch.Generator, counts: list[int]
) -> list[SiteUpdate]:
    return [
        SiteUpdate(
            site=f"site-{index:03d}",
            state={
                name: tensor + 0.01 * torch.randn(tensor.shape, generator=generator)
                for name, tensor in global_state.items()
            },
            num_examples=counts[index],
        )
        for index in range(sites)
    ]


def _hetero_updates(
    sites: int, generator: torch.Generator, counts: list[int], ranks: list[int]
) -> list[SiteUpdate]:
    updates = []
    for index in range(sites):
        rank = ranks[index]
        state: AdapterState = {}
        for a_name, b_name in _module_names():
            state[a_name] = torch.randn(rank, HIDDEN, generator=generator) / HIDDEN**0.5
            state[b_name] = torch.randn(HIDDEN, rank, generator=generator) * 0.01
        updates.append(SiteUpdate(f"site-{index:03d}", dict(sorted(state.items())), counts[index]))
    return updates


def _time_calls(
    strategy: Strategy,
    global_state: AdapterState,
    updates: list[SiteUpdate],
    repeats: int,
    budget_s: float,
) -> list[float]:
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) < budget_s):
        started = time.perf_counter()
        result = strategy.aggregate(global_state, updates)
        times.append(time.perf_counter() - started)
        del result
        gc.collect()
    return times


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _aggregation(args: argparse.Namespace) -> dict[str, Any]:
    sites, repeats, budget = args.agg_sites, args.agg_repeats, args.agg_budget
    generator = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    counts = [rng.randint(50, 150) for _ in range(sites)]
    ranks = [rng.choice(HETERO_RANKS) for _ in range(sites)]
    global_state = _global_state(generator)
    values = sum(tensor.numel() for tensor in global_state.values())
    print(f"  aggregation: building {sites} site updates ...", flush=True)
    updates = _homogeneous_updates(global_state, sites, generator, counts)
    rows: list[dict[str, Any]] = []

    def record(name: str, times: list[float], note: str) -> None:
        rows.append(
            {
                "strategy": name,
                "median-s": round(statistics.median(times), 4),
                "times-s": [round(t, 4) for t in times],
                "note": note,
                "peak-rss-gb": round(_peak_rss_gb(), 2),
            }
        )
        print(f"  aggregation: {name} {rows[-1]['times-s']} s", flush=True)

    chosen = args.agg_strategies
    for name in ("fedavg", "fedadam", "median", "trimmed-mean", "krum"):
        if name not in chosen:
            continue
        strategy = build_strategy(RunConfig(strategy=name, sites=sites), sites)
        record(name, _time_calls(strategy, global_state, updates, repeats, budget), "A and B")
        del strategy
        gc.collect()
    b_only = [
        SiteUpdate(
            update.site,
            {name: tensor for name, tensor in update.state.items() if is_lora_b(name)},
            update.num_examples,
        )
        for update in updates
    ]
    if "ffa-lora" in chosen:
        ffa = build_strategy(RunConfig(strategy="ffa-lora", sites=sites), sites)
        record("ffa-lora", _time_calls(ffa, global_state, b_only, repeats, budget), "B only")
        del ffa
    del b_only, updates
    gc.collect()
    spread = {rank: ranks.count(rank) for rank in HETERO_RANKS}
    if "hetero-rank" in chosen:  # built only now: the updates above are freed
        hetero_updates = _hetero_updates(sites, generator, counts, ranks)
        hetero = HeteroRank(RANK, lora_alpha=LORA_ALPHA)
        hetero.set_global(global_state)
        record(
            "hetero-rank",
            _time_calls(hetero, global_state, hetero_updates, repeats, budget),
            f"site ranks {spread}, global rank {RANK}",
        )
        del hetero, hetero_updates
        gc.collect()
    return {
        "sites": sites,
        "repeats": repeats,
        "budget-s": budget,
        "adapter": f"LoRA r={RANK} on {','.join(PROJECTIONS)}, {LAYERS} layers, hidden {HIDDEN}",
        "modules": LAYERS * len(PROJECTIONS),
        "values-per-site": values,
        "mb-per-site-float32": round(values * 4 / 1e6, 2),
        "hetero-ranks": {str(rank): count for rank, count in spread.items()},
        "rows": rows,
    }


def _print_aggregation(result: dict[str, Any]) -> None:
    print(
        f"\n(2) Aggregation time: {result['sites']} sites × {result['adapter']} "
        f"({result['modules']} modules, {result['values-per-site'] / 1e6:.2f} M values = "
        f"{result['mb-per-site-float32']:.1f} MB float32 per site), random tensors; median of "
        f"up to {result['repeats']} calls, no further call once a strategy's calls took "
        f"{result['budget-s']:g} s"
    )
    print(f"{'strategy':<12}  {'median s':>9}  {'calls s':<28}  {'peak RSS GB':>11}  updates")
    for row in result["rows"]:
        calls = ", ".join(f"{t:.3f}" for t in row["times-s"])
        print(
            f"{row['strategy']:<12}  {row['median-s']:>9.3f}  {calls:<28}  "
            f"{row['peak-rss-gb']:>11.2f}  {row['note']}"
        )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.rounds < 1 or args.sites < 1 or args.examples < 5 or args.epsilon <= 0:
        raise SystemExit("--rounds and --sites must be >= 1, --examples >= 5, --epsilon > 0")
    if args.agg_sites < 3 or args.agg_repeats < 1 or args.threads < 0:
        raise SystemExit("--agg-sites >= 3 (Krum needs 2f + 3), --agg-repeats >= 1, --threads >= 0")
    _quiet(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    result: dict[str, Any] = {"benchmark": "strategies"}
    if "federation" in args.parts:
        if args.out is not None:
            result["federation"] = _federation(args, args.out)
        else:
            with tempfile.TemporaryDirectory(prefix="fedlora-bench-strategies-") as tmp:
                result["federation"] = _federation(args, Path(tmp))
    if "aggregation" in args.parts:
        result["aggregation"] = _aggregation(args)
    machine = (
        f"{os.cpu_count()} CPU cores ({platform.machine()}), {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, load average {load_before:.2f} at start"
    )
    result["machine"] = machine
    result["total-s"] = round(time.monotonic() - started, 1)
    print(f"\nStrategies benchmark; {machine}; total {result['total-s']} s")
    if "federation" in result:
        _print_federation(result["federation"])
    if "aggregation" in result:
        _print_aggregation(result["aggregation"])
    emit_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
