"""A real deployment: the Flower command lines for the SuperLink, the sites and the operator.

``fedlora deploy`` prints and runs the Flower processes of a multi-site federation; this
module is the Python API of those commands (so tests and process supervisors can start them
too), one import for what lives in the rooms below, and fetches finished run directories.

What runs where (docs/deployment.md):

* coordinator: Flower's SuperLink in a fedlora process (:mod:`fedlora.deploy.coordinator`:
  Fleet, Control and Runtime APIs on one HTTPS ``--host/--port``, the Control and Runtime APIs
  only for connections from the coordinator host itself,
  :mod:`fedlora.flower_internals.link_operator`; by default with held pulls), with the PKI's
  ``ca.pem``, ``server.pem``, ``server.key`` and ``--enable-supernode-auth``; runtime
  dependency installation is always off, so a run never re-resolves the project's
  dependencies (a CUDA torch of several GB);
* operator (on the coordinator host, or through an SSH tunnel to it): ``flwr supernode
  register`` for each site key (:func:`register_site`, which also records the site in the
  roster, :mod:`fedlora.deploy.roster`; :mod:`fedlora.deploy.site_list` lists them) and
  ``flwr run APP CONNECTION --stream`` with the installed fedlora as APP, followed round by
  round (:mod:`fedlora.deploy.submit`), with a connection in ``$FLWR_HOME/config.toml``
  (:mod:`fedlora.deploy.flwr_cli`);
* each site: Flower's SuperNode with the site's ``site.toml`` (:mod:`fedlora.deploy.site_config`,
  :mod:`fedlora.deploy.supernode`), by default with short polls and fedlora's warm worker
  (:mod:`fedlora.flower_internals.node_supernode`);
* everywhere: Flower's commands, their environment and ports (:mod:`fedlora.deploy.host`).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fedlora.deploy.coordinator import (
    DEFAULT_PORT,
    INSECURE_WARNING,
    register_argv,
    register_site,
    superlink_argv,
)
from fedlora.deploy.flwr_cli import submit_argv, write_connection
from fedlora.deploy.host import (
    command_line,
    flower_environment,
    flower_executable,
    flwr_home,
    free_port,
    port_is_free,
)
from fedlora.deploy.supernode import DEFAULT_RUNTIME_PORT, check_device, supernode_argv
from fedlora.errors import RunDirError

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_RUNTIME_PORT",
    "INSECURE_WARNING",
    "FetchedRun",
    "check_device",
    "command_line",
    "fetch_run",
    "flower_environment",
    "flower_executable",
    "flwr_home",
    "free_port",
    "port_is_free",
    "register_argv",
    "register_site",
    "submit_argv",
    "superlink_argv",
    "supernode_argv",
    "write_connection",
]


@dataclass(frozen=True)
class FetchedRun:
    """A run directory copied by :func:`fetch_run`."""

    path: Path
    state: str
    report: Path


def fetch_run(run_dir: Path | str, to: Path | str, *, force: bool = False) -> FetchedRun:
    """Copy a run directory into a local runs folder and write its privacy report there.

    The ServerApp writes ``<out>/<run-id>/`` on the SuperLink host (``out`` from the run
    config, an absolute path there): adapters per round and final, ``metrics.jsonl``,
    ``config.json``, ``status.json`` and the report. Run this where that folder is reachable
    (on the SuperLink host, or on a mount or copy of it).

    Parameters
    ----------
    run_dir : Path or str
        The run directory on the SuperLink host.
    to : Path or str
        The local runs folder; the run lands in ``to/<run-id>/``.
    force : bool
        Replace an earlier copy of the same run.

    Returns
    -------
    FetchedRun
        Where the copy is, the run's state and its report folder.

    Raises
    ------
    RunDirError
        When ``run_dir`` is not a run directory, the copy exists and ``force`` is false, or
        the report cannot be written.
    """
    from fedlora.report.build import write_report
    from fedlora.rundir import RunDirectoryReader

    source = Path(run_dir).expanduser().absolute()
    state = str(RunDirectoryReader(source).read_status().get("state", "unknown"))
    target_root = Path(to).expanduser().absolute()
    target = target_root / source.name
    if target == source:
        raise RunDirError(f"{source} is already in {target_root}")
    if target.exists() and not force:
        raise RunDirError(f"{target} exists: pass --force to replace it")
    target_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{source.name}-", dir=target_root))
    try:
        copied = staging / source.name
        shutil.copytree(source, copied, symlinks=True)
        if target.exists():
            shutil.rmtree(target)
        copied.rename(target)
    except OSError as exc:
        raise RunDirError(f"cannot copy {source} to {target}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return FetchedRun(path=target, state=state, report=write_report(target))
