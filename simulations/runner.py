"""The one-machine runner: a whole federation in one process with Flower's simulation engine.

The ServerApp runs in this process (so the CLI can show progress); each site is a virtual
SuperNode whose ClientApp runs in a Ray actor. Sites read the files this runner resolved:
the built-in scenario's generated files or the user's own.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Literal

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlora.clients.app import make_client_app
from fedlora.config import RunConfig
from fedlora.errors import BudgetExhaustedError, FedloraError
from fedlora.privacy.ledger_storage import default_ledger_root
from fedlora.progress import RoundObserver
from fedlora.rundir import RunDirectoryReader
from fedlora.server.federation import run_federation
from fedlora.server.rundir import RunDirectory, new_run_id
from fedlora.simulations.checks import check_run_paths
from fedlora.simulations.inprocess_grid import InProcessGrid
from fedlora.simulations.materialize import prepare_sites, resolve_config
from fedlora.sites import SiteSpec
from fedlora.strategies import strategy_for_run

logger = logging.getLogger(__name__)


def _client_gpus(config: RunConfig) -> float:
    if config.client_gpus is not None:
        return config.client_gpus
    if config.device == "cpu":
        return 0.0
    import torch

    if not torch.cuda.is_available():
        return 0.0
    # Share each GPU among as many sites as there are CPU slots, so all train at once.
    concurrent = max(1, int((os.cpu_count() or 1) // config.client_cpus))
    return max(1.0 / min(concurrent, config.sites), 0.05)


def simulate(
    config: RunConfig,
    *,
    observer: RoundObserver | None = None,
    run_id: str | None = None,
    verbose: bool = False,
    engine: Literal["ray", "inprocess"] = "ray",
    resume: Path | None = None,
) -> Path:
    """Run a simulated federation and return its run directory.

    Everything that can be checked before training is checked first -- the configuration,
    the scenario, every site's data file, the output folder -- so bad input leaves no run
    directory behind.

    Parameters
    ----------
    config
        The run configuration (site count and labels may be left to the scenario).
    observer
        Progress hooks (the CLI's display).
    run_id
        Name of the run directory under ``config.out``; timestamped when ``None``.
    verbose
        Let Flower and Ray log at INFO level.
    engine
        ``ray``: Flower's simulation engine, one Ray actor per site (in parallel);
        ``inprocess``: :class:`~fedlora.simulations.inprocess_grid.InProcessGrid`, the sites one
        after another in this process, no Ray (tests of tiny models).
    resume
        An existing run directory to continue from its checkpoint (``config`` must match
        the checkpoint's; ``config.out`` and ``run_id`` are taken from this path).

    Returns
    -------
    Path
        ``<out>/<run-id>``, marked complete.

    Raises
    ------
    FedloraError
        For bad input, or when the run stops before completing.
    """
    out = Path(config.out)
    if resume is not None:
        out, run_id = resume.parent, resume.name
        config = dataclasses.replace(config, out=str(out))
    elif not config.ledger_root:
        # Named here, in the driver, so every site process uses the same per-user folder
        # (whatever environment a Ray worker has) and config.json records where it is.
        config = dataclasses.replace(config, ledger_root=str(default_ledger_root()))
    check_run_paths(config, run_id=run_id, resume=resume)
    config = resolve_config(config)
    # Strategy settings first: a bad one must not cost a scenario's data generation. The
    # strategy built here is the run's: the federation receives it.
    strategy = strategy_for_run(config)
    sites = prepare_sites(config)
    run_id = run_id or new_run_id()

    def federate(grid: Grid) -> None:
        run_federation(
            grid,
            config,
            out=out,
            run_id=run_id,
            observer=observer,
            resume=resume is not None,
            strategy=strategy,
        )

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        federate(grid)

    def resolve(context: Context, _config: RunConfig) -> SiteSpec:
        return sites[int(context.node_config["partition-id"])]

    if engine == "inprocess":
        grid = InProcessGrid(make_client_app(resolve), len(sites))
        try:
            federate(grid)
        except KeyboardInterrupt as exc:
            _mark_interrupted(out / run_id, exc)  # stopped before the round loop took over
            raise
        return _finished(out, run_id)

    backend_config = {
        "client_resources": {"num_cpus": config.client_cpus, "num_gpus": _client_gpus(config)},
        "init_args": {
            "logging_level": logging.INFO if verbose else logging.ERROR,
            "log_to_driver": verbose,
        },
    }
    from flwr.simulation import run_simulation

    try:
        run_simulation(
            server_app=server_app,
            client_app=make_client_app(resolve),
            num_supernodes=len(sites),
            backend_config=backend_config,  # type: ignore[arg-type]
            verbose_logging=False,
        )
    except FedloraError:
        raise  # a stopped run's BudgetExhaustedError already names its run directory
    except RuntimeError as exc:
        if isinstance(exc.__cause__, FedloraError):
            raise exc.__cause__ from None
        raise
    except KeyboardInterrupt as exc:
        # An interrupt reaches this (main) thread, not Flower's ServerApp thread: the
        # federation cannot mark its run, so the driver does.
        _mark_interrupted(out / run_id, exc)
        raise
    return _finished(out, run_id)


def _mark_interrupted(path: Path, exc: KeyboardInterrupt) -> None:
    """Mark an interrupted run still recorded as ``running`` incomplete, with the reason.

    Only for interrupts (SIGINT, or SIGTERM under ``fedlora.cli.interrupts``): another error
    may come from a directory that belongs to another process.
    """
    if not RunDirectoryReader(path).status_path.is_file():
        return
    run_dir = RunDirectory(path)
    if run_dir.state() == "running":
        reason = f"{type(exc).__name__}: {exc}"
        run_dir.mark("incomplete", reason)
        logger.error("run %s stopped: %s", run_dir.run_id, reason)


def _finished(out: Path, run_id: str) -> Path:
    """The run directory of a finished run; an error unless it completed."""
    run_dir = RunDirectoryReader(out / run_id)
    if run_dir.state() == "stopped":
        reason = run_dir.read_status().get("reason")
        raise BudgetExhaustedError(f"run {run_id} stopped early: {reason}", run_dir.path)
    if run_dir.state() != "complete":
        raise FedloraError(f"run {run_id} did not complete; see {run_dir.status_path}")
    return run_dir.path
