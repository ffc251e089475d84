"""Checks of a simulated run's names, folders and data that write nothing and import nothing heavy.

``fedlora simulate`` calls :func:`check_run_paths` and :func:`check_own_data` before it imports
torch or Flower, and :func:`fedlora.simulations.runner.simulate` checks again for callers that
skip the CLI, so a bad run id, output folder, ledger root or data file is refused at once with
nothing left on disk.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from fedlora.config import RunConfig, check_run_id
from fedlora.errors import ConfigError, DataError, FedloraError, RunDirError

if TYPE_CHECKING:
    from fedlora.sites import SiteSpec

logger = logging.getLogger(__name__)


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


TINY_SITE_RECORDS = 10
"""Fewer training records than this at a site is warned about: DP-SGD's noise, scaled to one
record's influence, drowns what so few records can teach, and the default δ (0.1 / records)
is large."""


def check_own_data(config: RunConfig) -> None:
    """Validate the user's data files (``--data`` / ``--test-data``), importing nothing heavy.

    ``fedlora simulate`` calls it before it loads torch, transformers or Flower, so a bad
    file is refused at once; :func:`fedlora.simulations.materialize.preflight` checks the
    same again (with its warnings) for callers that skip the CLI.

    Raises
    ------
    DataError
        Naming the file (and line) of the first problem, or two files of the same data.
    """
    from fedlora.records import collect_labels
    from fedlora.sites import sites_from_files

    if not config.uses_own_data:
        return
    if config.task == "classification" and not config.labels:
        config = config.replace(labels=collect_labels([Path(p) for p in config.data_files]))
    check_sites_data(config, sites_from_files(config.data_files, config.test_files), warn=False)


def check_sites_data(config: RunConfig, sites: list[SiteSpec], *, warn: bool = True) -> list[int]:
    """Read and validate every site's files; refuse one data set given as two sites.

    Parameters
    ----------
    config
        The resolved run configuration (task, labels, test fraction, seed, δ).
    sites
        The sites, with their data files.
    warn
        Log a warning for a site with fewer than :data:`TINY_SITE_RECORDS` training
        records, or whose δ is not below 1 / records.

    Returns
    -------
    list of int
        Each site's training-record count (after holding out its test split).

    Raises
    ------
    DataError
        Naming the file (and line) of the first problem; for two sites whose training
        files hold the same bytes (one data set, whose privacy budget one ledger keeps).
    """
    from fedlora.privacy.ledger_storage import data_fingerprint
    from fedlora.records import load_examples
    from fedlora.sites import split_held_out

    seen: dict[str, SiteSpec] = {}
    counts = []
    for site in sites:
        train = load_examples(site.train_file, config.task, config.labels)
        fingerprint = data_fingerprint(site.train_file)
        if fingerprint in seen:
            raise DataError(
                f"{site.train_file} holds the same data as {seen[fingerprint].train_file} "
                f"(SHA-256 {fingerprint[:12]}…): give each data set once (one data set is "
                "one site, with one privacy ledger)"
            )
        seen[fingerprint] = site
        in_file = len(train)
        if site.test_file is not None:
            load_examples(site.test_file, config.task, config.labels)
        else:
            train, _ = split_held_out(
                train, test_fraction=config.test_fraction, seed=config.seed, where=site.name
            )
        counts.append(len(train))
        if warn:
            _warn_if_tiny(config, site, train_records=len(train), file_records=in_file)
    return counts


def _warn_if_tiny(
    config: RunConfig, site: SiteSpec, *, train_records: int, file_records: int
) -> None:
    """Warn about a site too small for DP training to mean much, with its numbers."""
    if not config.dp:
        return
    delta = config.delta if config.delta is not None else 0.1 / file_records
    source = "--delta" if config.delta is not None else f"0.1 / {file_records} records"
    if train_records < TINY_SITE_RECORDS:
        logger.warning(
            "site %s has only %d training record(s) (%d in %s): DP noise drowns what so few "
            "records teach, and δ = %.3g (%s) is large; a site should have hundreds",
            site.name, train_records, file_records, site.train_file, delta, source,
        )  # fmt: skip
    if delta * file_records >= 1:
        logger.warning(
            "site %s: δ = %.3g is not below 1 / records = %.3g: (ε, δ)-DP at this δ allows "
            "publishing δ × %d = %.3g of its records outright",
            site.name, delta, 1 / file_records, file_records, delta * file_records,
        )  # fmt: skip
