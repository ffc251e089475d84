"""The drug-reviews scenario on small fixture TSV files written by the tests themselves."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from fedlora.config import RunConfig
from fedlora.data import load_examples
from fedlora.errors import AssetError, DataError
from fedlora.simulations import drug_reviews
from fedlora.simulations.drug_reviews import (
    CONDITION_QUESTION,
    FOLDER_ENV_VAR,
    LABELS,
    SENTIMENT_QUESTION,
    TEST_FILE,
    TRAIN_FILE,
    data_folder,
    held_out_records,
    read_reviews,
    split_reviews,
)
from fedlora.simulations.materialize import resolve_config, scenario_sites
from fedlora.simulations.scenarios import build_sites, get_scenario, scenario_names
from tests.real_assets import require_asset

HEADER = ["", "drugName", "condition", "review", "rating", "date", "usefulCount"]
CONDITIONS = ["Pain", "Acne", "Depression", "Insomnia", "Birth Control", ""]


def _row(index: int, *, rating: str | None = None, condition: str | None = None) -> list[str]:
    return [
        str(1000 + index),
        f"Drug{index % 7}",
        CONDITIONS[index % len(CONDITIONS)] if condition is None else condition,
        f'"""Review {index}: it didn&#039;t help at first, then it did."""',
        LABELS[index % 3] if rating is None else rating,
        "May 30, 2011",
        str(index),
    ]


