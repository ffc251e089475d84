"""``fedlora deploy submit``: submit the installed fedlora to a SuperLink and follow the run.

``flwr run APP CONNECTION --stream`` needs a Flower App folder (a ``pyproject.toml`` with
``[tool.flwr.app]``); an installed fedlora has none beside it. :func:`installed_app` writes
one for the installed fedlora (its name, version, components and run-config defaults) into
a temporary folder, so a run can be submitted from any folder; ``--app DIR`` submits another
one instead. :func:`submit_run` runs ``flwr run`` and shows the ServerApp's own lines
(:mod:`fedlora.deploy.run_lines`: the run directory, one line per round, how it ended) instead
of Flower's, then the run directory and the command that fetches it.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from fedlora.deploy.flwr_cli import flower_app_dir, submit_argv
from fedlora.deploy.host import command_line, flower_environment
from fedlora.deploy.run_lines import COMPLETE, ERROR, PREFIX, RUN_DIRECTORY, STOPPED

__all__ = ["APP_NAME", "Submitted", "app_pyproject", "installed_app", "submit_run"]

APP_NAME = "fedlora"
SERVERAPP = "fedlora.server.app:app"
CLIENTAPP = "fedlora.clients.app:app"
_STARTED = re.compile(r"Successfully started run (\d+)")
_TAIL = 40


@dataclass
class Submitted:
    """What :func:`submit_run` saw of a run.

    ``state`` is ``"complete"``, ``"stopped"`` (every site's budget spent), ``"failed"``
    (the ServerApp reported an error) or ``None`` (no end was reported: ``flwr`` failed or the
    stream ended early).
    """

    flower_run_id: int | None = None
    run_dir: str | None = None
    state: str | None = None
    flwr_exit: int = 0

    @property
    def exit_code(self) -> int:
        """0 for a complete run; 2 when fedlora refused or stopped it; else 1 or ``flwr``'s."""
        if self.state == "complete":
            return 0
        if self.state in ("stopped", "failed"):
            return 2
        return self.flwr_exit or 1


def app_pyproject(version: str | None = None) -> str:
    """The Flower App ``pyproject.toml`` of the installed fedlora.

    Its name and version are the installed distribution's (a warm node refuses another
    version, :func:`fedlora.flower_internals.node_worker.check_fab`), its components the
    ServerApp and ClientApp, its run config every setting at its default
    (:class:`fedlora.config.RunConfig`).
    """
    import tomli_w

    from fedlora.config import RunConfig

    version = version or metadata.version(APP_NAME)
    requires = [
        requirement
        for requirement in metadata.requires(APP_NAME) or []
        if "extra ==" not in requirement
    ]
    document = {
        "project": {
            "name": APP_NAME,
            "version": version,
            "description": "Private federated fine-tuning of LoRA adapters (installed fedlora)",
            "license": "Apache-2.0",
            "dependencies": requires,
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": APP_NAME,
                    "components": {"serverapp": SERVERAPP, "clientapp": CLIENTAPP},
                    "config": RunConfig().to_flat(),
                }
            }
        },
    }
    return tomli_w.dumps(document)


@contextlib.contextmanager
def installed_app() -> Iterator[Path]:
    """A temporary Flower App folder for the installed fedlora (removed on exit).

    It holds only ``pyproject.toml`` (:func:`app_pyproject`): Flower loads the components by
    name, so the SuperLink's and the sites' installed fedlora runs.
    """
    with tempfile.TemporaryDirectory(prefix="fedlora-app-") as folder:
        path = Path(folder)
        (path / "pyproject.toml").write_text(app_pyproject(), encoding="utf-8")
        yield path


def submit_run(
    connection: str,
    *,
    app_dir: Path | str | None = None,
    run_config: str | None = None,
    verbose: bool = False,
    echo: Callable[[str], None] = print,
) -> Submitted:
    """Submit a run with ``flwr run --stream`` and follow it to its end.

    Parameters
    ----------
    connection : str
        The SuperLink connection in ``$FLWR_HOME/config.toml``.
    app_dir : Path or str, optional
        Another Flower App; default the installed fedlora (:func:`installed_app`).
    run_config : str, optional
        Run-config overrides (``"rounds=3 sites=2 out='/srv/fedlora/runs'"``).
    verbose : bool
        Show every line ``flwr`` prints, Flower's included.
    echo : Callable[[str], None]
        Receives each line to show.

    Returns
    -------
    Submitted
        The Flower run id, the run directory and how the run ended.

    Raises
    ------
    ConfigError
        When ``app_dir`` is not a Flower App, or ``flwr`` is not installed.
    """
    with contextlib.ExitStack() as stack:
        folder = (
            flower_app_dir(app_dir) if app_dir is not None else stack.enter_context(installed_app())
        )
        argv = submit_argv(connection, app_dir=folder, run_config=run_config)
        echo(f"+ {command_line(argv)}")
        submitted = _follow(argv, verbose=verbose, echo=echo)
    if submitted.run_dir is not None:
        echo(f"run directory: {submitted.run_dir} (on the SuperLink host)")
        if submitted.state in ("complete", "stopped"):
            echo(f"next: fedlora deploy fetch --run-dir {submitted.run_dir} --to runs")
    return submitted


def _follow(argv: list[str], *, verbose: bool, echo: Callable[[str], None]) -> Submitted:
    submitted = Submitted()
    hidden: list[str] = []
    with subprocess.Popen(
        argv,
        env=flower_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            shown = read_line(line, submitted)
            if verbose:
                echo(line)
            elif shown is not None:
                echo(shown)
            else:
                hidden = [*hidden[-_TAIL + 1 :], line]
        submitted.flwr_exit = process.wait()
    if (submitted.flwr_exit != 0 or submitted.state is None) and not verbose:
        # flwr's own error (no connection, ...) or a ServerApp that crashed: its traceback
        for line in hidden:
            echo(line)
    return submitted


def read_line(line: str, submitted: Submitted) -> str | None:
    """Note what ``line`` says about the run in ``submitted``; the text to show, or ``None``.

    Shown: Flower's run id when the run starts, and the ServerApp's own lines
    (:data:`fedlora.deploy.run_lines.PREFIX`).
    """
    started = _STARTED.search(line)
    if started is not None:
        submitted.flower_run_id = int(started.group(1))
        return f"Flower run {submitted.flower_run_id} started"
    if not line.startswith(PREFIX):
        return None
    text = line[len(PREFIX) :]
    if text.startswith(RUN_DIRECTORY):
        submitted.run_dir = text[len(RUN_DIRECTORY) :].strip()
    elif text.startswith(COMPLETE):
        submitted.state = "complete"
    elif text.startswith(STOPPED):
        submitted.state = "stopped"
    elif text.startswith(ERROR) and submitted.state is None:
        submitted.state = "failed"
    return line if text.startswith((ERROR, "warning: ")) else text
