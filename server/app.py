"""The fedlora ServerApp, which Flower loads for ``flwr run`` (``fedlora.server.app:app``)."""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlora.config import RunConfig
from fedlora.deploy.roster import read_roster, roster_path_from_env
from fedlora.errors import BudgetExhaustedError, FedloraError
from fedlora.flower_internals.tuning import NEARBY_PULL_BACKOFF_CAP_S, shorten_pull_backoff
from fedlora.report.build import write_report
from fedlora.server.federation import run_federation

logger = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config (``[tool.flwr.app.config]``)."""
    config = RunConfig.from_flat(dict(context.run_config))
    # Under flwr run a reply's adapter may still be uploading when its message is listed;
    # retry its objects soon rather than after Flower's 1 s (this process only).
    shorten_pull_backoff(cap=NEARBY_PULL_BACKOFF_CAP_S)
    # Defaults a config may leave open (site count, label set) come from the scenario or the
    # data files, which the simulations package owns.
    from fedlora.simulations.materialize import resolve_config

    resolved = resolve_config(config)
    out = Path(resolved.out)
    # A deployment's SuperLink names the roster written at registration: each reply then
    # counts only for the site enrolled with the node it came from (docs/security.md).
    roster_path = roster_path_from_env()
    roster = read_roster(roster_path) if roster_path is not None else None
    try:
        if resolved.resume:
            # flwr run --run-config 'resume="RUN_ID"': continue out/RUN_ID from its checkpoint.
            federation = run_federation(
                grid, resolved, out=out, run_id=resolved.resume, resume=True, roster=roster
            )
        else:
            federation = run_federation(grid, resolved, out=out, roster=roster)
    except BudgetExhaustedError as stopped:
        # The stopped run's adapters and ledgers are valid: report them before stopping.
        _report(stopped.run_dir)
        raise
    logger.info("run complete: %s", federation.run_dir.path)
    _report(federation.run_dir.path)


def _report(run_dir: Path | None) -> None:
    """Write the privacy report into the run directory, as ``fedlora simulate`` does."""
    if run_dir is None:
        return
    try:
        logger.info("privacy report: %s", write_report(run_dir))
    except FedloraError as exc:
        logger.error("could not write the privacy report of %s: %s", run_dir, exc)
