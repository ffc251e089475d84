import json
import math

import numpy as np
import pytest
import torch

from fedlora.config import RunConfig
from fedlora.errors import ConfigError, FedloraError, LedgerError
from fedlora.privacy.accounting import Release, epsilons
from fedlora.strategies import SiteUpdate, Strategy
from fedlora.strategies.central_dp import (
    SERVER_LEDGER_FILE,
    CentralDP,
    ServerPrivacyLedger,
    read_server_ledger,
)
from fedlora.strategies.fedavg import FedAvg
from fedlora.strategies.registry import wrap_with_central_dp

GLOBAL = {"lora_A": torch.tensor([1.0, -1.0]), "head": torch.tensor([[0.5, 0.0, 2.0]])}


def site_states() -> list[dict[str, torch.Tensor]]:
    """Four sites with dyadic values, so every mean below is exact in floating point."""
    return [
        {"lora_A": torch.tensor([2.0, 0.0]), "head": torch.tensor([[0.5, 1.0, 2.0]])},
        {"lora_A": torch.tensor([1.0, -3.0]), "head": torch.tensor([[0.0, 0.0, 4.0]])},
        {"lora_A": torch.tensor([0.5, -1.0]), "head": torch.tensor([[1.5, -2.0, 2.0]])},
        {"lora_A": torch.tensor([4.0, 1.0]), "head": torch.tensor([[0.5, 0.25, 0.0]])},
    ]


def as_updates(states, examples=(1, 10, 100, 1000)):
    return [
        SiteUpdate(f"site-{i}", state, num_examples=n)
        for i, (state, n) in enumerate(zip(states, examples, strict=False))
    ]


def expected_epsilons(releases, delta):
    with np.errstate(divide="ignore"):  # Opacus's PRV takes log(1 - q) at q = 1
        return epsilons(releases, delta=delta)


def flat(state):
    return torch.cat([tensor.to(torch.float64).flatten() for tensor in state.values()])


def central(mode="fixed", *, sigma=0.0, clip=1e9, sites=4, seed=0, **kwargs):
    return CentralDP(
        FedAvg(),
        mode=mode,
        noise_multiplier=sigma,
        clip_norm=clip,
        sites=sites,
        seed=seed,
        **kwargs,
    )


def test_no_noise_and_huge_clip_norm_is_the_uniform_mean():
    states = site_states()
    before = {name: tensor.clone() for name, tensor in GLOBAL.items()}
    strategy = central()
    result = strategy.aggregate(GLOBAL, as_updates(states))
    assert all(torch.equal(GLOBAL[name], before[name]) for name in GLOBAL)  # inputs untouched
    for state, original in zip(states, site_states(), strict=True):
        assert all(torch.equal(state[name], original[name]) for name in state)
    assert strategy.name == "central-dp(fedavg)"
    assert list(result) == list(GLOBAL)
    for name, reference in GLOBAL.items():
        expected = torch.stack([state[name] for state in states]).mean(dim=0)
        # Uniform, although the sites reported 1, 10, 100 and 1000 examples.
        assert torch.equal(result[name], expected)
        assert result[name].dtype == reference.dtype


def test_dtype_and_order_are_kept_for_bfloat16():
    global_state = {"b": torch.zeros(3, dtype=torch.bfloat16), "a": torch.zeros(2)}
    update = {"b": torch.ones(3, dtype=torch.bfloat16), "a": torch.ones(2)}
    result = central(sites=1).aggregate(global_state, [SiteUpdate("s", update, 5)])
    assert list(result) == ["b", "a"]
    assert result["b"].dtype == torch.bfloat16
    assert torch.equal(result["b"], update["b"])


def test_small_clip_norm_clips_each_site_before_the_mean():
    states = site_states()
    clip = 0.5
    result = central(clip=clip).aggregate(GLOBAL, as_updates(states))
    deltas = [flat(state) - flat(GLOBAL) for state in states]
    clipped = [delta * min(1.0, clip / float(delta.norm())) for delta in deltas]
    expected = torch.stack(clipped).mean(dim=0)
    assert torch.allclose(flat(result) - flat(GLOBAL), expected, rtol=0, atol=1e-6)


def test_a_huge_update_moves_the_aggregate_by_at_most_clip_over_n():
    states = site_states()
    clip, n = 0.5, 4
    huge = {name: tensor * 1e6 for name, tensor in states[0].items()}
    with_huge = central(clip=clip).aggregate(GLOBAL, as_updates([huge, *states[1:]]))
    # The same round without that site: it counts as a zero update (fixed denominator).
    without = central(clip=clip).aggregate(GLOBAL, as_updates(states[1:]))
    moved = float((flat(with_huge) - flat(without)).norm())
    assert moved <= clip / n * (1 + 1e-6)
    assert moved == pytest.approx(clip / n, rel=1e-6)  # the huge update is clipped to exactly C


