import math
from pathlib import Path

import pytest
import tomllib

from fedlora.config import RunConfig, check_run_id
from fedlora.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_run_config_parses_into_run_config():
    flat = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    resolved = RunConfig.from_flat(flat).to_flat()
    for key, value in flat.items():
        assert resolved[key] == value, key


def test_flat_round_trip():
    config = RunConfig(
        task="classification", labels=("a", "b"), lora_targets=("q_proj",), lr=0.5, rounds=4
    )
    assert RunConfig.from_flat(config.to_flat()) == config


def test_unknown_key_is_an_error_listing_valid_keys():
    with pytest.raises(
        ConfigError, match=r"unknown config key\(s\): num-round \(valid keys: .*rounds"
    ):
        RunConfig.from_flat({"num-round": 3})


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="rounds must be an integer, got 'three'"):
        RunConfig.from_flat({"rounds": "three"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rounds": 0}, "rounds must be >= 1, got 0"),
        ({"sites": -1}, "sites must be >= 1"),
        ({"alpha": 0.0}, "alpha must be > 0, got 0.0"),
        ({"alpha": -2.0}, "alpha must be > 0, got -2.0"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"task": "rl"}, "task must be one of sft, classification, got 'rl'"),
        ({"lora_r": 0}, "lora-r must be >= 1, got 0"),
        ({"test_fraction": 1.0}, r"test-fraction must be in \(0, 1\)"),
        (
            {"data_files": ("a.jsonl",), "test_files": ("a.jsonl", "b.jsonl")},
            "one file per data file",
        ),
        ({"data_files": ("a.jsonl", "b.jsonl"), "sites": 3}, "one site per file"),
        ({"labels": ("a", "a")}, "duplicates"),
    ],
)
def test_impossible_values_raise(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes)


def test_sites_default_to_the_number_of_data_files():
    assert RunConfig(data_files=("a.jsonl", "b.jsonl")).sites == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sites": 100_000_000}, r"sites must be <= 1,000, got 100,000,000: the coordinator"),
        (
            {"examples_per_site": 10**12},
            r"examples-per-site must be <= 1,000,000, got 1,000,000,000,000: scenario data",
        ),
        ({"rounds": 10**6}, r"rounds must be <= 100,000, got 1,000,000: each round writes"),
        ({"batch_size": 10**6}, r"batch-size must be <= 65,536"),
        ({"max_length": 10**6}, r"max-length must be <= 32,768"),
        ({"lora_r": 10**5}, r"lora-r must be <= 4,096"),
        ({"local_epochs": 10**4}, r"local-epochs must be <= 1,000"),
        ({"max_steps": 10**9}, r"max-steps must be <= 1,000,000"),
        ({"round_retries": 10**3}, r"round-retries must be <= 100"),
        (
            {"batch_size": 4096, "max_length": 8192},
            r"batch-size × max-length must be <= 16,777,216 tokens, got 33,554,432",
        ),
        (
            {"sites": 1000, "examples_per_site": 10_000},
            r"sites × examples-per-site must be <= 1,000,000 for a built-in scenario",
        ),
    ],
)
def test_sizes_past_their_bound_are_refused_with_the_bound_and_why(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes)


def test_absurd_sizes_from_a_flat_config_are_refused():
    with pytest.raises(ConfigError, match="sites must be <= 1,000"):
        RunConfig.from_flat({"sites": 10**8})


def test_the_scenario_size_bound_does_not_apply_to_own_data():
    files = tuple(f"site-{index}.jsonl" for index in range(500))
    assert RunConfig(data_files=files, examples_per_site=10_000).sites == 500


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("budget_epsilon", math.inf),
        ("target_epsilon", math.inf),
        ("lr", math.inf),
        ("max_grad_norm", math.inf),
        ("noise_multiplier", math.inf),
        ("delta", math.nan),
        ("central_noise_multiplier", math.inf),
        ("central_noise_multiplier", math.nan),
        ("central_clip_norm", math.inf),
        ("server_lr", math.inf),
        ("server_tau", math.nan),
        ("trim_fraction", math.inf),
        ("client_cpus", math.inf),
        ("lora_dropout", math.nan),
        ("alpha", math.nan),
        ("round_timeout", math.nan),
    ],
)
def test_non_finite_numbers_are_refused(key, value):
    with pytest.raises(ConfigError, match=rf"{key.replace('_', '-')} must be a finite number"):
        RunConfig(**{key: value})


def test_infinite_budget_from_a_flat_config_is_refused():
    with pytest.raises(ConfigError, match="budget-epsilon must be a finite number, got inf"):
        RunConfig.from_flat({"budget-epsilon": "inf"})


@pytest.mark.parametrize("key", ["alpha", "round_timeout", "node_wait_timeout"])
def test_infinity_is_accepted_where_it_means_something(key):
    # alpha: an even split; timeouts: wait without a limit
    assert getattr(RunConfig(**{key: math.inf}), key) == math.inf


@pytest.mark.parametrize(
    "run_id", ["20240101-120000-abcdef", "trial_1", "a", "v1.2+fix", "x" * 128]
)
def test_safe_run_ids_are_accepted(run_id):
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize(
    "run_id",
    [
        "",
        "../../escape",
        "..",
        ".",
        ".hidden",
        "a/b",
        "a\\b",
        "/abs",
        "a..b",
        "x" * 129,
        "-flag",
        "with space",
        "nul\x00",
        "tab\t",
        "é",
    ],
)
def test_unsafe_run_ids_are_refused(run_id):
    with pytest.raises(ConfigError, match="is not a valid run id"):
        check_run_id(run_id, key="--run-id")


def test_resume_key_must_be_a_run_id():
    with pytest.raises(ConfigError, match=r"resume '\.\./other' is not a valid run id"):
        RunConfig(resume="../other")