def _write_tsv(path: Path, rows: list[list[str]]) -> Path:
    lines = ["\t".join(HEADER), *("\t".join(row) for row in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    data = tmp_path / "drugs"
    data.mkdir()
    _write_tsv(data / TRAIN_FILE, [_row(i) for i in range(90)])
    _write_tsv(data / TEST_FILE, [_row(1000 + i) for i in range(30)])
    return data


def test_read_reviews_cleans_entities_and_quotes(folder: Path) -> None:
    reviews = read_reviews(folder / TRAIN_FILE)

    assert len(reviews) == 90
    assert reviews[0].review == "Review 0: it didn't help at first, then it did."
    assert reviews[0].where.endswith(f"{TRAIN_FILE}:2")
    assert reviews[1].condition == "Acne"
    assert not reviews[5].has_condition


@pytest.mark.parametrize("task", ["classification", "sft"])
def test_every_train_row_is_used_once_and_the_test_file_is_held_out(
    folder: Path, task: str
) -> None:
    parts = split_reviews(task=task, num_sites=4, alpha=0.3, seed=7, folder=folder)

    train = [review.where for site_train, _ in parts for review in site_train]
    test = [review.where for _, site_test in parts for review in site_test]
    assert sorted(train) == sorted(r.where for r in read_reviews(folder / TRAIN_FILE))
    assert sorted(test) == sorted(r.where for r in read_reviews(folder / TEST_FILE))
    assert all(len(site_train) >= 2 and len(site_test) >= 2 for site_train, site_test in parts)


def test_sites_are_non_iid_by_rating(folder: Path) -> None:
    parts = split_reviews(task="classification", num_sites=3, alpha=0.1, seed=1, folder=folder)

    mixes = [Counter(review.rating for review in train) for train, _ in parts]
    shares = [max(mix.values()) / sum(mix.values()) for mix in mixes]
    # The file is a third of each rating; a small alpha leaves sites dominated by one.
    assert max(shares) > 0.6


def test_sites_are_non_iid_by_condition_for_sft(folder: Path) -> None:
    parts = split_reviews(task="sft", num_sites=3, alpha=0.1, seed=1, folder=folder)

    mixes = [Counter(review.condition for review in train) for train, _ in parts]
    assert max(max(mix.values()) / sum(mix.values()) for mix in mixes) > 0.3


def test_split_is_deterministic_by_seed(folder: Path) -> None:
    def train_rows(seed: int) -> list[list[str]]:
        parts = split_reviews(
            task="classification", num_sites=3, alpha=0.5, seed=seed, folder=folder
        )
        return [[review.where for review in train] for train, _ in parts]

    assert train_rows(3) == train_rows(3)
    assert train_rows(3) != train_rows(4)


def test_classification_records_hold_review_and_rating(folder: Path) -> None:
    records = drug_reviews.classification_records(read_reviews(folder / TRAIN_FILE)[:3])

    assert records[0] == {
        "text": "Review 0: it didn't help at first, then it did.",
        "label": LABELS[0],
    }
    assert {record["label"] for record in records} == set(LABELS)


def test_sft_records_ask_both_questions_in_words(folder: Path) -> None:
    reviews = read_reviews(folder / TRAIN_FILE)[:6]
    records = drug_reviews.sft_records(reviews)

    # Six reviews, one without a condition: six sentiment questions, five condition questions.
    assert sum(SENTIMENT_QUESTION in record["prompt"] for record in records) == 6
    assert sum(CONDITION_QUESTION in record["prompt"] for record in records) == 5
    first, second = records[0], records[1]
    assert "Review 0: it didn't help" in first["prompt"] and "Drug0" in first["prompt"]
    assert first["response"] == LABELS[0]
    assert second["response"] == "Pain"


def test_held_out_records_are_the_whole_test_file(folder: Path) -> None:
    records = held_out_records("classification", folder)

    assert len(records) == 30
    assert records[0]["text"].startswith("Review 1000:")


def test_build_sites_reads_the_folder_from_the_env_var(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FOLDER_ENV_VAR, str(folder))

    sites = build_sites(get_scenario("drug-reviews"), task="sft", num_sites=3, alpha=0.5, seed=0)

    assert [site.name for site in sites] == list(get_scenario("drug-reviews").site_names[:3])
    assert all(set(record) == {"prompt", "response"} for site in sites for record in site.train)
    assert sum(len(site.test) for site in sites) == len(held_out_records("sft", folder))


def test_scenario_is_registered_with_its_labels() -> None:
    assert "drug-reviews" in scenario_names()
    assert get_scenario("drug-reviews").labels == LABELS


def test_materialised_sites_pass_the_data_reader(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FOLDER_ENV_VAR, str(folder))
    config = resolve_config(RunConfig(scenario="drug-reviews", task="classification"))

    specs = scenario_sites(config, tmp_path / "cache")

    assert config.sites == 4 and config.labels == LABELS
    for spec in specs:
        assert load_examples(spec.train_file, "classification", config.labels)
        assert spec.test_file is not None
        assert load_examples(spec.test_file, "classification", config.labels)
    first = json.loads(specs[0].train_file.read_text().splitlines()[0])
    assert set(first) == {"text", "label"}


def test_new_data_files_are_not_served_stale_sites(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FOLDER_ENV_VAR, str(folder))
    config = resolve_config(RunConfig(scenario="drug-reviews", task="classification"))
    before = scenario_sites(config, tmp_path / "cache")[0].train_file

    _write_tsv(folder / TRAIN_FILE, [_row(i) for i in range(80)])
    after = scenario_sites(config, tmp_path / "cache")[0].train_file

    assert before.parent.parent != after.parent.parent


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (_row(1, rating="5 stars"), "rating must be one of"),
        (_row(1)[:4], "expected 7 tab-separated fields"),
        ([*_row(1), "extra"], "expected 7 tab-separated fields"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path: Path, row: list[str], message: str) -> None:
    path = _write_tsv(tmp_path / "bad.tsv", [_row(0), row])

    with pytest.raises(DataError, match=message) as caught:
        read_reviews(path)

    assert f"{path}:3:" in str(caught.value)


def test_empty_review_names_file_and_line(tmp_path: Path) -> None:
    row = _row(0)
    row[3] = '""'
    path = _write_tsv(tmp_path / "bad.tsv", [row])

    with pytest.raises(DataError, match=rf"{path}:2: empty review"):
        read_reviews(path)


def test_missing_column_names_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text("drugName\treview\trating\nX\tgood\tpositive\n", encoding="utf-8")

    with pytest.raises(DataError, match=rf"{path}:1: missing column\(s\) condition"):
        read_reviews(path)


def test_missing_folder_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="fedlora assets fetch"):
        data_folder(tmp_path / "nowhere")


def test_no_folder_configured_says_what_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FOLDER_ENV_VAR, raising=False)  # and the asset cache is empty (conftest)

    with pytest.raises(AssetError, match="fedlora assets fetch drug-reviews"):
        data_folder()


@pytest.mark.real
def test_real_files_split_into_the_default_sites() -> None:
    folder = Path(os.environ.get(FOLDER_ENV_VAR, "")) if os.environ.get(FOLDER_ENV_VAR) else None
    folder = folder or require_asset("drug-reviews")
    train = read_reviews(folder / TRAIN_FILE)
    parts = split_reviews(task="classification", num_sites=4, alpha=0.5, seed=0, folder=folder)

    assert len(train) == 600
    assert Counter(review.rating for review in train) == {
        "positive": 385,
        "negative": 161,
        "neutral": 54,
    }
    assert sum(len(site_train) for site_train, _ in parts) == 600
    assert sum(len(site_test) for _, site_test in parts) == 379
    assert len(drug_reviews.sft_records(train)) > 600
