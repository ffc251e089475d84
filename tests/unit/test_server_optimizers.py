from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch

from fedlora.errors import AdapterError, ConfigError
from fedlora.strategies.base import SiteUpdate
from fedlora.strategies.fedadam import FedAdam
from fedlora.strategies.fedavg import FedAvg
from fedlora.strategies.fedavgm import FedAvgM
from fedlora.strategies.fedopt import ServerOptimizer
from fedlora.strategies.fedyogi import FedYogi

A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.score.bias"

# Hand-sized adapter: A is (2, 2), B is (3,). Values are listed flat, in row-major order.
X0 = {A: [0.5, -1.0, 2.0, 0.0], B: [1.0, -2.0, 0.25]}
# Each round: two sites with 1 and 3 examples (weights 1/4 and 3/4).
ROUND1 = [
    (1, {A: [1.0, 0.0, 2.0, 4.0], B: [0.0, 0.0, 1.0]}),
    (3, {A: [0.5, -2.0, 3.0, 0.0], B: [2.0, -2.0, 0.25]}),
]
ROUND2 = [
    (1, {A: [0.9, -0.7, 2.4, 1.2], B: [-1.0, 3.0, 0.0]}),
    (3, {A: [0.4, -1.1, 2.1, 0.6], B: [1.5, -1.0, 0.75]}),
]
SHAPES = {A: (2, 2), B: (3,)}


def tensors(flat: dict[str, list[float]], dtype: torch.dtype = torch.float64):
    return {
        name: torch.tensor(values, dtype=dtype).reshape(SHAPES[name])
        for name, values in flat.items()
    }


def updates(round_: list[tuple[int, dict[str, list[float]]]], dtype=torch.float64):
    return [
        SiteUpdate(f"site-{i}", tensors(state, dtype), n) for i, (n, state) in enumerate(round_)
    ]


def hand_delta(x: dict[str, list[float]], round_) -> dict[str, list[float]]:
    """Example-weighted mean minus x, element by element in plain Python."""
    total = sum(n for n, _ in round_)
    return {
        name: [
            sum(n * state[name][k] for n, state in round_) / total - x[name][k]
            for k in range(len(x[name]))
        ]
        for name in x
    }


def flat(state) -> dict[str, list[float]]:
    return {name: tensor.flatten().tolist() for name, tensor in state.items()}


def assert_close(actual: dict[str, list[float]], expected: dict[str, list[float]]) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name] == pytest.approx(expected[name], rel=1e-12, abs=1e-15), name


def sign(value: float) -> float:
    return (value > 0) - (value < 0)


# ---- FedAdam ---------------------------------------------------------------------------------


def test_fedadam_first_and_second_step_match_the_formulas_by_hand():
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    opt = FedAdam(server_lr=lr, beta1=b1, beta2=b2, tau=tau)

    d1 = hand_delta(X0, ROUND1)
    m1 = {n: [(1 - b1) * d for d in d1[n]] for n in d1}
    v1 = {n: [(1 - b2) * d * d for d in d1[n]] for n in d1}
    # Flower's bias-corrected eta_norm uses exponent server_round + 1 (server_round = 1 here).
    eta1 = lr * math.sqrt(1 - b2**2) / (1 - b1**2)
    x1 = {
        n: [X0[n][k] + eta1 * m1[n][k] / (math.sqrt(v1[n][k]) + tau) for k in range(len(X0[n]))]
        for n in X0
    }
    result1 = opt.aggregate(tensors(X0), updates(ROUND1))
    assert_close(flat(result1), x1)
    assert opt.step == 1

    d2 = hand_delta(x1, ROUND2)
    m2 = {n: [b1 * m1[n][k] + (1 - b1) * d2[n][k] for k in range(len(d2[n]))] for n in d2}
    v2 = {n: [b2 * v1[n][k] + (1 - b2) * d2[n][k] ** 2 for k in range(len(d2[n]))] for n in d2}
    eta2 = lr * math.sqrt(1 - b2**3) / (1 - b1**3)
    x2 = {
        n: [x1[n][k] + eta2 * m2[n][k] / (math.sqrt(v2[n][k]) + tau) for k in range(len(x1[n]))]
        for n in x1
    }
    result2 = opt.aggregate(result1, updates(ROUND2))
    assert_close(flat(result2), x2)
    assert opt.step == 2
    assert_close(flat(opt.state_dict()["moments"]["m"]), m2)
    assert_close(flat(opt.state_dict()["moments"]["v"]), v2)


