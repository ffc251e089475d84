"""Checks of a simulated run's names and folders that write nothing and import nothing heavy.

``fedlora simulate`` calls :func:`check_run_paths` before it imports torch or Flower, and
:func:`fedlora.simulations.runner.simulate` calls it again for callers that skip the CLI, so a bad
run id, output folder or ledger root is refused at once with nothing left on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedlora.config import RunConfig, check_run_id
from fedlora.errors import ConfigError, FedloraError, RunDirError


def check_folder(path: Path, what: str, *, error: type[FedloraError] = RunDirError) -> None:
    """Refuse a folder that is not a directory and could not be created, without creating it.

    Parameters
    ----------
    path
        The folder: it exists and is a writable directory, or its nearest existing ancestor
        is a writable directory (so ``mkdir -p`` would succeed).
    what
        What the folder is, for the message (``output folder``, ``--ledger-root``).
    error
        The error class to raise.

    Raises
    ------
    FedloraError
        Of class ``error``, naming ``path`` and what is wrong with it.
    """
    if path.exists():
        if not path.is_dir():
            raise error(f"{what} {path} is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise error(f"{what} {path} is not writable")
        return
    if path.is_symlink():
        raise error(f"{what} {path} is a link to nothing")
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise error(f"cannot create {what} {path}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise error(f"cannot create {what} {path}: {ancestor} is not writable")


def check_run_paths(config: RunConfig, *, run_id: str | None, resume: Path | None) -> None:
    """Refuse an unsafe run id, an unusable output folder or ledger root, before anything runs.

    Parameters
    ----------
    config
        The run configuration (``out`` and ``ledger_root`` are checked).
    run_id
        The new run's directory name under ``out`` (``None``: a timestamp).
    resume
        A run directory to continue: its name is the run id and its parent the output folder.

    Raises
    ------
    ConfigError
        For a run id that is not a plain folder name, or a ``ledger-root`` that is not a
        folder and cannot be created.
    RunDirError
        For an output folder that cannot be created or written, or a run to resume that is
        no writable folder.
    """
    if resume is not None:
        check_run_id(resume.name, key="--resume run directory")
        if not resume.is_dir():
            raise RunDirError(f"run directory {resume} not found")
        if not os.access(resume, os.W_OK | os.X_OK):
            raise RunDirError(f"run directory {resume} is not writable")
        out = resume.parent
    else:
        if run_id is not None:
            check_run_id(run_id, key="--run-id")
        out = Path(config.out)
    check_folder(out, "output folder")
    if config.ledger_root:
        check_folder(Path(config.ledger_root), "ledger-root", error=ConfigError)
