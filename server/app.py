"""The fedlora ServerApp, the component Flower loads for ``flwr run`` (``server.app:app``)."""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlora.config import RunConfig
from server.federation import run_federation

logger = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config (``[tool.flwr.app.config]``)."""
    config = RunConfig.from_flat(dict(context.run_config))
    # Defaults a config may leave open (site count, label set) come from the scenario or the
    # data files, which the simulations package owns.
    from simulations.materialize import resolve_config

    resolved = resolve_config(config)
    federation = run_federation(grid, resolved, out=Path(resolved.out))
    logger.info("run complete: %s", federation.run_dir.path)
