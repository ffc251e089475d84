"""The fedlora ServerApp, which Flower loads for ``flwr run`` (``fedlora.server.app:app``).

It prints the operator's lines (:mod:`fedlora.deploy.run_lines`: the run directory, a line
per round, how the run ended) to the output Flower streams to ``flwr run --stream`` and
``fedlora deploy submit``, and records Flower's run id in the run's ``config.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlora.config import RunConfig
from fedlora.deploy.roster import read_roster, roster_path_from_env
from fedlora.deploy.run_lines import COMPLETE, ERROR, STOPPED, RoundLines, run_output
from fedlora.errors import BudgetExhaustedError, ConfigError, FedloraError
from fedlora.flower_internals.simulation_grid import is_simulation_grid, settled_node_count
from fedlora.flower_internals.tuning import NEARBY_PULL_BACKOFF_CAP_S, shorten_pull_backoff
from fedlora.quiet import quiet_library_warnings
from fedlora.report.build import write_report
from fedlora.server.federation import run_federation
from fedlora.server.rundir import RunDirectory, new_run_id

logger = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config (``[tool.flwr.app.config]``)."""
    quiet_library_warnings()
    with run_output():
        try:
            _run(grid, context)
        except BudgetExhaustedError as stopped:
            logger.error("%s%s", STOPPED, stopped)
            raise
        except FedloraError as error:
            # One line for the operator; Flower marks the run failed and logs the traceback.
            logger.error("%s%s", ERROR, error)
            raise


def _run(grid: Grid, context: Context) -> None:
    config = RunConfig.from_flat(dict(context.run_config))
    # Under flwr run a reply's adapter may still be uploading when its message is listed;
    # retry its objects soon rather than after Flower's 1 s (this process only).
    shorten_pull_backoff(cap=NEARBY_PULL_BACKOFF_CAP_S)
    # Defaults a config may leave open (site count, label set) come from the scenario or the
    # data files, which the simulations package owns.
    from fedlora.simulations.materialize import resolve_config

    resolved = resolve_config(config)
    check_simulation_sites(grid, resolved.sites, resolved.node_wait_timeout)
    out = Path(resolved.out).absolute()
    run_id = resolved.resume or new_run_id()
    # A deployment's SuperLink names the roster written at registration: each reply then
    # counts only for the site enrolled with the node it came from (docs/security.md).
    roster_path = roster_path_from_env()
    roster = read_roster(roster_path) if roster_path is not None else None
    lines = RoundLines(
        logger.info,
        run_dir=str(out / run_id),
        on_first_record=lambda: _note_flower_run(out / run_id, context.run_id),
    )
    try:
        # flwr run --run-config 'resume="RUN_ID"': continue out/RUN_ID from its checkpoint.
        federation = run_federation(
            grid,
            resolved,
            out=out,
            run_id=run_id,
            observer=lines,
            resume=bool(resolved.resume),
            roster=roster,
        )
    except BudgetExhaustedError as stopped:
        # The stopped run's adapters and ledgers are valid: report them before stopping.
        _report(stopped.run_dir)
        raise
    _report(federation.run_dir.path)
    logger.info("%s%s", COMPLETE, federation.run_dir.path)


def check_simulation_sites(grid: Grid, sites: int, timeout: float) -> None:
    """Refuse at once a simulation whose SuperNode count is not the run's ``sites``.

    In Flower's simulation every node exists as soon as the first does
    (:mod:`fedlora.flower_internals.simulation_grid`); a deployment's nodes connect over time,
    and there :func:`fedlora.server.exchange.wait_for_nodes` waits up to ``node-wait-timeout``.

    Raises
    ------
    ConfigError
        When the simulation has another number of SuperNodes than ``sites``.
    """
    if not is_simulation_grid(grid):
        return
    count = settled_node_count(grid, timeout)
    if count != sites:
        raise ConfigError(
            f"the run config says sites={sites} but this simulation has {count} SuperNodes: "
            f'set them equal (flwr run ... --federation-config "num-supernodes={sites}", or '
            f"--run-config sites={count})"
        )


def record_flower_run(run_dir: Path, flower_run_id: int) -> None:
    """Record Flower's run id in ``config.json`` (``flower-run-id``; a resume adds its own)."""
    directory = RunDirectory(run_dir)
    payload = directory.read_config()
    earlier = [int(value) for value in payload.get("flower-run-ids", [])]
    payload["flower-run-id"] = int(flower_run_id)
    payload["flower-run-ids"] = [*earlier, int(flower_run_id)]
    directory.write_config(payload)


def _note_flower_run(run_dir: Path, flower_run_id: int) -> None:
    """:func:`record_flower_run`, a warning instead of a failed run when it cannot."""
    try:
        record_flower_run(run_dir, flower_run_id)
    except (FedloraError, OSError, ValueError, TypeError) as exc:
        logger.warning("could not record Flower's run id %s in %s: %s", flower_run_id, run_dir, exc)


def _report(run_dir: Path | None) -> None:
    """Write the privacy report into the run directory, as ``fedlora simulate`` does."""
    if run_dir is None:
        return
    try:
        write_report(run_dir)  # it logs where it wrote the report
    except FedloraError as exc:
        logger.error("could not write the privacy report of %s: %s", run_dir, exc)
