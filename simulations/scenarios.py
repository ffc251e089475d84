"""Registry of built-in scenarios and the construction of their per-site datasets."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol

from fedlora.simulations import drug_reviews
from fedlora.simulations.generators.banks import (
    INTENTS,
    generate_support_messages,
    generate_support_qa,
)
from fedlora.simulations.generators.hospitals import (
    DEPARTMENTS,
    generate_medical_qa,
    generate_triage_messages,
)
from fedlora.simulations.partition import dirichlet_partition, train_test_split
from fedlora.simulations.seeding import check_seed, derive_seed

logger = logging.getLogger(__name__)

# Bumped whenever generated data changes for the same arguments, so caches keyed on the
# arguments can include it and never serve stale data.
DATA_VERSION = 1

Task = Literal["sft", "classification"]
TASKS: tuple[Task, ...] = ("sft", "classification")
MIN_EXAMPLES_PER_SITE = 5
# Every site needs at least one train and one test example.
MIN_SITE_SIZE = 2

# Sub-seed streams of one run, so stages never share random numbers.
_GENERATE_STREAM = 0
_PARTITION_STREAM = 1
_SPLIT_STREAM = 2


class _Generator(Protocol):
    def __call__(self, n: int, *, seed: int) -> list[dict[str, str]]: ...


@dataclass(frozen=True)
class Scenario:
    """A built-in federation: who the sites are and what their data looks like."""

    name: str
    description: str
    site_names: tuple[str, ...]
    labels: tuple[str, ...]
    site_prefix: str = "site"

    def site_name(self, index: int) -> str:
        """Name of the site at ``index`` (0-based).

        Parameters
        ----------
        index
            Site index, >= 0.

        Returns
        -------
        str
            ``site_names[index]``, or ``f"{site_prefix}-{index + 1}"`` past the named sites.

        Raises
        ------
        ValueError
            If ``index`` is negative.
        """
        if index < 0:
            raise ValueError(f"site index must be >= 0, got {index}")
        if index < len(self.site_names):
            return self.site_names[index]
        return f"{self.site_prefix}-{index + 1}"


@dataclass(frozen=True)
class SiteSplit:
    """One site's generated records, split into train and test."""

    name: str
    train: list[dict[str, str]]
    test: list[dict[str, str]]


_SCENARIOS: dict[str, Scenario] = {
    "hospitals": Scenario(
        name="hospitals",
        description=(
            "Hospitals route triage messages to departments (classification) or answer "
            "patients' health questions (sft)."
        ),
        site_names=(
            "st-elsewhere",
            "mercy-general",
            "lakeside-medical",
            "riverside-university",
            "valley-community",
        ),
        labels=DEPARTMENTS,
        site_prefix="hospital",
    ),
    "banks": Scenario(
        name="banks",
        description=(
            "Banks classify customer-support messages by intent (classification) or answer "
            "customers' questions (sft)."
        ),
        site_names=("harbor-trust", "pinecrest-credit-union", "summit-savings", "meridian-bank"),
        labels=INTENTS,
        site_prefix="bank",
    ),
    "drug-reviews": Scenario(
        name="drug-reviews",
        description=(
            "Hospitals hold real patient-written drug reviews (drugs.com via the UCI ML "
            "repository): classify the rating (classification) or answer questions about the "
            "experience and the condition in words (sft); the real test file is held out."
        ),
        site_names=("northgate-hospital", "harbourview-clinic", "county-general", "st-lukes"),
        labels=drug_reviews.LABELS,
        site_prefix="hospital",
    ),
}

_GENERATORS: dict[str, dict[Task, _Generator]] = {
    "hospitals": {"classification": generate_triage_messages, "sft": generate_medical_qa},
    "banks": {"classification": generate_support_messages, "sft": generate_support_qa},
}

# Partition by the class a record belongs to, so alpha controls label skew.
_GROUP_KEY: dict[Task, str] = {"classification": "label", "sft": "topic"}
_OUTPUT_KEYS: dict[Task, tuple[str, ...]] = {
    "classification": ("text", "label"),
    "sft": ("prompt", "response"),
}


def scenario_names() -> tuple[str, ...]:
    """Return the names of the built-in scenarios, sorted."""
    return tuple(sorted(_SCENARIOS))


def get_scenario(name: str) -> Scenario:
    """Look up a built-in scenario by name.

    Parameters
    ----------
    name
        Scenario name, e.g. ``"hospitals"``.

    Returns
    -------
    Scenario
        The registered scenario.

    Raises
    ------
    ValueError
        If no scenario has that name; the message lists the valid ones.
    """
    try:
        return _SCENARIOS[name]
    except KeyError:
        valid = ", ".join(scenario_names())
        raise ValueError(f"unknown scenario {name!r}; valid: {valid}") from None


