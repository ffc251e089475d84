"""The ``fedlora`` command line: parse, call, print.

fedlora's own errors become one line on stderr and exit code 2 (a traceback only with
``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from fedlora.config import RunConfig
from fedlora.errors import ConfigError, FedloraError

logger = logging.getLogger("fedlora")

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fedlora`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="fedlora", description="Private federated fine-tuning of LoRA adapters."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser(
        "simulate",
        help="run a simulated federation on this machine",
        description="Run a federated LoRA fine-tuning simulation with one virtual node per site.",
    )
    defaults = RunConfig()
    data = sim.add_argument_group("sites and data")
    data.add_argument(
        "--scenario", default=defaults.scenario, help="built-in scenario: hospitals or banks"
    )
    data.add_argument("--task", choices=("sft", "classification"), default=defaults.task)
    data.add_argument("--sites", type=int, help="number of sites (default: the scenario's)")
    data.add_argument(
        "--alpha", type=float, default=defaults.alpha, help="Dirichlet non-IID concentration (> 0)"
    )
    data.add_argument("--examples-per-site", type=int, default=defaults.examples_per_site)
    data.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    data.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="FILE",
        help="your own site data (JSONL or CSV), one file per site; repeat for each site",
    )
    data.add_argument(
        "--test-data",
        action="append",
        default=[],
        metavar="FILE",
        help="held-out file per --data file (default: hold out --test-fraction of each)",
    )
    data.add_argument("--labels", default="", help="comma-separated label set for classification")

    model = sim.add_argument_group("model and LoRA")
    model.add_argument(
        "--model",
        default=defaults.model,
        help="preset (tiny-llama, tiny-gpt2, tiny-bloom, tiny-bert), hub id or local directory",
    )
    model.add_argument("--lora-r", type=int, default=defaults.lora_r)
    model.add_argument("--lora-alpha", type=int, default=defaults.lora_alpha)
    model.add_argument("--lora-dropout", type=float, default=defaults.lora_dropout)
    model.add_argument(
        "--lora-targets",
        default="",
        help="comma-separated module names (default: per architecture)",
    )
    model.add_argument("--max-length", type=int, default=defaults.max_length)

    train = sim.add_argument_group("training")
    train.add_argument("--rounds", type=int, default=defaults.rounds)
    train.add_argument("--strategy", default=defaults.strategy)
    train.add_argument("--lr", type=float, default=defaults.lr)
    train.add_argument("--local-epochs", type=int, default=defaults.local_epochs)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument(
        "--max-steps",
        type=int,
        default=defaults.max_steps,
        help="cap on local steps per round (0: none)",
    )
    train.add_argument("--optimizer", choices=("adamw", "sgd"), default=defaults.optimizer)
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device)
    train.add_argument("--bf16", choices=("auto", "on", "off"), default=defaults.bf16)
    train.add_argument("--gradient-checkpointing", action="store_true")
    train.add_argument(
        "--client-gpus",
        type=float,
        default=defaults.client_gpus,
        help="GPU fraction per simulated site (-1: auto)",
    )

    output = sim.add_argument_group("output")
    output.add_argument("--out", default=defaults.out, help="parent folder of run directories")
    output.add_argument("--run-id", default=None, help="run directory name (default: timestamp)")
    output.add_argument("--quiet", action="store_true", help="no progress display")
    output.add_argument("--verbose", action="store_true", help="show Flower and Ray logs")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Build the run configuration from parsed ``simulate`` arguments."""
    if args.sites is not None and args.sites < 1:
        raise ConfigError(f"sites must be >= 1, got {args.sites}")
    if args.test_data and not args.data:
        raise ConfigError("--test-data needs --data (one --test-data per --data file)")
    return RunConfig(
        scenario=args.scenario,
        task=args.task,
        model=args.model,
        rounds=args.rounds,
        sites=args.sites if args.sites is not None else 0,
        alpha=args.alpha,
        examples_per_site=args.examples_per_site,
        test_fraction=args.test_fraction,
        data_files=tuple(args.data),
        test_files=tuple(args.test_data),
        labels=tuple(label.strip() for label in args.labels.split(",") if label.strip()),
        lr=args.lr,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        optimizer=args.optimizer,
        strategy=args.strategy,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
        max_length=args.max_length,
        seed=args.seed,
        out=args.out,
        device=args.device,
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        client_gpus=args.client_gpus,
    )


def _quiet_third_parties(verbose: bool) -> None:
    if verbose:
        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("flwr", "ray", "transformers", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_simulate(args: argparse.Namespace) -> int:
    """``fedlora simulate``: run, then print the summary tables."""
    from rich.console import Console

    from fedlora.console import ProgressDisplay, summary_table, traffic_table
    from server.rundir import RunDirectory
    from simulations.runner import simulate

    config = config_from_args(args)
    console = Console(stderr=False)
    _quiet_third_parties(args.verbose)
    if args.quiet:
        run_path = simulate(config, run_id=args.run_id, verbose=args.verbose)
    else:
        with ProgressDisplay(console) as display:
            run_path = simulate(config, observer=display, run_id=args.run_id, verbose=args.verbose)
    metrics = RunDirectory(run_path).read_metrics()
    console.print(summary_table(metrics, config.task))
    console.print(traffic_table(metrics))
    console.print(f"run directory: {run_path}", soft_wrap=True, highlight=False)
    final = Path(run_path) / "adapters" / "final"
    console.print(f"final adapter: {final}", soft_wrap=True, highlight=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedlora`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "simulate":
            return run_simulate(args)
        parser.error(f"unknown command {args.command}")
    except FedloraError as error:
        if args.debug:
            raise
        print(f"fedlora: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("fedlora: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
