"""Turn a run configuration into concrete simulated sites with data files on disk.

Built-in scenarios are generated (seeded, deterministic) into a cache folder keyed by every
setting that shapes the data, so the CLI runner and ``flwr run`` ClientApps that resolve the
same configuration read the same files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from fedlora.config import DEFAULT_TARGET_EPSILON, RunConfig
from fedlora.data import collect_labels, load_examples, write_jsonl
from fedlora.errors import ConfigError
from fedlora.models import check_model_spec
from fedlora.privacy import check_target_reachable, default_delta, plan_steps
from fedlora.sites import SiteSpec, sites_from_files, split_held_out
from simulations.scenarios import DATA_VERSION, Scenario, SiteSplit, build_sites, get_scenario

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


def scenario_sites(config: RunConfig, data_root: Path) -> list[SiteSpec]:
    """Generate (once) and return the built-in scenario's sites for ``config``."""
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
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    folder = data_root / f"{config.scenario}-{config.task}-{key}"
    scenario = _scenario(config.scenario)
    splits = None
    specs = []
    for index in range(config.sites):
        name = scenario.site_name(index)
        train_file, test_file = folder / name / "train.jsonl", folder / name / "test.jsonl"
        if not (train_file.exists() and test_file.exists()):
            if splits is None:
                splits = _build(
                    scenario,
                    task=config.task,
                    num_sites=config.sites,
                    alpha=config.alpha,
                    seed=config.seed,
                    examples_per_site=config.examples_per_site,
                    test_fraction=config.test_fraction,
                )
            write_jsonl(train_file, splits[index].train)
            write_jsonl(test_file, splits[index].test)
        specs.append(SiteSpec(name, train_file, test_file))
    return specs


def _build(scenario: Scenario, **kwargs: Any) -> list[SiteSplit]:
    try:
        return build_sites(scenario, **kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def simulated_sites(config: RunConfig) -> list[SiteSpec]:
    """The sites of a resolved configuration: the user's files or the built-in scenario's."""
    if config.uses_own_data:
        return sites_from_files(config.data_files, config.test_files)
    return scenario_sites(config, Path(config.out) / ".scenario-data")


def preflight(config: RunConfig, sites: list[SiteSpec]) -> None:
    """Read and validate every site's files before anything starts.

    Raises
    ------
    DataError
        Naming the file (and line) of the first problem.
    ModelError
        When the model names no preset, existing directory or hub id.
    """
    check_model_spec(config.model)
    for site in sites:
        train = load_examples(site.train_file, config.task, config.labels)
        if site.test_file is not None:
            load_examples(site.test_file, config.task, config.labels)
        else:
            train, _ = split_held_out(
                train, test_fraction=config.test_fraction, seed=config.seed, where=site.name
            )
        _check_privacy_target(config, site, len(train))


def _check_privacy_target(config: RunConfig, site: SiteSpec, records: int) -> None:
    """Refuse, before anything runs, a target ε no noise level reaches at a site."""
    if not config.dp or config.noise_multiplier >= 0:
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