def scenario_source(name: str) -> str:
    """A fingerprint of the files a real scenario reads; ``""`` for a generated one.

    Caches of generated site files key on it, so new data files are never served stale sites.

    Raises
    ------
    DataError
        For a real scenario whose files cannot be found or read.
    """
    if name != drug_reviews.ASSET_NAME:
        return ""
    return drug_reviews.source_fingerprint()


def build_sites(
    scenario: Scenario,
    *,
    task: Task,
    num_sites: int,
    alpha: float,
    seed: int,
    examples_per_site: int = 200,
    test_fraction: float = 0.2,
) -> list[SiteSplit]:
    """Generate a scenario's data and deal it out to non-IID sites.

    ``examples_per_site * num_sites`` records are generated, partitioned with
    :func:`~fedlora.simulations.partition.dirichlet_partition` grouped by label (classification) or
    topic (sft), and each site is split into train and test. The ``drug-reviews`` scenario reads
    real files instead (:mod:`fedlora.simulations.drug_reviews`): its train file is partitioned,
    its test file is the held-out data, and ``examples_per_site`` / ``test_fraction`` do not apply.

    Parameters
    ----------
    scenario
        A registered scenario (see :func:`get_scenario`).
    task
        ``"classification"`` gives ``{"text", "label"}`` records; ``"sft"`` gives
        ``{"prompt", "response"}`` records.
    num_sites
        Number of sites (>= 1); sites are named with :meth:`Scenario.site_name`.
    alpha
        Dirichlet concentration (> 0); small values skew labels and sizes, ``float("inf")``
        splits evenly.
    seed
        Non-negative seed; the same arguments always give the same sites.
    examples_per_site
        Average records per site (>= 5); individual sites vary with ``alpha``.
    test_fraction
        Share of each site's records held out for test, in ``(0, 1)``.

    Returns
    -------
    list[SiteSplit]
        One split per site, in site order; every site has non-empty train and test sets.

    Raises
    ------
    ValueError
        For an unknown scenario or task, or an out-of-range argument.
    DataError
        For a real scenario whose files are missing or malformed.
    """
    _check_build_args(
        scenario,
        task=task,
        num_sites=num_sites,
        alpha=alpha,
        seed=seed,
        examples_per_site=examples_per_site,
        test_fraction=test_fraction,
    )
    if scenario.name == drug_reviews.ASSET_NAME:
        return _real_sites(scenario, task=task, num_sites=num_sites, alpha=alpha, seed=seed)
    generate = _GENERATORS[scenario.name][task]
    records = generate(examples_per_site * num_sites, seed=derive_seed(seed, _GENERATE_STREAM))
    groups = [record[_GROUP_KEY[task]] for record in records]
    parts = dirichlet_partition(
        groups,
        num_sites=num_sites,
        alpha=alpha,
        seed=derive_seed(seed, _PARTITION_STREAM),
        min_per_site=MIN_SITE_SIZE,
    )
    keys = _OUTPUT_KEYS[task]
    sites = []
    for index, part in enumerate(parts):
        train, test = train_test_split(
            part, test_fraction=test_fraction, seed=derive_seed(seed, _SPLIT_STREAM, index)
        )
        sites.append(
            SiteSplit(
                name=scenario.site_name(index),
                train=[{key: records[i][key] for key in keys} for i in train],
                test=[{key: records[i][key] for key in keys} for i in test],
            )
        )
    logger.debug(
        "built %d %s sites for %s: sizes %s",
        num_sites,
        task,
        scenario.name,
        [len(site.train) + len(site.test) for site in sites],
    )
    return sites


def _real_sites(
    scenario: Scenario, *, task: Task, num_sites: int, alpha: float, seed: int
) -> list[SiteSplit]:
    """The drug-review files dealt out to sites (their own train / test files, no generation)."""
    parts = drug_reviews.split_reviews(
        task=task, num_sites=num_sites, alpha=alpha, seed=seed, min_per_site=MIN_SITE_SIZE
    )
    sites = [
        SiteSplit(
            name=scenario.site_name(index),
            train=drug_reviews.to_records(train, task),
            test=drug_reviews.to_records(test, task),
        )
        for index, (train, test) in enumerate(parts)
    ]
    logger.debug(
        "dealt drug reviews to %d %s sites: train sizes %s",
        num_sites,
        task,
        [len(site.train) for site in sites],
    )
    return sites


def _check_build_args(
    scenario: Scenario,
    *,
    task: str,
    num_sites: int,
    alpha: float,
    seed: int,
    examples_per_site: int,
    test_fraction: float,
) -> None:
    get_scenario(scenario.name)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(sorted(TASKS))}")
    if num_sites < 1:
        raise ValueError(f"num_sites must be >= 1, got {num_sites}")
    # Written so that NaN fails too.
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if examples_per_site < MIN_EXAMPLES_PER_SITE:
        raise ValueError(
            f"examples_per_site must be >= {MIN_EXAMPLES_PER_SITE}, got {examples_per_site}"
        )
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    check_seed(seed)