def test_fedadam_defaults_and_name():
    opt = FedAdam()
    assert opt.name == "fedadam"
    assert opt.hyperparameters() == {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-9}


# ---- FedYogi ---------------------------------------------------------------------------------


def test_fedyogi_first_and_second_step_match_the_formulas_by_hand():
    # beta2 = 0.5 makes both signs of (v - delta^2) occur in the second round.
    lr, b1, b2, tau = 0.05, 0.8, 0.5, 1e-3
    opt = FedYogi(server_lr=lr, beta1=b1, beta2=b2, tau=tau)

    d1 = hand_delta(X0, ROUND1)
    m1 = {n: [(1 - b1) * d for d in d1[n]] for n in d1}
    v1 = {n: [0.0 - (1 - b2) * d * d * sign(0.0 - d * d) for d in d1[n]] for n in d1}
    x1 = {
        n: [X0[n][k] + lr * m1[n][k] / (math.sqrt(v1[n][k]) + tau) for k in range(len(X0[n]))]
        for n in X0
    }
    result1 = opt.aggregate(tensors(X0), updates(ROUND1))
    assert_close(flat(result1), x1)

    d2 = hand_delta(x1, ROUND2)
    signs = {sign(v1[n][k] - d2[n][k] ** 2) for n in d2 for k in range(len(d2[n]))}
    assert {-1, 1} <= signs
    m2 = {n: [b1 * m1[n][k] + (1 - b1) * d2[n][k] for k in range(len(d2[n]))] for n in d2}
    v2 = {
        n: [
            v1[n][k] - (1 - b2) * d2[n][k] ** 2 * sign(v1[n][k] - d2[n][k] ** 2)
            for k in range(len(d2[n]))
        ]
        for n in d2
    }
    x2 = {
        n: [x1[n][k] + lr * m2[n][k] / (math.sqrt(v2[n][k]) + tau) for k in range(len(x1[n]))]
        for n in x1
    }
    result2 = opt.aggregate(result1, updates(ROUND2))
    assert_close(flat(result2), x2)
    assert_close(flat(opt.state_dict()["moments"]["v"]), v2)


def test_fedyogi_name_and_defaults():
    opt = FedYogi()
    assert opt.name == "fedyogi"
    assert opt.hyperparameters() == {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-9}


# ---- FedAvgM ---------------------------------------------------------------------------------


def random_rounds(count: int, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(7)
    return [
        [
            SiteUpdate(
                site,
                {
                    A: torch.randn(2, 2, generator=generator, dtype=dtype),
                    B: torch.randn(3, generator=generator, dtype=dtype),
                },
                n,
            )
            for site, n in (("a", 3), ("b", 7), ("c", 1))
        ]
        for _ in range(count)
    ]


def test_fedavgm_without_momentum_and_unit_lr_is_fedavg_bit_for_bit():
    opt, fedavg = FedAvgM(server_lr=1.0, momentum=0.0), FedAvg()
    x = {A: torch.full((2, 2), 0.1), B: torch.full((3,), -0.3)}
    for round_ in random_rounds(3):
        expected = fedavg.aggregate(x, round_)
        x = opt.aggregate(x, round_)
        for name in expected:
            assert x[name].dtype == torch.float32
            assert torch.equal(x[name], expected[name])


def test_fedavgm_second_step_includes_momentum():
    lr, mu = 0.5, 0.9
    opt = FedAvgM(server_lr=lr, momentum=mu)
    d1 = hand_delta(X0, ROUND1)
    x1 = {n: [X0[n][k] + lr * d1[n][k] for k in range(len(X0[n]))] for n in X0}
    result1 = opt.aggregate(tensors(X0), updates(ROUND1))
    assert_close(flat(result1), x1)

    d2 = hand_delta(x1, ROUND2)
    u2 = {n: [mu * d1[n][k] + d2[n][k] for k in range(len(d2[n]))] for n in d2}
    x2 = {n: [x1[n][k] + lr * u2[n][k] for k in range(len(x1[n]))] for n in x1}
    result2 = opt.aggregate(result1, updates(ROUND2))
    assert_close(flat(result2), x2)
    # Without momentum the second step would differ.
    without = {n: [x1[n][k] + lr * d2[n][k] for k in range(len(x1[n]))] for n in x1}
    assert flat(result2)[A] != pytest.approx(without[A], rel=1e-6)


def test_fedavgm_name_and_defaults():
    opt = FedAvgM()
    assert opt.name == "fedavgm"
    assert opt.hyperparameters() == {"server_lr": 1.0, "momentum": 0.9}


# ---- dtypes, validation of updates, failed rounds --------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAvgM])
def test_results_keep_each_global_tensor_dtype(cls, dtype):
    global_state = tensors(X0, dtype)
    global_state[B] = global_state[B].to(torch.float64)
    result = cls().aggregate(global_state, updates(ROUND1, dtype))
    assert {name: t.dtype for name, t in result.items()} == {A: dtype, B: torch.float64}
    assert {name: t.shape for name, t in result.items()} == {A: (2, 2), B: (3,)}


@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAvgM])
def test_an_update_missing_a_global_tensor_is_refused(cls):
    round_ = updates(ROUND1)
    del round_[1].state[B]
    with pytest.raises(AdapterError, match=f"site-1 lacks 1 adapter tensor.*{re.escape(B)}"):
        cls().aggregate(tensors(X0), round_)


