"""Privacy-utility on real models and real text: what the shared adapter gains, what DP costs.

Side by side in one script, on the same sites of the ``drug-reviews`` scenario (the drugs.com
reviews of the UCI Machine Learning Repository, Gräßer et al. 2018, CC BY 4.0; split non-IID
with :func:`fedlora.simulations.drug_reviews.split_reviews`):

* ``central``: every site's train records pooled into one site (centralised, non-DP), the same
  rounds and local epochs, so it sees every record as often as the federation does and takes
  the same number of optimizer steps up to the rounding of the last batch per site;
* ``federated``: the sites federated, non-DP;
* ``dp-eps<E>``: the sites federated with DP-SGD calibrated to ε = E per site over the run
  (δ = 0.1 / site records, the product's default; the ε shown is the accountant's);
* ``local-<site>``: each site alone on its own train records (non-DP, the same rounds).

Every config is one ``fedlora.simulations.runner.simulate`` run (the product's path, the
``inprocess`` engine) on per-site JSONL files this script writes, and its final adapter is
scored by :class:`fedlora.evaluation.RunEvaluator` (``fedlora evaluate``) on the real test file
``drugsComTest.tsv``: accuracy and macro-F1 (MiniLM classification of the rating), loss and
exact match of the greedy answer (SmolLM2 instruction tuning). The sites' own in-round
evaluation runs on a 3-record stub per site (it is not what the table shows; it only keeps the
run from scoring 379 reviews per site per round).

The records-per-site sweep (``--sweep-sizes``) runs the generated ``hospitals`` classification
scenario on MiniLM, non-DP and DP at ε 4, at several records per site, each scored on its own
sites' generated held-out splits.

Run from the repository root (see docs/benchmarks.md for the commands that made the tables)::

    python bench/utility.py --models minilm-l6 --rounds 2 --max-length 48
    python bench/utility.py --models --sweep-sizes 20 40 80 160 320 --sweep-rounds 2
    python bench/utility.py --models smollm2-135m --rounds 2 --max-steps 3 --test-rows 60 \
        --max-new-tokens 8 --max-length 256
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import utility_table as table  # this script's folder

from fedlora.config import RunConfig
from fedlora.data import load_examples, write_jsonl
from fedlora.errors import FedloraError
from fedlora.evaluation import RunEvaluator
from fedlora.rundir import RunDirectoryReader
from fedlora.simulations import drug_reviews
from fedlora.simulations.runner import simulate
from fedlora.simulations.scenarios import get_scenario

TASKS = {"minilm-l6": "classification", "smollm2-135m": "sft"}
CONFIGS = ("central", "federated", "dp", "local")
DEFAULT_OUT = Path("bench/results/utility")
STUB_TEST_ROWS = 3


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", choices=sorted(TASKS), default=["minilm-l6"])
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 4.0, 8.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet non-IID α")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=None, help="default: the product's")
    parser.add_argument("--optimizer", default=None, help="the sites' optimizer (default: adamw)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument(
        "--max-steps", type=int, default=0, help="cap on a site's steps per round (0: none)"
    )
    parser.add_argument("--max-length", type=int, default=64, help="tokens per record")
    parser.add_argument(
        "--test-rows", type=int, default=0, help="score only the first N test records (0: all)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=8, help="sft answers")
    parser.add_argument(
        "--sweep-sizes", nargs="*", type=int, default=[], help="records per site to sweep"
    )
    parser.add_argument("--sweep-rounds", type=int, default=3)
    parser.add_argument("--sweep-test-fraction", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--reuse", action="store_true", help="keep configs already in --out")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def _quiet(verbose: bool) -> None:
    if verbose:
        logging.basicConfig(level=logging.INFO)
        return
    warnings.filterwarnings("ignore")
    for name in ("flwr", "ray", "transformers", "fedlora", "clients", "server", "opacus"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _site_files(args: argparse.Namespace, task: str, folder: Path) -> dict[str, Any]:
    """Write each site's train JSONL, the pooled train JSONL and the stub test JSONL."""
    splits = drug_reviews.split_reviews(
        task=task, num_sites=args.sites, alpha=args.alpha, seed=args.seed
    )
    names = [f"site-{index}" for index in range(len(splits))]
    test = drug_reviews.held_out_records(task)
    folder.mkdir(parents=True, exist_ok=True)
    stub = folder / "stub-test.jsonl"
    write_jsonl(stub, test[:STUB_TEST_ROWS])
    sites: dict[str, Path] = {}
    pooled: list[dict[str, str]] = []
    for name, (train, _) in zip(names, splits, strict=True):
        records = drug_reviews.to_records(train, task)
        sites[name] = folder / f"{name}.jsonl"
        write_jsonl(sites[name], records)
        pooled += records
    write_jsonl(folder / "central.jsonl", pooled)
    return {"sites": sites, "central": folder / "central.jsonl", "stub": stub, "test": test}


