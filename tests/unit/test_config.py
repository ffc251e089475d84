from pathlib import Path

import pytest
import tomllib

from fedlora.config import RunConfig
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