def test_a_zero_update_is_accepted():
    strategy = central(clip=0.1, sites=1)
    result = strategy.aggregate(GLOBAL, [SiteUpdate("s", dict(GLOBAL), 1)])
    assert all(torch.equal(result[name], GLOBAL[name]) for name in GLOBAL)


def test_a_non_finite_update_is_refused_naming_site_and_tensor():
    bad = {"lora_A": torch.tensor([float("nan"), 0.0]), "head": torch.zeros(1, 3)}
    with pytest.raises(FloatingPointError, match=r"site s .*lora_A"):
        central(sites=1).aggregate(GLOBAL, [SiteUpdate("s", bad, 1)])


def test_noise_has_std_sigma_clip_over_n():
    sigma, clip, n, rounds, size = 1.5, 0.5, 4, 8, 12_500
    global_state = {"w": torch.zeros(size, dtype=torch.float64)}
    states = [{"w": torch.full((size,), float(i), dtype=torch.float64)} for i in range(n)]
    noiseless = central(clip=clip).aggregate(global_state, as_updates(states))["w"]
    strategy = central(sigma=sigma, clip=clip, seed=1234)
    noise = torch.cat(
        [
            strategy.aggregate(global_state, as_updates(states))["w"] - noiseless
            for _ in range(rounds)
        ]
    ).numpy()
    expected = sigma * clip / n  # compute_stdv(sigma, C, n)
    # N = 100,000 i.i.d. draws: the sample std has relative standard error 1/sqrt(2N) = 0.22 %
    # and the sample mean has standard error std/sqrt(N) = 0.32 % of std. A 1.5 % band is ~7
    # standard errors (false-failure odds < 1e-11 for a random seed; the seed is fixed anyway)
    # and still rejects every plausible mistake (C/(n-1): +33 %, C/sqrt(n): +100 %).
    assert noise.size == 100_000
    assert float(np.std(noise)) == pytest.approx(expected, rel=0.015)
    assert abs(float(np.mean(noise))) < 0.015 * expected
    assert strategy.last_round_privacy()["rounds"] == rounds


def test_the_noise_is_reproducible_with_a_seed_and_leaves_numpy_global_state_alone():
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    first = central(sigma=1.0, clip=0.5, seed=3).aggregate(GLOBAL, as_updates(site_states()))
    second = central(sigma=1.0, clip=0.5, seed=3).aggregate(GLOBAL, as_updates(site_states()))
    assert all(torch.equal(first[name], second[name]) for name in GLOBAL)
    assert np.array_equal(np.random.get_state()[1], before)
    unseeded = central(sigma=1.0, clip=0.5, seed=None)
    other = unseeded.aggregate(GLOBAL, as_updates(site_states()))
    assert not torch.equal(flat(first), flat(other))


def test_adaptive_clip_norm_moves_down_when_every_update_is_below_it():
    clip, lr, quantile = 100.0, 0.2, 0.5
    strategy = central("adaptive", clip=clip)
    strategy.aggregate(GLOBAL, as_updates(site_states()))
    # b (fraction unclipped) = 1 with sigma_b = 0 (sigma = 0).
    assert strategy.clip_norm == pytest.approx(clip * math.exp(-lr * (1.0 - quantile)))
    assert strategy.last_round_privacy()["clip-norm"] == clip  # the norm this round used
    assert strategy.last_round_privacy()["clipped-fraction"] == 0.0


def test_adaptive_clip_norm_moves_up_when_every_update_is_above_it():
    clip, lr, quantile = 1e-3, 0.2, 0.5
    strategy = central("adaptive", clip=clip)
    strategy.aggregate(GLOBAL, as_updates(site_states()))
    first = clip * math.exp(-lr * (0.0 - quantile))
    assert strategy.clip_norm == pytest.approx(first)
    assert strategy.last_round_privacy()["clipped-fraction"] == 1.0
    strategy.aggregate(GLOBAL, as_updates(site_states()))  # C is carried across rounds
    assert strategy.clip_norm == pytest.approx(first * math.exp(lr * quantile))
    assert strategy.last_round_privacy()["clip-norm"] == pytest.approx(first)


def test_adaptive_splits_the_total_noise_multiplier():
    sites, sigma = 40, 1.0
    strategy = central("adaptive", sigma=sigma, clip=0.1, sites=sites)
    count_stddev = sites / 20
    assert strategy.clipped_count_stddev == count_stddev
    assert strategy.update_noise_multiplier == pytest.approx(
        (sigma**-2 - (2 * count_stddev) ** -2) ** -0.5
    )
    assert strategy.update_noise_multiplier > sigma
    states = [site_states()[i % 4] for i in range(sites)]
    updates = [SiteUpdate(f"s{i}", state, 1) for i, state in enumerate(states)]
    strategy.aggregate(GLOBAL, updates)
    privacy = strategy.last_round_privacy()
    assert privacy["noise-multiplier"] == sigma  # accounted with the total sigma
    expected = expected_epsilons([Release(sigma, 1.0, 1)], delta=0.1 / sites)
    assert privacy["epsilon-rdp"] == expected["rdp"]


