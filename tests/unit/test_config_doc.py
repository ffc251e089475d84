"""The run configuration has one source: the dataclass. Docs, pyproject and CLI follow it."""

import logging
from dataclasses import fields
from pathlib import Path

import pytest
import tomllib

from fedlora.cli.config_doc import render
from fedlora.cli.flags import NOT_FLAGS, config_from_args, flag_of, run_config_fields
from fedlora.cli.main import build_parser, main
from fedlora.config import STRATEGY_NAMES, RunConfig, field_kinds
from fedlora.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
# Keys whose pyproject value differs from the dataclass default, with the reason.
PYPROJECT_DIFFERS = {"sites": "flwr run's local federation has 5 SuperNodes"}


def _pyproject_run_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_every_field_has_help_and_a_cli_group():
    for f in fields(RunConfig):
        if f.name == "extra":
            continue
        assert f.metadata.get("help"), f"{f.name} has no help"
        assert f.metadata.get("group"), f"{f.name} has no CLI group"


def test_docs_configuration_md_is_generated_from_the_dataclass():
    written = (ROOT / "docs" / "configuration.md").read_text()
    assert written == render(), "run: python -m fedlora.cli.config_doc > docs/configuration.md"


def test_pyproject_run_config_has_every_key_at_its_default():
    flat = _pyproject_run_config()
    defaults = RunConfig().to_flat()
    assert sorted(flat) == sorted(defaults)
    differing = {key for key in flat if flat[key] != defaults[key]}
    assert differing == set(PYPROJECT_DIFFERS)


def test_every_field_is_a_flag_or_listed_with_a_reason():
    flags = {f.name for f in run_config_fields()}
    assert set(NOT_FLAGS) <= set(field_kinds())
    assert flags | set(NOT_FLAGS) == set(field_kinds())
    assert all(NOT_FLAGS.values())


def test_simulate_without_flags_gives_the_dataclass_defaults():
    assert config_from_args(build_parser().parse_args(["simulate"])) == RunConfig()


def test_simulate_help_shows_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for f in run_config_fields():
        assert flag_of(f) in shown
    assert "hetero-rank" in shown and "(default: auto)" in shown and "(default: 0.01)" in shown


def test_site_ranks_and_auto_values_are_flags():
    args = build_parser().parse_args(
        ["simulate", "--strategy", "hetero-rank", "--site-ranks", "a=2,b=4", "--server-lr", "auto"]
    )
    config = config_from_args(args)
    assert config.site_rank_map == {"a": 2, "b": 4}
    assert config.server_lr is None


def test_strategy_names_are_the_registry_names():
    from fedlora.strategies.registry import strategy_names

    assert sorted(strategy_names()) == sorted(STRATEGY_NAMES)


def test_auto_is_none_and_round_trips():
    config = RunConfig.from_flat({"noise-multiplier": "auto", "delta": 1e-5, "server-lr": "AUTO"})
    assert config.noise_multiplier is None and config.delta == 1e-5 and config.server_lr is None
    assert config.to_flat()["noise-multiplier"] == "auto"
    assert RunConfig.from_flat(config.to_flat()) == config


@pytest.mark.parametrize(
    ("key", "old"),
    [
        ("noise-multiplier", -1.0),
        ("target-epsilon", 0.0),
        ("delta", 0.0),
        ("proximal-mu", -1.0),
        ("server-lr", -1.0),
        ("central-delta", 0.0),
        ("client-gpus", -1.0),
    ],
)
def test_old_numeric_defaults_are_read_as_auto_with_a_warning(caplog, key, old):
    with caplog.at_level(logging.WARNING, logger="fedlora.config"):
        config = RunConfig.from_flat({key: old})
    assert config == RunConfig()
    assert f'{key} = {old!r} is deprecated and read as "auto": write {key} = "auto"' in caplog.text


def test_a_number_where_auto_is_allowed_says_so():
    with pytest.raises(ConfigError, match='noise-multiplier must be a number or "auto"'):
        RunConfig.from_flat({"noise-multiplier": "lots"})


def test_version(capsys):
    from fedlora import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"fedlora {__version__}"


def test_an_old_checkpoint_config_reads_as_auto_without_a_warning(caplog):
    from fedlora.config import upgrade_legacy

    old = {**RunConfig().to_flat(), "noise-multiplier": -1.0, "delta": 0.0, "server-lr": -1.0}
    with caplog.at_level(logging.WARNING, logger="fedlora.config"):
        upgraded = upgrade_legacy(old, warn=False)
    assert upgraded == RunConfig().to_flat()
    assert not caplog.text
