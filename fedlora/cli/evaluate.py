"""``fedlora evaluate RUN_DIR`` and ``fedlora generate RUN_DIR QUESTION``.

``evaluate`` measures the task's real metric on held-out data for the initial adapter and
every round's adapter (:mod:`fedlora.evaluation`), prints one table row per adapter and
writes ``evaluation.json`` into the run directory. The held-out data is ``--data FILE``, or
else the sites' held-out splits the run used, found from ``config.json``: the user's
``test-files``, the seeded ``test-fraction`` of their ``data-files``, or the built-in
scenario's generated test files (regenerated, identically, when they are gone).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from fedlora.config import RunConfig

EVALUATION_FILE = "evaluation.json"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``evaluate`` and ``generate`` to the ``fedlora`` parser."""
    evaluate = commands.add_parser(
        "evaluate",
        help="measure every round's adapter on held-out data",
        description=(
            "Compute the task's metric for the initial adapter and every round's adapter of "
            "RUN_DIR: accuracy and macro-F1 for classification; loss and exact match of the "
            "greedy answer (lower-cased, punctuation and extra whitespace removed) for sft. "
            f"Prints a table and writes RUN_DIR/{EVALUATION_FILE}."
        ),
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/<run-id>")
    evaluate.add_argument(
        "--data",
        metavar="FILE",
        help="held-out JSONL/CSV file (default: the sites' held-out splits the run used)",
    )
    evaluate.add_argument(
        "--max-new-tokens",
        type=int,
        default=32,
        help="most tokens of a generated answer (sft; default 32)",
    )
    generate = commands.add_parser(
        "generate",
        help="print an adapter's answer to a question",
        description=(
            "Answer QUESTION greedily with the final adapter of an instruction-tuning run, the "
            "training prompt template applied."
        ),
    )
    generate.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/<run-id>")
    generate.add_argument("question", metavar="QUESTION", help="the instruction to answer")
    generate.add_argument(
        "--round",
        type=int,
        default=None,
        help="use this round's adapter instead of the last one (0: the initial adapter)",
    )
    generate.add_argument("--max-new-tokens", type=int, default=64, help="default 64")


def held_out_sources(run_dir: Path, config: RunConfig) -> list[tuple[str, Any]]:
    """The held-out examples of each site the run used, as ``(site, examples)`` pairs.

    Raises
    ------
    DataError
        When a site's files are not here (a deployed run: each site keeps its own data);
        the message says to pass ``--data``.
    """
    from fedlora.data import load_examples
    from fedlora.errors import DataError
    from fedlora.sites import sites_from_files, split_held_out

    if config.uses_own_data:
        sites = sites_from_files(config.data_files, config.test_files)
    else:
        from fedlora.simulations.materialize import scenario_sites

        sites = scenario_sites(config, run_dir.resolve().parent / ".scenario-data")
    found = []
    for site in sites:
        source = site.test_file or site.train_file
        if not source.is_file():
            raise DataError(
                f"held-out data of site {site.name} not found at {source}; "
                "pass the held-out file with --data FILE"
            )
        if site.test_file is not None:
            examples = load_examples(site.test_file, config.task, config.labels)
        else:
            train = load_examples(site.train_file, config.task, config.labels)
            _, examples = split_held_out(
                train,
                test_fraction=config.test_fraction,
                seed=config.seed,
                where=str(site.train_file),
            )
        found.append((site.name, examples))
    return found


def run(args: argparse.Namespace) -> int:
    """``fedlora evaluate``: every adapter's metrics, a table, and ``evaluation.json``."""
    from fedlora.data import load_examples
    from fedlora.evaluation import RunEvaluator
    from fedlora.io import atomic_write_json

    run_dir = Path(args.run_dir)
    evaluator = RunEvaluator(run_dir)
    config = evaluator.config
    if args.data:
        sources = [
            (Path(args.data).name, load_examples(Path(args.data), config.task, config.labels))
        ]
        data: dict[str, Any] = {"file": str(Path(args.data).resolve())}
    else:
        sources = held_out_sources(run_dir, config)
        data = {"sites": {name: len(found) for name, found in sources}}
    examples = [example for _, examples in sources for example in examples]
    columns = (
        ("accuracy", "macro-f1", "loss")
        if config.task == "classification"
        else ("exact-match", "loss", "perplexity")
    )
    print(f"{'adapter':<12} {'examples':>8} " + " ".join(f"{c:>11}" for c in columns))
    results = []
    for checkpoint in evaluator.checkpoints():
        started = time.monotonic()
        evaluator.use(checkpoint)
        metrics = evaluator.evaluate(examples, max_new_tokens=args.max_new_tokens)
        seconds = time.monotonic() - started
        results.append({"adapter": checkpoint.name, **metrics, "seconds": round(seconds, 3)})
        row = " ".join(f"{metrics[c]:>11.4f}" for c in columns)
        print(f"{checkpoint.name:<12} {int(metrics['num-examples']):>8} {row}", flush=True)
    out = run_dir / EVALUATION_FILE
    atomic_write_json(
        out,
        {
            "run-id": evaluator.reader.run_id,
            "task": config.task,
            "model": config.model,
            "labels": list(config.labels),
            "data": data,
            "max-new-tokens": args.max_new_tokens if config.task == "sft" else None,
            "adapters": results,
        },
    )
    print(f"{EVALUATION_FILE}: {out}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    """``fedlora generate``: print the adapter's answer to the question."""
    from fedlora.errors import RunDirError
    from fedlora.evaluation import INITIAL, Checkpoint, RunEvaluator

    evaluator = RunEvaluator(Path(args.run_dir))
    if args.round is None:
        checkpoint = evaluator.checkpoints()[-1]  # final, else the last round's, else initial
    elif args.round == 0:
        checkpoint = Checkpoint(INITIAL, None)
    else:
        path = evaluator.reader.adapter_path(args.round)
        if not path.is_dir():
            raise RunDirError(f"{args.run_dir} has no adapter at {path}")
        checkpoint = Checkpoint(path.name, path)
    evaluator.use(checkpoint)
    answer = evaluator.generate(args.question, max_new_tokens=args.max_new_tokens)
    print(answer)
    if not answer:
        # stdout stays the bare answer for scripts; the person learns why it is blank
        print(
            f"fedlora: the {checkpoint.name} adapter's answer is empty "
            "(its first token ended the answer, or it wrote only whitespace)",
            file=sys.stderr,
        )
    return 0