def test_last_round_privacy_keys():
    fixed = central(sigma=1.0, clip=0.5)
    fixed.aggregate(GLOBAL, as_updates(site_states()))
    privacy = fixed.last_round_privacy()
    assert set(privacy) == {
        "mode",
        "noise-multiplier",
        "clip-norm",
        "delta",
        "sample-rate",
        "rounds",
        "epsilon-prv",
        "epsilon-rdp",
    }
    assert privacy["mode"] == "fixed"
    assert privacy["sample-rate"] == 1.0
    assert privacy["delta"] == pytest.approx(0.1 / 4)  # auto: 1 / (10 sites)
    json.dumps(privacy, allow_nan=False)
    adaptive = central("adaptive", clip=0.5)
    adaptive.aggregate(GLOBAL, as_updates(site_states()))
    assert set(adaptive.last_round_privacy()) == {*privacy, "clipped-fraction"}
    # sigma = 0: no privacy, epsilon unbounded, reported as None (JSON null).
    assert adaptive.last_round_privacy()["epsilon-prv"] is None


def test_sample_rate_is_sampled_over_sites():
    strategy = central(sigma=1.0, clip=0.5, sites=8, sampled_per_round=4)
    strategy.aggregate(GLOBAL, as_updates(site_states()))
    assert strategy.last_round_privacy()["sample-rate"] == 0.5


def test_ledger_records_every_round_with_the_accountants_epsilon(tmp_path):
    path = tmp_path / "privacy" / SERVER_LEDGER_FILE
    sigma, delta = 1.0, 1e-3
    strategy = central(sigma=sigma, clip=0.5, delta=delta, ledger_path=path)
    for _ in range(3):
        strategy.aggregate(GLOBAL, as_updates(site_states()))
    assert len(path.read_text().splitlines()) == 4  # the open line + one per round
    ledger = read_server_ledger(path.parent)
    assert [entry.round for entry in ledger.entries] == [1, 2, 3]
    previous = 0.0
    for k, entry in enumerate(ledger.entries, start=1):
        expected = expected_epsilons([Release(sigma, 1.0, 1)] * k, delta=delta)
        assert entry.epsilon_prv == expected["prv"]
        assert entry.epsilon_rdp == expected["rdp"]
        assert entry.epsilon_prv > previous
        previous = entry.epsilon_prv
        assert (entry.mode, entry.noise_multiplier, entry.clip_norm) == ("fixed", sigma, 0.5)
        assert (entry.sample_rate, entry.delta, entry.updates) == (1.0, delta, 4)
        assert entry.clipped_count is None
    privacy = strategy.last_round_privacy()
    assert privacy["rounds"] == 3
    assert privacy["epsilon-prv"] == ledger.entries[-1].epsilon_prv
    assert privacy["epsilon-rdp"] == ledger.entries[-1].epsilon_rdp


def test_adaptive_ledger_records_the_noisy_clipped_count(tmp_path):
    path = tmp_path / SERVER_LEDGER_FILE
    strategy = central("adaptive", clip=1e-3, ledger_path=path)
    strategy.aggregate(GLOBAL, as_updates(site_states()))
    (entry,) = read_server_ledger(path).entries
    assert entry.clipped_count == 4.0
    assert entry.clip_norm == 1e-3
    assert entry.next_clip_norm == strategy.clip_norm


def test_a_reopened_ledger_continues_the_spend(tmp_path):
    path = tmp_path / SERVER_LEDGER_FILE
    first = central(sigma=1.0, clip=0.5, ledger_path=path)
    first.aggregate(GLOBAL, as_updates(site_states()))
    second = central(sigma=1.0, clip=0.5, ledger_path=path)
    assert second.rounds == 1
    second.aggregate(GLOBAL, as_updates(site_states()))
    assert [e.round for e in read_server_ledger(path).entries] == [1, 2]
    with pytest.raises(LedgerError, match="written for"):
        central(sigma=1.0, clip=0.5, delta=1e-4, ledger_path=path)


