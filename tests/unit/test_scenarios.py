"""Tests for the text generators and the scenario registry."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest

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
from fedlora.simulations.scenarios import SiteSplit, Task, build_sites, get_scenario, scenario_names

Generator = Callable[..., list[dict[str, str]]]

MESSAGE_GENERATORS = [
    pytest.param(generate_triage_messages, DEPARTMENTS, id="triage"),
    pytest.param(generate_support_messages, INTENTS, id="support"),
]
QA_GENERATORS = [
    pytest.param(generate_medical_qa, DEPARTMENTS, id="medical"),
    pytest.param(generate_support_qa, INTENTS, id="bank"),
]
ALL_GENERATORS = [
    pytest.param(generate_triage_messages, id="triage"),
    pytest.param(generate_support_messages, id="support"),
    pytest.param(generate_medical_qa, id="medical"),
    pytest.param(generate_support_qa, id="bank"),
]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _naive_bayes_accuracy(train: list[dict[str, str]], test: list[dict[str, str]]) -> float:
    word_counts: dict[str, Counter[str]] = defaultdict(Counter)
    for record in train:
        word_counts[record["label"]].update(_words(record["text"]))
    vocabulary = {word for counts in word_counts.values() for word in counts}

    def score(label: str, words: list[str]) -> float:
        counts = word_counts[label]
        total = sum(counts.values()) + len(vocabulary)
        return sum(math.log((counts[word] + 1) / total) for word in words)

    hits = sum(
        max(word_counts, key=lambda label: score(label, _words(r["text"]))) == r["label"]
        for r in test
    )
    return hits / len(test)


@pytest.mark.parametrize("generate", ALL_GENERATORS)
def test_generator_is_deterministic_for_a_seed(generate: Generator) -> None:
    assert generate(50, seed=4) == generate(50, seed=4)


@pytest.mark.parametrize("generate", ALL_GENERATORS)
def test_generator_differs_across_seeds(generate: Generator) -> None:
    assert generate(50, seed=4) != generate(50, seed=5)


@pytest.mark.parametrize("generate", ALL_GENERATORS)
def test_generator_returns_requested_count(generate: Generator) -> None:
    assert len(generate(37, seed=0)) == 37
    assert generate(0, seed=0) == []


@pytest.mark.parametrize("generate", ALL_GENERATORS)
def test_generator_rejects_negative_count(generate: Generator) -> None:
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        generate(-1, seed=0)


@pytest.mark.parametrize(("generate", "labels"), MESSAGE_GENERATORS)
def test_messages_have_text_and_a_known_label(generate: Generator, labels: tuple[str, ...]) -> None:
    records = generate(200, seed=1)

    assert all(set(record) == {"text", "label"} for record in records)
    assert {record["label"] for record in records} == set(labels)


@pytest.mark.parametrize(("generate", "labels"), MESSAGE_GENERATORS)
def test_message_labels_are_balanced(generate: Generator, labels: tuple[str, ...]) -> None:
    counts = Counter(record["label"] for record in generate(403, seed=1))

    assert max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.parametrize(("generate", "labels"), MESSAGE_GENERATORS)
def test_messages_are_mostly_unique(generate: Generator, labels: tuple[str, ...]) -> None:
    texts = [record["text"] for record in generate(500, seed=2)]

    assert len(set(texts)) > 0.8 * len(texts)


@pytest.mark.parametrize(("generate", "labels"), MESSAGE_GENERATORS)
def test_message_label_is_learnable_from_text(generate: Generator, labels: tuple[str, ...]) -> None:
    train, test = generate(800, seed=0), generate(200, seed=1)

    assert _naive_bayes_accuracy(train, test) > 0.9


def test_triage_messages_are_60_to_200_characters() -> None:
    lengths = [len(record["text"]) for record in generate_triage_messages(1000, seed=3)]

    assert min(lengths) >= 60
    assert max(lengths) <= 200


def test_triage_messages_mix_patient_voice_and_clinician_notes() -> None:
    texts = [record["text"] for record in generate_triage_messages(300, seed=3)]

    patient = sum(bool(re.search(r"\b(I|I've|I'm|my|My)\b", text)) for text in texts)
    assert 0.3 * len(texts) < patient < 0.9 * len(texts)


@pytest.mark.parametrize(("generate", "topics"), QA_GENERATORS)
def test_qa_records_have_prompt_response_and_known_topic(
    generate: Generator, topics: tuple[str, ...]
) -> None:
    records = generate(200, seed=1)

    assert all(set(record) == {"prompt", "response", "topic"} for record in records)
    assert {record["topic"] for record in records} == set(topics)


@pytest.mark.parametrize(("generate", "topics"), QA_GENERATORS)
def test_qa_gives_one_answer_per_question(generate: Generator, topics: tuple[str, ...]) -> None:
    answers: dict[str, set[str]] = defaultdict(set)
    for record in generate(1000, seed=6):
        answers[record["prompt"]].add(record["response"])

    assert all(len(responses) == 1 for responses in answers.values())


@pytest.mark.parametrize(("generate", "topics"), QA_GENERATORS)
def test_qa_questions_are_phrased_in_several_ways(
    generate: Generator, topics: tuple[str, ...]
) -> None:
    records = generate(3000, seed=6)

    prompts_per_answer: dict[str, set[str]] = defaultdict(set)
    for record in records:
        prompts_per_answer[record["response"]].add(record["prompt"])
    assert min(len(prompts) for prompts in prompts_per_answer.values()) >= 2


def test_medical_answers_are_40_to_160_characters() -> None:
    responses = {record["response"] for record in generate_medical_qa(1000, seed=0)}

    assert all(40 <= len(response) <= 160 for response in responses)


def test_medical_answers_give_no_dosages() -> None:
    responses = {record["response"] for record in generate_medical_qa(1000, seed=0)}

    dosage = re.compile(r"\d\s*(mg|mcg|ml|g|units?|iu|tablets?|times)\b", re.IGNORECASE)
    assert not any(dosage.search(response) for response in responses)


def test_scenario_names_are_sorted() -> None:
    assert scenario_names() == ("banks", "drug-reviews", "hospitals")


def test_unknown_scenario_lists_valid_names() -> None:
    valid = "banks, drug-reviews, hospitals"
    with pytest.raises(ValueError, match=f"unknown scenario 'x'; valid: {valid}"):
        get_scenario("x")


@pytest.mark.parametrize(
    ("name", "sites", "labels"), [("hospitals", 5, DEPARTMENTS), ("banks", 4, INTENTS)]
)
def test_scenario_has_default_sites_and_labels(
    name: str, sites: int, labels: tuple[str, ...]
) -> None:
    scenario = get_scenario(name)

    assert len(scenario.site_names) == sites
    assert len(set(scenario.site_names)) == sites
    assert scenario.labels == labels


@pytest.mark.parametrize(("name", "extra"), [("hospitals", "hospital-6"), ("banks", "bank-5")])
def test_site_name_beyond_defaults_is_numbered(name: str, extra: str) -> None:
    scenario = get_scenario(name)
    count = len(scenario.site_names)

    assert scenario.site_name(0) == scenario.site_names[0]
    assert scenario.site_name(count) == extra


def test_site_name_rejects_negative_index() -> None:
    with pytest.raises(ValueError, match="site index must be >= 0, got -1"):
        get_scenario("banks").site_name(-1)


@pytest.mark.parametrize("name", ["hospitals", "banks"])
def test_build_sites_names_every_site(name: str) -> None:
    scenario = get_scenario(name)

    sites = build_sites(scenario, task="classification", num_sites=7, alpha=1.0, seed=0)

    assert all(isinstance(site, SiteSplit) for site in sites)
    assert [site.name for site in sites] == [scenario.site_name(i) for i in range(7)]


@pytest.mark.parametrize("task", ["classification", "sft"])
def test_build_sites_keeps_every_record_once(task: Task) -> None:
    sites = build_sites(
        get_scenario("hospitals"), task=task, num_sites=4, alpha=0.3, seed=0, examples_per_site=50
    )

    assert sum(len(site.train) + len(site.test) for site in sites) == 200


def test_build_sites_train_and_test_are_disjoint_and_non_empty() -> None:
    sites = build_sites(
        get_scenario("hospitals"), task="classification", num_sites=4, alpha=0.1, seed=2
    )

    for site in sites:
        assert site.train
        assert site.test
        assert not {r["text"] for r in site.train} & {r["text"] for r in site.test}


def test_build_sites_sft_records_have_only_prompt_and_response() -> None:
    sites = build_sites(get_scenario("banks"), task="sft", num_sites=3, alpha=1.0, seed=0)

    records = [record for site in sites for record in site.train + site.test]
    assert all(set(record) == {"prompt", "response"} for record in records)


def test_build_sites_classification_labels_are_in_label_set() -> None:
    scenario = get_scenario("hospitals")

    sites = build_sites(scenario, task="classification", num_sites=5, alpha=0.5, seed=0)

    records = [record for site in sites for record in site.train + site.test]
    assert all(set(record) == {"text", "label"} for record in records)
    assert {record["label"] for record in records} <= set(scenario.labels)


def test_build_sites_with_infinite_alpha_gives_equal_sizes() -> None:
    sites = build_sites(get_scenario("hospitals"), task="sft", num_sites=5, alpha=math.inf, seed=0)

    assert {len(site.train) + len(site.test) for site in sites} == {200}


def test_build_sites_is_deterministic_for_a_seed() -> None:
    scenario = get_scenario("hospitals")

    first = build_sites(scenario, task="classification", num_sites=3, alpha=0.5, seed=8)
    second = build_sites(scenario, task="classification", num_sites=3, alpha=0.5, seed=8)

    assert first == second


def test_build_sites_differs_across_seeds() -> None:
    scenario = get_scenario("hospitals")

    first = build_sites(scenario, task="classification", num_sites=3, alpha=0.5, seed=8)
    second = build_sites(scenario, task="classification", num_sites=3, alpha=0.5, seed=9)

    assert first != second


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "rl"}, "unknown task 'rl'; valid: classification, sft"),
        ({"num_sites": 0}, "num_sites must be >= 1, got 0"),
        ({"alpha": 0}, "alpha must be > 0, got 0"),
        ({"examples_per_site": 4}, "examples_per_site must be >= 5, got 4"),
        ({"test_fraction": 1.0}, "test_fraction must be in (0, 1), got 1.0"),
        ({"seed": -3}, "seed must be a non-negative integer, got -3"),
    ],
)
def test_build_sites_rejects_invalid_arguments(kwargs: dict[str, Any], message: str) -> None:
    arguments = {"task": "sft", "num_sites": 2, "alpha": 1.0, "seed": 0, **kwargs}

    with pytest.raises(ValueError, match=re.escape(message)):
        build_sites(get_scenario("banks"), **arguments)