def _plan(args: argparse.Namespace, files: dict[str, Any]) -> list[tuple[str, list[Path], dict]]:
    """(config name, data files, RunConfig changes) for every config asked for."""
    sites: dict[str, Path] = files["sites"]
    plan: list[tuple[str, list[Path], dict]] = []
    # The order the goals need them in, so an interrupted run has answered the most.
    if "federated" in args.configs:
        plan.append((table.FEDERATED, list(sites.values()), {"dp": False}))
    if "central" in args.configs:
        steps = args.max_steps * len(sites)  # the federation's total steps, on one site
        plan.append((table.CENTRAL, [files["central"]], {"dp": False, "max_steps": steps}))
    if "local" in args.configs:
        for name, path in sites.items():
            plan.append((f"{table.LOCAL_PREFIX}{name}", [path], {"dp": False}))
    if "dp" in args.configs:
        for epsilon in args.epsilons:
            changes = {"dp": True, "target_epsilon": epsilon}
            plan.append((table.dp_config(epsilon), list(sites.values()), changes))
    return plan


def _base_config(args: argparse.Namespace, model: str, task: str, out: Path) -> RunConfig:
    settings: dict[str, Any] = {
        "task": task,
        "model": model,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "local_epochs": args.local_epochs,
        "max_steps": args.max_steps,
        "max_length": args.max_length,
        "seed": args.seed,
        "device": "cpu",
        "out": str(out / "runs"),
    }
    if task == "classification":
        settings["labels"] = drug_reviews.LABELS  # a local site may lack a rating
    if args.lr is not None:
        settings["lr"] = args.lr
    if args.optimizer is not None:
        settings["optimizer"] = args.optimizer
    return RunConfig(**settings)


def _run(config: RunConfig, run_id: str, ledgers: Path) -> tuple[Path, float]:
    """One simulated run with its own fresh privacy ledgers; its directory and wall time."""
    config = config.replace(ledger_root=str(ledgers / run_id))
    started = time.perf_counter()
    run_dir = simulate(config, run_id=run_id, engine="inprocess")
    return run_dir, time.perf_counter() - started


def run_facts(run_dir: Path, accountant: str) -> dict[str, Any]:
    """Rounds, optimizer steps (all sites), mean bytes per round, ε spent (largest site)."""
    records = RunDirectoryReader(run_dir).read_metrics()
    rounds = [r for r in records if int(r["round"]) >= 1]
    steps = sum(
        float((site.get("train") or {}).get("steps", 0))
        for r in rounds
        for site in (r.get("sites") or {}).values()
    )
    moved = [float(r["bytes-sent"]) + float(r["bytes-received"]) for r in rounds]
    epsilons = [
        float(privacy[f"run-epsilon-{accountant}"])
        for privacy in (rounds[-1].get("privacy") or {}).values()
        if privacy.get(f"run-epsilon-{accountant}") is not None
    ]
    sigma = [
        float(privacy["noise-multiplier"])
        for privacy in (rounds[-1].get("privacy") or {}).values()
        if privacy.get("noise-multiplier") is not None
    ]
    return {
        "rounds": len(rounds),
        "steps": int(steps),
        "bytes-per-round": sum(moved) / len(moved) if moved else None,
        "epsilon": max(epsilons) if epsilons else None,
        "noise-multiplier": max(sigma) if sigma else None,
    }


def _score(
    run_dir: Path, examples: list[Any], max_new_tokens: int, *, initial: bool = False
) -> dict[str, float]:
    """The final adapter's metrics on ``examples`` (``initial``: the untrained adapter's)."""
    evaluator = RunEvaluator(run_dir)
    checkpoints = evaluator.checkpoints()
    evaluator.use(checkpoints[0] if initial else checkpoints[-1])
    return evaluator.evaluate(examples, max_new_tokens=max_new_tokens)


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")


def _bench_model(args: argparse.Namespace, model: str) -> None:
    task = TASKS[model]
    out = args.out / model
    results_path = out / "results.json"
    done = _load(results_path) if args.reuse else {}
    files = _site_files(args, task, out / "data")
    test = files["test"][: args.test_rows] if args.test_rows else files["test"]
    examples = load_examples(_write(out / "data" / "test.jsonl", test), task, _labels(task))
    base = _base_config(args, model, task, out)
    stub = str(files["stub"])
    for name, data, changes in _plan(args, files):
        if name in done:
            continue
        config = base.replace(
            data_files=tuple(map(str, data)), test_files=(stub,) * len(data), **changes
        )
        print(f"[{time.strftime('%H:%M:%S')}] {model} {name}: running", flush=True)
        run_dir, wall = _run(config, name, out / "ledgers")
        score_started = time.perf_counter()
        metrics = _score(run_dir, examples, args.max_new_tokens)
        done[name] = {
            "config": name,
            "model": model,
            "task": task,
            "sites": len(data),
            "train-records": sum(len(load_examples(p, task, _labels(task))) for p in data),
            "wall-s": wall,
            "score-s": time.perf_counter() - score_started,
            **run_facts(run_dir, config.accountant),
            **metrics,
        }
        _save(results_path, done)
        print(f"    {json.dumps(done[name], sort_keys=True)}", flush=True)
    trained = [name for name in done if (out / "runs" / name).is_dir()]
    if table.UNTRAINED not in done and trained:
        # Every config starts from the same fresh LoRA (seeded): one run's initial adapter
        # is theirs, scored on the same test records.
        print(f"[{time.strftime('%H:%M:%S')}] {model} {table.UNTRAINED}: scoring", flush=True)
        run_dir = out / "runs" / trained[0]
        metrics = _score(run_dir, examples, args.max_new_tokens, initial=True)
        done[table.UNTRAINED] = {"config": table.UNTRAINED, "model": model, **metrics}
        _save(results_path, done)
    _report(args, out, model, task, list(done.values()), len(examples))


