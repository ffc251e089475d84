"""Provenance a run directory records: the versions of the packages its results depend on."""

from __future__ import annotations

import importlib.metadata

_PACKAGES = ("fedlora", "flwr", "torch", "transformers", "peft", "opacus", "numpy")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a run's results depend on."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
