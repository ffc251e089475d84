import pytest
import torch

from fedlora.errors import AdapterError, ConfigError
from fedlora.strategies import SiteUpdate, get_strategy, strategy_names
from fedlora.strategies.fedavg import FedAvg


def test_fedavg_is_the_example_weighted_mean():
    global_state = {"lora_A": torch.zeros(2), "head": torch.zeros(1, 2)}
    updates = [
        SiteUpdate(
            "a",
            {"lora_A": torch.tensor([1.0, 2.0]), "head": torch.tensor([[0.0, 4.0]])},
            num_examples=1,
        ),
        SiteUpdate(
            "b",
            {"lora_A": torch.tensor([5.0, 6.0]), "head": torch.tensor([[8.0, 0.0]])},
            num_examples=3,
        ),
    ]
    result = FedAvg().aggregate(global_state, updates)
    # (1*1 + 3*5)/4 = 4, (1*2 + 3*6)/4 = 5; head: (0 + 24)/4 = 6, (4 + 0)/4 = 1
    assert torch.equal(result["lora_A"], torch.tensor([4.0, 5.0]))
    assert torch.equal(result["head"], torch.tensor([[6.0, 1.0]]))


def test_fedavg_is_not_the_unweighted_mean():
    updates = [
        SiteUpdate("a", {"w": torch.tensor([0.0])}, 9),
        SiteUpdate("b", {"w": torch.tensor([10.0])}, 1),
    ]
    assert FedAvg().aggregate({"w": torch.zeros(1)}, updates)["w"].item() == pytest.approx(1.0)


def test_fedavg_keeps_dtype():
    updates = [SiteUpdate("a", {"w": torch.ones(2, dtype=torch.bfloat16)}, 1)]
    assert (
        FedAvg().aggregate({"w": torch.zeros(2, dtype=torch.bfloat16)}, updates)["w"].dtype
        == torch.bfloat16
    )


def test_fedavg_refuses_a_non_finite_aggregate():
    updates = [SiteUpdate("a", {"w": torch.tensor([float("nan")])}, 1)]
    with pytest.raises(FloatingPointError, match="w"):
        FedAvg().aggregate({"w": torch.zeros(1)}, updates)


def test_fedavg_refuses_zero_examples():
    with pytest.raises(AdapterError, match="no training examples"):
        FedAvg().aggregate({"w": torch.zeros(1)}, [SiteUpdate("a", {"w": torch.ones(1)}, 0)])


def test_unknown_strategy_lists_valid_names():
    valid = "fedadam, fedavg, fedavgm, fedprox, fedyogi, ffa-lora, hetero-rank, krum, median, "
    with pytest.raises(ConfigError, match=f"unknown strategy 'fedsgd'; valid: {valid}"):
        get_strategy("fedsgd")
    assert "fedavg" in strategy_names()