def test_an_update_with_an_extra_or_misshapen_tensor_is_refused():
    round_ = updates(ROUND1)
    round_[0].state["extra"] = torch.zeros(1)
    with pytest.raises(AdapterError, match="unexpected tensor"):
        FedAdam().aggregate(tensors(X0), round_)
    round_ = updates(ROUND1)
    round_[0].state[B] = torch.zeros(4)
    with pytest.raises(AdapterError, match=r"has shape \(4,\), expected \(3,\)"):
        FedAdam().aggregate(tensors(X0), round_)


def test_a_non_finite_round_leaves_the_state_unchanged():
    opt = FedYogi()
    x1 = opt.aggregate(tensors(X0), updates(ROUND1))
    before = opt.state_dict()
    bad = updates(ROUND2)
    bad[0].state[A][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=re.escape(A)):
        opt.aggregate(x1, bad)
    after = opt.state_dict()
    assert after["step"] == before["step"] == 1
    for slot in ("m", "v"):
        for name in before["moments"][slot]:
            assert torch.equal(after["moments"][slot][name], before["moments"][slot][name])


# ---- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (FedAdam, {"server_lr": 0.0}, "server learning rate must be > 0, got 0.0"),
        (FedAdam, {"server_lr": -0.5}, "server learning rate must be > 0, got -0.5"),
        (FedAdam, {"server_lr": math.nan}, "server learning rate must be > 0, got nan"),
        (FedAdam, {"server_lr": math.inf}, "server learning rate must be > 0, got inf"),
        (FedAdam, {"beta1": 1.0}, "beta1 must be in [0, 1), got 1.0"),
        (FedAdam, {"beta1": -0.1}, "beta1 must be in [0, 1), got -0.1"),
        (FedAdam, {"beta2": 1.0}, "beta2 must be in [0, 1), got 1.0"),
        (FedAdam, {"beta2": math.nan}, "beta2 must be in [0, 1), got nan"),
        (FedAdam, {"tau": 0.0}, "tau must be > 0, got 0.0"),
        (FedAdam, {"tau": -1e-9}, "tau must be > 0, got -1e-09"),
        (FedYogi, {"server_lr": 0.0}, "server learning rate must be > 0, got 0.0"),
        (FedYogi, {"beta1": 1.5}, "beta1 must be in [0, 1), got 1.5"),
        (FedYogi, {"beta2": -0.01}, "beta2 must be in [0, 1), got -0.01"),
        (FedYogi, {"tau": 0.0}, "tau must be > 0, got 0.0"),
        (FedAvgM, {"server_lr": 0.0}, "server learning rate must be > 0, got 0.0"),
        (FedAvgM, {"server_lr": -1.0}, "server learning rate must be > 0, got -1.0"),
        (FedAvgM, {"momentum": 1.0}, "momentum must be in [0, 1), got 1.0"),
        (FedAvgM, {"momentum": -0.5}, "momentum must be in [0, 1), got -0.5"),
    ],
)
def test_bad_settings_raise_config_error(cls, kwargs, message):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert str(info.value) == message


# ---- state across rounds and files -----------------------------------------------------------