def test_a_tampered_ledger_line_is_named(tmp_path):
    path = tmp_path / SERVER_LEDGER_FILE
    strategy = central(sigma=1.0, clip=0.5, ledger_path=path)
    for _ in range(3):
        strategy.aggregate(GLOBAL, as_updates(site_states()))
    lines = path.read_text().splitlines()
    payload = json.loads(lines[2])
    payload["epsilon-prv"] = 0.01
    tampered = [*lines[:2], json.dumps(payload), *lines[3:]]
    path.write_text("\n".join(tampered) + "\n")
    with pytest.raises(LedgerError, match=r"line 3 was altered"):
        read_server_ledger(path)
    path.write_text("\n".join([lines[0], lines[1], lines[3]]) + "\n")  # round 2 removed
    with pytest.raises(LedgerError, match=r"line 3 was altered, removed or reordered"):
        ServerPrivacyLedger.open(path, mode="fixed", sites=4, sampled=4, delta=0.025)
    path.write_text("\n".join([*lines[:3], "{not json"]) + "\n")
    with pytest.raises(LedgerError, match=r"line 4 is corrupted"):
        read_server_ledger(path)


def test_the_ledger_attaches_only_before_the_first_round(tmp_path):
    strategy = central(sigma=1.0, clip=0.5)
    strategy.aggregate(GLOBAL, as_updates(site_states()))
    with pytest.raises(LedgerError, match="before the first round"):
        strategy.open_ledger(tmp_path / SERVER_LEDGER_FILE)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sigma": -0.1}, "central-noise-multiplier must be >= 0"),
        ({"sigma": math.nan}, "central-noise-multiplier must be >= 0"),
        ({"clip": 0.0}, "central-clip-norm must be > 0"),
        ({"clip": -1.0}, "central-clip-norm must be > 0"),
        ({"clip": math.inf}, "central-clip-norm must be > 0"),
        ({"delta": 1.0}, r"delta must be in \(0, 1\)"),
        ({"delta": -0.5}, r"delta must be in \(0, 1\)"),
        ({"sites": 0}, "at least one site"),
        ({"sampled_per_round": 5}, "sampled per round"),
        ({"mode": "off"}, "mode must be one of fixed, adaptive"),
        ({"mode": "adaptive", "sigma": 1.0}, "central-dp adaptive: .* 4 sampled sites"),
        ({"mode": "adaptive", "sigma": 1.0, "clipped_count_stddev": 0.0}, "adaptive"),
        ({"mode": "adaptive", "target_clipped_quantile": 1.5}, "quantile"),
        ({"mode": "adaptive", "clip_norm_lr": 0.0}, "learning rate"),
    ],
)
def test_bad_settings_are_config_errors(kwargs, message):
    mode = kwargs.pop("mode", "fixed")
    with pytest.raises(ConfigError, match=message) as caught:
        central(mode, **kwargs)
    assert "\n" not in str(caught.value)


def test_an_inner_strategy_that_does_not_average_is_refused():
    class Median(Strategy):
        name = "median"

        def aggregate(self, global_state, updates):
            return global_state

    with pytest.raises(ConfigError, match="averages like fedavg, got 'median'"):
        CentralDP(Median(), mode="fixed", noise_multiplier=1.0, clip_norm=0.1, sites=3)


def test_wrap_with_central_dp(tmp_path):
    inner = FedAvg()
    assert wrap_with_central_dp(inner, RunConfig(), sites=3) is inner
    config = RunConfig(
        central_dp="fixed", central_noise_multiplier=0.8, central_clip_norm=0.2, central_delta=0.01
    )
    path = tmp_path / "privacy" / SERVER_LEDGER_FILE
    wrapped = wrap_with_central_dp(inner, config, sites=3, ledger_path=path)
    assert isinstance(wrapped, CentralDP)
    assert (wrapped.mode, wrapped.noise_multiplier, wrapped.clip_norm) == ("fixed", 0.8, 0.2)
    assert (wrapped.delta, wrapped.sites, wrapped.sample_rate) == (0.01, 3, 1.0)
    assert wrapped.name == "central-dp(fedavg)"
    assert path.exists()
    with pytest.raises(ConfigError, match="central-dp adaptive"):
        wrap_with_central_dp(inner, RunConfig(central_dp="adaptive"), sites=3)


def test_the_mean_has_the_fixed_denominator_of_sampled_sites():
    states = site_states()
    strategy = central(sites=8, sampled_per_round=2)  # Poisson: more than m sites may arrive
    result = strategy.aggregate(GLOBAL, as_updates(states[:3]))
    deltas = [flat(state) - flat(GLOBAL) for state in states[:3]]
    expected = torch.stack(deltas).sum(dim=0) / 2
    assert torch.allclose(flat(result) - flat(GLOBAL), expected, rtol=0, atol=1e-6)


def test_a_site_may_contribute_only_once_per_round():
    states = site_states()
    updates = [SiteUpdate("a", states[0], 1), SiteUpdate("a", states[1], 1)]
    with pytest.raises(FedloraError, match="at most once per round"):
        central().aggregate(GLOBAL, updates)
