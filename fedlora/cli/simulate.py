"""``fedlora simulate``: a simulated federation on this machine, then its summary."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedlora.cli.flags import add_run_config_flags, config_from_args
from fedlora.cli.interrupts import RunInterrupted, stop_on_signals
from fedlora.config import RunConfig
from fedlora.config.settings import OUTPUT
from fedlora.errors import BudgetExhaustedError

if TYPE_CHECKING:
    from rich.console import Console


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``simulate``: the run-config flags, then the flags of this command alone."""
    sim = commands.add_parser(
        "simulate",
        help="run a simulated federation on this machine",
        description="Run a federated LoRA fine-tuning simulation with one virtual node per site.",
    )
    output = add_run_config_flags(sim)[OUTPUT]
    output.add_argument("--run-id", default=None, help="run directory name (default: timestamp)")
    output.add_argument("--quiet", action="store_true", help="no progress display")
    output.add_argument("--verbose", action="store_true", help="show Flower and Ray logs")
    output.add_argument(
        "--no-example",
        action="store_true",
        help="skip the end's one held-out question answered before and after training "
        "(it loads the base model once more)",
    )
    output.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue this run from its last completed round (its checkpoint's config; "
        "a flag that contradicts the checkpoint is refused)",
    )
    output.add_argument(
        "--engine",
        choices=("ray", "inprocess"),
        default="ray",
        help="ray: Flower's simulation engine (sites in parallel); inprocess: sites one "
        "after another in this process, no Ray",
    )


