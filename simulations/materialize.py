"""Turn a run configuration into concrete simulated sites with data files on disk.

Built-in scenarios are generated (seeded, deterministic) into a cache folder keyed by every
setting that shapes the data, so the CLI runner and ``flwr run`` ClientApps that resolve the
same configuration read the same files.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from fedlora.config import DEFAULT_TARGET_EPSILON, RunConfig
from fedlora.errors import ConfigError, DataError
from fedlora.models import check_model_spec
from fedlora.privacy.accounting import check_target_reachable, default_delta, plan_steps
from fedlora.records import collect_labels, write_jsonl
from fedlora.simulations.checks import check_sites_data
from fedlora.simulations.scenarios import (
    DATA_VERSION,
    Scenario,
    SiteSplit,
    build_sites,
    get_scenario,
    scenario_source,
)
from fedlora.sites import SiteSpec, sites_from_files

logger = logging.getLogger(__name__)


def resolve_config(config: RunConfig) -> RunConfig:
    """Fill in what the configuration leaves to the scenario or the data.

    The number of sites defaults to the scenario's; classification labels come from the
    scenario, or from the user's files when they bring their own data and name no labels.

    Raises
    ------
    ConfigError
        For an unknown scenario.
    DataError
        For an unreadable data file while collecting labels.
    """
    changes: dict[str, object] = {}
    if config.uses_own_data:
        if config.task == "classification" and not config.labels:
            changes["labels"] = collect_labels([Path(p) for p in config.data_files])
    else:
        scenario = _scenario(config.scenario)
        if config.sites == 0:
            changes["sites"] = len(scenario.site_names)
        if config.task == "classification" and not config.labels:
            changes["labels"] = scenario.labels
    return config.replace(**changes) if changes else config


def _scenario(name: str) -> Scenario:
    try:
        return get_scenario(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


SiteCheck = Callable[[list[SiteSpec]], None]
"""Validates sites before they are kept (:func:`preflight`); raises to refuse them."""


def scenario_site_files(config: RunConfig, data_root: Path) -> list[SiteSpec]:
    """Where the built-in scenario's site files for ``config`` are (or will be).

    Generates nothing (:func:`scenario_sites` does).
    One folder per setting that shapes the data, under ``data_root``, named
    ``<scenario>-<task>-<key>`` (``key``: a hash of those settings), with a folder per site.
    """
    settings = {
        "data-version": DATA_VERSION,
        "scenario": config.scenario,
        "task": config.task,
        "sites": config.sites,
        "alpha": config.alpha,
        "seed": config.seed,
        "examples-per-site": config.examples_per_site,
        "test-fraction": config.test_fraction,
    }
    source = scenario_source(config.scenario)
    if source:
        settings["source"] = source
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    folder = data_root / f"{config.scenario}-{config.task}-{key}"
    scenario = _scenario(config.scenario)
    return _site_files(folder, [scenario.site_name(index) for index in range(config.sites)])


def scenario_sites(
    config: RunConfig, data_root: Path, check: SiteCheck | None = None
) -> list[SiteSpec]:
    """Generate (once) and return the built-in scenario's sites for ``config``.

    A scenario's files are generated into a hidden staging folder under ``data_root``,
    checked with ``check``, and only then renamed into place; a refused or failed generation
    leaves nothing behind (nor ``data_root`` or the folders above it this call created).
    """
    specs = scenario_site_files(config, data_root)
    folder = specs[0].train_file.parent.parent
    scenario = _scenario(config.scenario)
    if _complete(specs):
        if check is not None:
            check(specs)
        return specs
    splits = _build(
        scenario,
        task=config.task,
        num_sites=config.sites,
        alpha=config.alpha,
        seed=config.seed,
        examples_per_site=config.examples_per_site,
        test_fraction=config.test_fraction,
    )
    # data_root and the folders above it that this call creates, deepest first
    created = [path for path in (data_root, *data_root.parents) if not path.exists()]
    staging = data_root / f".{folder.name}.{secrets.token_hex(4)}"
    try:
        staging.mkdir(parents=True)
        staged = _site_files(staging, [spec.name for spec in specs])
        for spec, split in zip(staged, splits, strict=True):
            write_jsonl(spec.train_file, split.train)
            write_jsonl(cast(Path, spec.test_file), split.test)
        if check is not None:
            check(staged)
        _publish(staging, folder, specs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for path in created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty: another run may have written there meanwhile
        raise
    return specs


def _site_files(folder: Path, names: list[str]) -> list[SiteSpec]:
    return [
        SiteSpec(name, folder / name / "train.jsonl", folder / name / "test.jsonl")
        for name in names
    ]


def _complete(specs: list[SiteSpec]) -> bool:
    return all(
        spec.train_file.exists() and spec.test_file is not None and spec.test_file.exists()
        for spec in specs
    )


def _publish(staging: Path, folder: Path, specs: list[SiteSpec]) -> None:
    """Rename the staged files into place (the same settings always generate the same files)."""
    if folder.exists() and not _complete(specs):
        shutil.rmtree(folder)  # an older, interrupted generation
    try:
        staging.rename(folder)
    except OSError:
        if not _complete(specs):
            raise
        shutil.rmtree(staging)  # another process published the same files meanwhile


def _build(scenario: Scenario, **kwargs: Any) -> list[SiteSplit]:
    try:
        return build_sites(scenario, **kwargs)
    except DataError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def simulated_sites(config: RunConfig, check: SiteCheck | None = None) -> list[SiteSpec]:
    """The sites of a resolved configuration: the user's files or the built-in scenario's.

    ``check`` validates them before they are returned; a built-in scenario's generated files
    are only kept when it passes (see :func:`scenario_sites`).
    """
    if config.uses_own_data:
        sites = sites_from_files(config.data_files, config.test_files)
        if check is not None:
            check(sites)
        return sites
    return scenario_sites(config, Path(config.out) / ".scenario-data", check)


def prepare_sites(config: RunConfig) -> list[SiteSpec]:
    """The model check, then the sites of ``config`` read and validated (:func:`preflight`).

    Raises
    ------
    ModelError
        When the model names no preset, existing directory or hub id.
    DataError, ConfigError
        For a bad data file or a site whose privacy target is out of reach; nothing is
        left on disk.
    """
    check_model_spec(config.model, config.gguf_file)
    return simulated_sites(config, functools.partial(preflight, config))


def preflight(config: RunConfig, sites: list[SiteSpec]) -> None:
    """Read and validate every site's files before anything starts.

    Raises
    ------
    DataError
        Naming the file (and line) of the first problem, or two files of one data set
        (:func:`~fedlora.simulations.checks.check_sites_data`, which also warns of a tiny site).
    ConfigError
        When a site cannot reach the privacy target.
    """
    for site, records in zip(sites, check_sites_data(config, sites), strict=True):
        _check_privacy_target(config, site, records)


def _check_privacy_target(config: RunConfig, site: SiteSpec, records: int) -> None:
    """Refuse, before anything runs, a target ε no noise level reaches at a site."""
    if not config.dp or config.noise_multiplier is not None:
        return
    plan = plan_steps(
        records=records,
        batch_size=config.batch_size,
        local_epochs=config.local_epochs,
        max_steps=config.max_steps,
    )
    try:
        check_target_reachable(
            target_epsilon=config.target_epsilon or DEFAULT_TARGET_EPSILON,
            delta=config.delta or default_delta(records),
            sample_rate=plan.sample_rate,
            steps=plan.steps * config.rounds,
            accountant=config.accountant,
        )
    except ConfigError as exc:
        raise ConfigError(f"site {site.name}: {exc}") from None
