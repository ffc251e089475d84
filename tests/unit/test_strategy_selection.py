"""Strategies by name with their settings; bad settings refused in one line before training."""

from __future__ import annotations

import pytest
import torch

from fedlora.cli.main import main as fedlora_main
from fedlora.config import RunConfig
from fedlora.errors import AdapterError, ConfigError
from fedlora.strategies import build_strategy, strategy_names
from fedlora.strategies.fedadam import FedAdam
from fedlora.strategies.fedavgm import FedAvgM
from fedlora.strategies.krum import Krum
from fedlora.strategies.validation import UpdateRejectedError, validate_update


@pytest.mark.parametrize("name", strategy_names())
def test_every_name_builds_its_strategy(name: str) -> None:
    strategy = build_strategy(RunConfig(strategy=name, sites=5))

    assert strategy.name == name


def test_settings_reach_the_strategy() -> None:
    adam = build_strategy(RunConfig(strategy="fedadam", sites=3, server_lr=0.5, server_beta1=0.5))
    avgm = build_strategy(RunConfig(strategy="fedavgm", sites=3))
    multi = build_strategy(RunConfig(strategy="multi-krum", sites=7, krum_byzantine=2))

    assert isinstance(adam, FedAdam) and (adam.server_lr, adam.beta1) == (0.5, 0.5)
    assert isinstance(avgm, FedAvgM) and avgm.server_lr == 1.0  # its own default
    assert isinstance(multi, Krum) and multi.multi == 5  # sites - f


def test_fedprox_mu_defaults_and_applies_only_to_fedprox() -> None:
    assert RunConfig(strategy="fedprox").effective_proximal_mu == 0.01
    assert RunConfig(strategy="fedprox", proximal_mu=0.3).effective_proximal_mu == 0.3
    assert RunConfig(strategy="fedavg").effective_proximal_mu == 0.0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "fedsgd"}, "unknown strategy 'fedsgd'; valid: fedadam"),
        ({"strategy": "fedprox", "proximal_mu": -0.1}, "proximal-mu must be >= 0"),
        ({"strategy": "fedavg", "proximal_mu": 0.1}, "proximal-mu applies to strategy fedprox"),
        ({"strategy": "fedadam", "server_lr": 0.0}, "server learning rate must be > 0"),
        ({"strategy": "fedavgm", "server_lr": -0.5}, "server learning rate must be > 0"),
        ({"strategy": "fedyogi", "server_beta2": 1.0}, "beta2 must be in"),
        (
            {"strategy": "trimmed-mean", "trim_fraction": 0.5},
            r"trim fraction must be in \[0, 0.5\)",
        ),
        ({"strategy": "trimmed-mean", "trim_fraction": -0.1}, "trim fraction must be in"),
        ({"strategy": "krum", "sites": 4, "krum_byzantine": 1}, "needs at least 5 sites"),
        ({"strategy": "krum", "krum_selected": 3}, "use multi-krum"),
        ({"update_norm_bound": -1.0}, "update-norm-bound must be >= 0"),
        ({"min_fit": 0}, "min-fit must be >= 1"),
        ({"min_fit": 6}, "min-fit is 6 but the federation has 5 sites"),
    ],
)
def test_bad_settings_are_refused_in_one_line(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        build_strategy(RunConfig(**{"sites": 5, **settings}))
    assert "\n" not in str(error.value)


def test_the_cli_refuses_a_bad_strategy_before_any_training(tmp_path, capsys) -> None:
    out = tmp_path / "runs"
    argv = ["simulate", "--sites", "3", "--out", str(out), "--no-dp"]

    assert fedlora_main([*argv, "--strategy", "fedsgd"]) == 2
    assert fedlora_main([*argv, "--strategy", "fedadam", "--server-lr", "0"]) == 2
    assert fedlora_main([*argv, "--strategy", "trimmed-mean", "--trim-fraction", "0.7"]) == 2

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fedlora: error")]
    assert len(lines) == 3 and "Traceback" not in err
    assert "unknown strategy 'fedsgd'" in lines[0] and "server learning rate" in lines[1]
    assert not out.exists() or not any(out.iterdir())  # no data generated, no run directory


def _state() -> dict[str, torch.Tensor]:
    return {"a": torch.zeros(2, 2), "b": torch.zeros(3)}


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ({"a": torch.zeros(2, 2)}, r"missing \['b'\]"),
        ({**_state(), "c": torch.zeros(1)}, r"unexpected \['c'\]"),
        ({"a": torch.zeros(2, 3), "b": torch.zeros(3)}, r"a is \(2, 3\)"),
        ({"a": torch.zeros(2, 2, dtype=torch.float64), "b": torch.zeros(3)}, "torch.float64"),
        ({"a": torch.tensor([[0.0, float("nan")], [0, 0]]), "b": torch.zeros(3)}, "a has NaN"),
        ({"a": torch.zeros(2, 2), "b": torch.tensor([0, float("inf"), 0])}, "b has NaN or inf"),
        ({"a": torch.full((2, 2), 3.0), "b": torch.zeros(3)}, "update norm 6 exceeds"),
    ],
)
def test_each_invalid_update_is_rejected_with_its_reason(update, reason) -> None:
    with pytest.raises(UpdateRejectedError, match=reason):
        validate_update(_state(), update, norm_bound=5.0)


def test_a_valid_update_returns_its_norm_and_the_bound_is_optional() -> None:
    update = {"a": torch.full((2, 2), 3.0), "b": torch.zeros(3)}

    assert validate_update(_state(), update) == pytest.approx(6.0)  # no bound: accepted
    assert issubclass(UpdateRejectedError, AdapterError)


def _node(**node_config: object):
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def test_a_sites_rank_comes_from_its_node_config_then_site_ranks() -> None:
    from fedlora.clients.site_rank import site_rank

    config = RunConfig(strategy="hetero-rank", lora_r=8, sites=2, site_ranks=("a=2",))

    assert site_rank(_node(), config, "a") == 2
    assert site_rank(_node(), config, "b") == 8
    assert site_rank(_node(**{"lora-rank": 4.0}), config, "a") == 4  # the site's own word wins


@pytest.mark.parametrize(
    ("strategy", "node_rank", "message"),
    [
        ("hetero-rank", 16.0, r"lora-rank must be an integer in \[1, lora-r = 8\], got 16"),
        ("hetero-rank", 2.5, "must be an integer"),
        ("fedavg", 4.0, "strategy 'fedavg' cannot aggregate mixed ranks"),
    ],
)
def test_bad_or_unsupported_site_ranks_are_refused(strategy, node_rank, message) -> None:
    from fedlora.clients.site_rank import site_rank

    with pytest.raises(ConfigError, match=message):
        site_rank(_node(**{"lora-rank": node_rank}), RunConfig(strategy=strategy, sites=2), "a")


def test_site_ranks_need_hetero_rank_and_fit_under_lora_r() -> None:
    with pytest.raises(ConfigError, match="cannot aggregate mixed ranks"):
        RunConfig(strategy="fedavg", site_ranks=("a=2",))
    with pytest.raises(ConfigError, match=r"rank of a must be in \[1, lora-r = 8\], got 9"):
        RunConfig(strategy="hetero-rank", site_ranks=("a=9",))
    with pytest.raises(ConfigError, match="site-ranks items must be name=rank"):
        RunConfig(strategy="hetero-rank", site_ranks=("a:2",))