def _quiet_third_parties(verbose: bool) -> None:
    """Flower's and Ray's own lines off unless ``--verbose``.

    ``fedlora.cli.main`` has already hidden the library warnings (:mod:`fedlora.quiet`).
    """
    if verbose:
        return
    for name in ("flwr", "ray", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _show_example(run_dir: Path, console: Console) -> None:
    """Print one held-out question answered before and after; a failure only logs."""
    from fedlora.cli.answers import before_and_after
    from fedlora.errors import FedloraError

    try:
        comparison = before_and_after(run_dir)
    except FedloraError as error:
        logging.getLogger(__name__).warning("no before/after example: %s", error)
        return
    for line in comparison.lines():
        console.print(line, soft_wrap=True, highlight=False, markup=False)


def _resumed_config(given: RunConfig, run_dir: Path) -> RunConfig:
    """The checkpoint's config, with every flag the user set on this command line on top.

    A flag left at its default takes the checkpoint's value; a flag set to something else
    stays, and the resume then refuses it, naming the key (``fedlora.server.federation``).
    """
    from fedlora.server.checkpoint import read_checkpoint

    saved = read_checkpoint(run_dir).config
    defaults = RunConfig().to_flat()
    merged = dict(saved)
    for key, value in given.to_flat().items():
        if key not in saved or value != defaults.get(key):
            merged[key] = value
    return RunConfig.from_flat(merged)


def run(args: argparse.Namespace) -> int:
    """``fedlora simulate``: run, then print the summary tables."""
    from fedlora.simulations.checks import check_own_data, check_run_paths

    # Settings, paths and the user's data first: a refusal costs no import of torch or Flower.
    config = config_from_args(args)
    resume = Path(args.resume) if args.resume else None
    check_run_paths(config, run_id=args.run_id, resume=resume)
    if resume is None:
        check_own_data(config)

    from rich.console import Console

    from fedlora.console import (
        ProgressDisplay,
        summary_table,
        traffic_footnote,
        traffic_table,
    )
    from fedlora.report.build import HTML_FILE, write_report
    from fedlora.rundir import RunDirectoryReader
    from fedlora.server.checkpoint import CHECKPOINT_DIR, MANIFEST
    from fedlora.server.rundir import new_run_id
    from fedlora.simulations.runner import simulate

    if resume is not None:
        # Where the run is now (as the runner takes it), whatever out its checkpoint names.
        config = _resumed_config(config, resume).replace(out=str(resume.parent))
    console = Console(stderr=False)
    _quiet_third_parties(args.verbose)
    if not config.dp:
        print(
            "fedlora: warning: differential privacy is OFF (--no-dp): the adapters sent by the "
            "sites carry no formal privacy guarantee for their records",
            file=sys.stderr,
        )
    stopped: BudgetExhaustedError | None = None
    # Named here, so an interrupted run can say which directory to resume.
    run_id = resume.name if resume is not None else args.run_id or new_run_id()
    target = resume if resume is not None else Path(config.out) / run_id
    try:
        options = {"verbose": args.verbose, "engine": args.engine, "resume": resume}
        with stop_on_signals():
            if args.quiet:
                run_path = simulate(config, run_id=run_id, **options)
            else:
                with ProgressDisplay(console) as display:
                    run_path = simulate(config, observer=display, run_id=run_id, **options)
    except RunInterrupted as interrupted:
        if (target / CHECKPOINT_DIR / MANIFEST).is_file():
            where = (
                f"run directory {target} is marked incomplete; "
                f"continue it with: fedlora simulate --resume {target}"
            )
        elif RunDirectoryReader(target).status_path.is_file():
            where = (
                f"run directory {target} is marked incomplete; it stopped before its first "
                "checkpoint, so there is nothing to resume: start the run again"
            )
        else:
            where = "before the run started; nothing to resume"
        print(f"fedlora: {interrupted}; {where}", file=sys.stderr)
        return interrupted.exit_code
    except BudgetExhaustedError as error:
        if error.run_dir is None:
            raise
        stopped, run_path = error, error.run_dir
    run = RunDirectoryReader(Path(run_path))
    metrics = run.read_metrics()
    console.print(summary_table(metrics, config.task))
    console.print(traffic_table(metrics))
    footnote = traffic_footnote(metrics)
    if footnote is not None:
        console.print(footnote, highlight=False)
    report = write_report(Path(run_path))
    console.print(f"run directory: {run_path}", soft_wrap=True, highlight=False)
    if not config.uses_own_data:
        folder = _scenario_folder(config)
        if folder is not None:
            console.print(
                f"scenario data: {folder} (generated; reused by runs with the same settings)",
                soft_wrap=True,
                highlight=False,
            )
    console.print(f"final adapter: {run.adapter_path(None)}", soft_wrap=True, highlight=False)
    console.print(f"privacy report: {report / HTML_FILE}", soft_wrap=True, highlight=False)
    if not (args.quiet or args.no_example):
        _show_example(Path(run_path), console)
    if stopped is not None:
        raise _explained(stopped, metrics, config)
    return 0


def _explained(
    stopped: BudgetExhaustedError, metrics: list[dict[str, Any]], config: RunConfig
) -> BudgetExhaustedError:
    """The stop, with each declining site's budget left and the ways forward.

    One detail line per site goes to stderr first; the error itself stays one line.
    """
    from fedlora.cli.declined import budget_error, budget_refusals, ledger_deltas, site_lines

    refused = budget_refusals(metrics)
    if not refused:
        return stopped
    deltas = ledger_deltas(config, _site_files(config))
    for line in site_lines(refused, deltas):
        print(f"fedlora: {line}", file=sys.stderr)
    return BudgetExhaustedError(budget_error(str(stopped), refused, deltas), stopped.run_dir)


def _scenario_folder(config: RunConfig) -> Path | None:
    """The folder of the built-in scenario's generated site files (one folder per site)."""
    files = list(_site_files(config).values())
    return files[0].parent.parent if files else None


def _site_files(config: RunConfig) -> dict[str, Path]:
    """Each site's training file, where the run read it; generates nothing."""
    from fedlora.errors import FedloraError
    from fedlora.simulations.materialize import resolve_config, scenario_site_files
    from fedlora.sites import sites_from_files

    try:
        config = resolve_config(config)
        if config.uses_own_data:
            sites = sites_from_files(config.data_files)
        else:
            sites = scenario_site_files(config, Path(config.out) / ".scenario-data")
    except FedloraError:
        return {}
    return {site.name: site.train_file for site in sites if site.train_file.is_file()}