def _labels(task: str) -> tuple[str, ...]:
    return drug_reviews.LABELS if task == "classification" else ()


def _write(path: Path, records: list[dict[str, str]]) -> Path:
    write_jsonl(path, records)
    return path


def _report(
    args: argparse.Namespace,
    out: Path,
    model: str,
    task: str,
    results: list[dict[str, Any]],
    test_rows: int,
) -> None:
    rows = table.with_local_mean(results, task)
    verdicts = table.goals(rows, task)
    summary = {
        "model": model,
        "task": task,
        "test-records": test_rows,
        "argv": sys.argv[1:],
        "rows": rows,
        "goals": verdicts,
    }
    _save(out / "summary.json", summary)
    text = table.markdown_table(rows, task) + "\n\n" + table.markdown_goals(verdicts) + "\n"
    (out / "table.md").write_text(text)
    table.plot_epsilon(rows, task, out / f"{model}-epsilon.png")
    print(text, flush=True)


def _sweep(args: argparse.Namespace) -> None:
    from fedlora.cli.evaluate import held_out_sources

    out = args.out / "sweep"
    results_path = out / "results.json"
    done = _load(results_path) if args.reuse else {}
    for size in args.sweep_sizes:
        for dp in (False, True):
            name = f"{size}-{'dp-eps4' if dp else 'non-dp'}"
            if name in done:
                continue
            config = RunConfig(
                scenario="hospitals",
                task="classification",
                model="minilm-l6",
                rounds=args.sweep_rounds,
                examples_per_site=size,
                test_fraction=args.sweep_test_fraction,
                batch_size=args.batch_size,
                max_length=args.max_length,
                seed=args.seed,
                alpha=args.alpha,
                device="cpu",
                dp=dp,
                target_epsilon=4.0 if dp else None,
                out=str(out / "runs"),
            )
            if args.lr is not None:
                config = config.replace(lr=args.lr)
            if args.optimizer is not None:
                config = config.replace(optimizer=args.optimizer)
            print(f"[{time.strftime('%H:%M:%S')}] sweep {name}: running", flush=True)
            try:
                run_dir, wall = _run(config, name, out / "ledgers")
            except FedloraError as exc:  # e.g. ε 4 out of reach at this size: say so, go on
                print(f"    {name}: {exc}", flush=True)
                continue
            sources = held_out_sources(run_dir, RunEvaluator(run_dir).config)
            examples = [example for _, found in sources for example in found]
            metrics = _score(run_dir, examples, args.max_new_tokens)
            facts = run_facts(run_dir, config.accountant)
            records = RunDirectoryReader(run_dir).read_metrics()
            trained = [
                float((site.get("train") or {}).get("num-examples", 0))
                for site in (records[-1].get("sites") or {}).values()
            ]
            done[name] = {
                "size": size,
                "dp": dp,
                "train-records-per-site": sum(trained) / len(trained),
                "wall-s": wall,
                **facts,
                **metrics,
            }
            _save(results_path, done)
            print(f"    {json.dumps(done[name], sort_keys=True)}", flush=True)
    points = []
    for size in sorted({int(entry["size"]) for entry in done.values()}):
        plain, private = done.get(f"{size}-non-dp"), done.get(f"{size}-dp-eps4")
        if plain and private:
            points.append(
                {
                    "records": round(float(plain["train-records-per-site"])),
                    "non-dp": plain["accuracy"],
                    "dp": private["accuracy"],
                    "epsilon": private["epsilon"],
                }
            )
    # The generated scenario's label set is the run's; chance is one over its size.
    chance = 1.0 / len(get_scenario("hospitals").labels)
    threshold = table.sweep_threshold(points, chance=chance)
    summary = {"points": points, "threshold": threshold, "chance": chance, "argv": sys.argv[1:]}
    _save(out / "summary.json", summary)
    text = table.markdown_sweep(points, threshold) + "\n"
    (out / "table.md").write_text(text)
    if points:
        table.plot_sweep(points, out / "sweep-records.png")
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.rounds < 1 or args.sites < 1 or args.test_rows < 0 or args.max_steps < 0:
        raise SystemExit("--rounds and --sites must be >= 1, --test-rows and --max-steps >= 0")
    if any(not 0 < epsilon < 100 for epsilon in args.epsilons):
        raise SystemExit("--epsilons must lie in (0, 100)")
    if any(size < 2 for size in args.sweep_sizes):
        raise SystemExit("--sweep-sizes must be >= 2")
    _quiet(args.verbose)
    for model in args.models:
        _bench_model(args, model)
    if args.sweep_sizes:
        _sweep(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