MAKERS: dict[str, Callable[[], ServerOptimizer]] = {
    "fedadam": lambda: FedAdam(server_lr=0.1, tau=1e-3),
    "fedyogi": lambda: FedYogi(server_lr=0.1, tau=1e-3),
    "fedavgm": lambda: FedAvgM(server_lr=0.8, momentum=0.7),
}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_continuing_after_save_and_load_is_bit_identical(kind, tmp_path: Path):
    rounds = random_rounds(4)
    x = {A: torch.zeros(2, 2), B: torch.zeros(3)}
    original = MAKERS[kind]()
    for round_ in rounds[:2]:
        x = original.aggregate(x, round_)
    path = tmp_path / "opt" / "state.safetensors"
    original.save_state(path)

    resumed = MAKERS[kind]()
    resumed.load_state(path, reference=x)
    assert resumed.step == 2
    x_original, x_resumed = x, x
    for round_ in rounds[2:]:
        x_original = original.aggregate(x_original, round_)
        x_resumed = resumed.aggregate(x_resumed, round_)
        for name in x_original:
            assert torch.equal(x_original[name], x_resumed[name])
    state, other = original.state_dict(), resumed.state_dict()
    assert state["step"] == other["step"] == 4
    for slot, by_name in state["moments"].items():
        for name, tensor in by_name.items():
            assert torch.equal(tensor, other["moments"][slot][name])


def test_state_dict_round_trip_and_copies():
    opt = FedAdam()
    x = opt.aggregate(tensors(X0), updates(ROUND1))
    state = opt.state_dict()
    assert state["kind"] == "FedAdam"
    assert state["step"] == 1
    other = FedAdam()
    other.load_state_dict(state, reference=x)
    state["moments"]["m"][A].fill_(99.0)  # the loaded state must not alias the dict
    r1 = opt.aggregate(x, updates(ROUND2))
    r2 = other.aggregate(x, updates(ROUND2))
    assert all(torch.equal(r1[n], r2[n]) for n in r1)


def test_a_fresh_optimiser_state_saves_and_loads(tmp_path: Path):
    path = tmp_path / "fresh.safetensors"
    FedAvgM().save_state(path)
    opt = FedAvgM()
    opt.load_state(path, reference=tensors(X0))
    assert opt.step == 0
    assert isinstance(opt, ServerOptimizer)


@pytest.fixture
def saved_fedadam(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    opt = FedAdam()
    x = opt.aggregate(tensors(X0), updates(ROUND1))
    path = tmp_path / "fedadam.safetensors"
    opt.save_state(path)
    return path, x


def test_a_fedyogi_state_is_refused_by_fedadam(tmp_path: Path):
    yogi = FedYogi()
    x = yogi.aggregate(tensors(X0), updates(ROUND1))
    path = tmp_path / "yogi.safetensors"
    yogi.save_state(path)
    adam = FedAdam()
    with pytest.raises(ConfigError, match="is from FedYogi, not FedAdam"):
        adam.load_state(path, reference=x)
    assert adam.step == 0
    with pytest.raises(ConfigError, match="is from FedYogi, not FedAdam"):
        adam.load_state_dict(yogi.state_dict())


def test_a_state_with_other_hyperparameters_is_refused(saved_fedadam):
    path, _ = saved_fedadam
    with pytest.raises(ConfigError, match="hyper-parameters"):
        FedAdam(beta2=0.999).load_state(path)


@pytest.mark.parametrize("cut", [1, 20, 200])
def test_a_truncated_state_file_is_refused(saved_fedadam, cut):
    path, _ = saved_fedadam
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut])
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        FedAdam().load_state(path)


def test_a_corrupt_state_file_is_refused(saved_fedadam):
    path, _ = saved_fedadam
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's bytes: still a valid safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="checksum does not match"):
        FedAdam().load_state(path)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        FedAdam().load_state(path)


def test_a_foreign_or_missing_state_file_is_refused(tmp_path: Path):
    path = tmp_path / "plain.safetensors"
    path.write_bytes(safetensors.torch.save({"m/x": torch.zeros(1, dtype=torch.float64)}))
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        FedAdam().load_state(path)
    with pytest.raises(ConfigError, match="cannot read"):
        FedAdam().load_state(tmp_path / "absent.safetensors")


def test_a_state_for_another_adapter_is_refused(saved_fedadam):
    path, x = saved_fedadam
    other_names = {A: x[A], "other.bias": x[B]}
    opt = FedAdam()
    with pytest.raises(AdapterError, match="does not match the global adapter"):
        opt.load_state(path, reference=other_names)
    assert opt.step == 0
    other_shape = {A: x[A], B: torch.zeros(4)}
    with pytest.raises(AdapterError, match=r"shape \(3,\) there, \(4,\) in the adapter"):
        opt.load_state(path, reference=other_shape)
    # Loaded without a reference, the mismatch is caught when aggregating.
    opt.load_state(path)
    round_ = [SiteUpdate("a", {A: x[A], "other.bias": x[B]}, 1)]
    with pytest.raises(AdapterError, match="does not match the global adapter"):
        opt.aggregate(other_names, round_)
