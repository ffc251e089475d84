"""The exceptions users see.

Every error fedlora raises on purpose derives from :class:`FedloraError`; the CLI turns these
into one line and exit code 2. Each class carries an ``error_code`` that a ClientApp puts in
its Flower ``Error`` reply, so the coordinator can tell a refusal from a crash.
"""

from __future__ import annotations

from pathlib import Path


class FedloraError(Exception):
    """Base class of every error fedlora reports to a user."""

    error_code = 100


class ConfigError(FedloraError, ValueError):
    """A configuration value is missing, unknown or impossible."""

    error_code = 101


class DataError(FedloraError, ValueError):
    """A site's data file is missing, unreadable or malformed."""

    error_code = 102


class ModelError(FedloraError):
    """A base model cannot be resolved or loaded, or is unsuitable for the task."""

    error_code = 103


class BaseMismatchError(FedloraError):
    """A node's base weights differ from the coordinator's."""

    error_code = 104


class AdapterError(FedloraError, ValueError):
    """An adapter payload does not match the expected adapter."""

    error_code = 105


class RunDirError(FedloraError):
    """A run directory is unusable or not in the expected state."""

    error_code = 106


class LedgerError(FedloraError):
    """A site privacy ledger is corrupted, altered, or belongs to other data."""

    error_code = 107


class BudgetExhaustedError(FedloraError):
    """No site could train another round within its privacy budget.

    ``run_dir`` is the stopped run's directory when one exists (its adapters and ledgers up to
    the last trained round are valid and its report can be written).
    """

    error_code = 108

    def __init__(self, message: str, run_dir: Path | None = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir


class PkiError(FedloraError):
    """A federation PKI file is missing, unreadable, would be overwritten, or a request is bad."""

    error_code = 109


class AssetError(FedloraError):
    """A real model or data asset is not in the cache, unknown, or failed its hash check."""

    error_code = 110
