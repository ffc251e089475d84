from __future__ import annotations

import pytest
import torch

from fedlora.errors import AdapterError, ConfigError
from fedlora.strategies.base import SiteUpdate, Strategy
from fedlora.strategies.fedavg import FedAvg
from fedlora.strategies.krum import Krum
from fedlora.strategies.median import CoordinateMedian
from fedlora.strategies.trimmed_mean import TrimmedMean

GLOBAL = {"w": torch.zeros(2), "m": torch.zeros(2, 2)}


def site(name: str, w: list[float], m: list[list[float]], examples: int = 1) -> SiteUpdate:
    state = {"w": torch.tensor(w, dtype=torch.float32), "m": torch.tensor(m, dtype=torch.float32)}
    return SiteUpdate(name, state, examples)


def assert_state(result: dict[str, torch.Tensor], w: list[float], m: list[list[float]]) -> None:
    assert torch.allclose(result["w"], torch.tensor(w, dtype=torch.float32))
    assert torch.allclose(result["m"], torch.tensor(m, dtype=torch.float32))


THREE = [
    site("a", [1, 5], [[0, 1], [2, 3]]),
    site("b", [2, 4], [[4, 1], [0, 3]], examples=50),
    site("c", [9, -1], [[1, 7], [2, -3]]),
]

# Five sites; per coordinate the sorted values and their 1-trimmed mean (beta = 0.2, k = 1):
# w[0]: 1 2 3 4 100 -> 3;  w[1]: -50 0 1 2 6 -> 1;  m[0,0]: -9 1 2 3 4 -> 2;
# m[0,1]: 0 1 2 3 5 -> 2;  m[1,0]: 0 1 1 2 3 -> 4/3;  m[1,1]: 1 1 2 4 8 -> 7/3.
FIVE = [
    site("s1", [1, 0], [[1, 1], [1, 1]], examples=3),
    site("s2", [2, 6], [[2, 0], [3, 1]]),
    site("s3", [3, 2], [[3, 5], [2, 2]], examples=7),
    site("s4", [4, 1], [[4, 2], [0, 8]]),
    site("s5", [100, -50], [[-9, 3], [1, 4]], examples=2),
]


def test_names():
    assert CoordinateMedian().name == "median"
    assert TrimmedMean().name == "trimmed-mean"
    assert Krum().name == "krum"
    assert Krum(byzantine=1, multi=2).name == "multi-krum"


def test_median_odd_site_count_is_the_middle_value_unweighted():
    # w: [1,2,9] -> 2, [-1,4,5] -> 4; m: [0,1,4] -> 1, [1,1,7] -> 1, [0,2,2] -> 2, [-3,3,3] -> 3.
    # Site b's 50 examples change nothing: the median is unweighted.
    result = CoordinateMedian().aggregate(GLOBAL, THREE)
    assert_state(result, [2, 4], [[1, 1], [2, 3]])


def test_median_even_site_count_is_the_mean_of_the_two_middle_values():
    updates = [*THREE, site("d", [3, 0], [[2, 2], [5, 5]])]
    # w: 1 2|3 9 -> 2.5, -1 0|4 5 -> 2; m: 0 1|2 4 -> 1.5, 1 1|2 7 -> 1.5,
    # 0 2|2 5 -> 2, -3 3|3 5 -> 3.
    result = CoordinateMedian().aggregate(GLOBAL, updates)
    assert_state(result, [2.5, 2], [[1.5, 1.5], [2, 3]])


def test_trimmed_mean_drops_the_extremes_per_coordinate():
    result = TrimmedMean(trim_fraction=0.2).aggregate(GLOBAL, FIVE)
    assert_state(result, [3, 1], [[2, 2], [4 / 3, 7 / 3]])


def test_trimmed_mean_cuts_floor_of_beta_n_per_side():
    # 0.25 * 4 = 1 per side: w[0] 1 2 3 9 -> (2+3)/2; w[1] -1 0 4 5 -> (0+4)/2.
    updates = [*THREE, site("d", [3, 0], [[2, 2], [5, 5]])]
    result = TrimmedMean(trim_fraction=0.25).aggregate(GLOBAL, updates)
    assert_state(result, [2.5, 2], [[1.5, 1.5], [2, 3]])


@pytest.mark.parametrize("beta", [0.0, 0.19])  # floor(0.19 * 5) = 0: nothing is trimmed
def test_trimmed_mean_without_trimming_is_the_unweighted_mean(beta):
    result = TrimmedMean(trim_fraction=beta).aggregate(GLOBAL, FIVE)
    # w[0]: 110/5; w[1]: -41/5; m: 1/5, 11/5, 7/5, 16/5.
    assert_state(result, [22, -8.2], [[0.2, 2.2], [1.4, 3.2]])
    unweighted = [SiteUpdate(u.site, u.state, 1) for u in FIVE]
    expected = FedAvg().aggregate(GLOBAL, unweighted)
    for name in GLOBAL:
        assert torch.allclose(result[name], expected[name])


def test_trimmed_mean_refuses_when_no_value_is_left():
    with pytest.raises(AdapterError, match="leaves no value"):
        TrimmedMean(0.4).aggregate(GLOBAL, [])


HONEST = [
    site("h1", [1.0, 1.0], [[1.0, 1.0], [1.0, 1.0]]),
    site("h2", [1.1, 0.9], [[0.9, 1.1], [1.0, 1.0]]),
    site("h3", [0.9, 1.1], [[1.0, 0.9], [1.1, 1.0]]),
    site("h4", [1.0, 1.2], [[1.1, 1.0], [0.9, 0.9]]),
]
OUTLIER = site("evil", [1000.0, -1000.0], [[1000.0, -1000.0], [1000.0, 1000.0]], examples=100)


@pytest.mark.parametrize(
    "strategy",
    [CoordinateMedian(), TrimmedMean(trim_fraction=0.2), Krum(byzantine=1), Krum(1, multi=3)],
    ids=["median", "trimmed-mean", "krum", "multi-krum"],
)
def test_one_outlier_moves_fedavg_but_not_the_robust_rules(strategy):
    updates = [*HONEST, OUTLIER]
    fedavg = FedAvg().aggregate(GLOBAL, updates)
    assert (fedavg["w"] - 1).abs().max() > 100
    result = strategy.aggregate(GLOBAL, updates)
    for name in GLOBAL:
        honest = torch.stack([u.state[name] for u in HONEST])
        assert bool((result[name] >= honest.min(0).values - 1e-6).all())
        assert bool((result[name] <= honest.max(0).values + 1e-6).all())


# Five sites as vectors (w0, w1, m00, m01, m10, m11); squared distances over all six:
#   a=(0,0,0,0,0,0) b=(1,0,0,0,0,0) c=(0,0,0,1,0,0) d=(0,2,0,0,0,0) e=(10,0,0,0,0,10)
#   a-b 1, a-c 1, a-d 4, a-e 200, b-c 2, b-d 5, b-e 181, c-d 5, c-e 201, d-e 204.
# f = 1, so each score sums the n - f - 2 = 2 nearest others:
#   a: 1+1 = 2, b: 1+2 = 3, c: 1+2 = 3 (the m01 coordinate counts), d: 4+5 = 9, e: 181+200 = 381.
KRUM_SITES = [
    site("a", [0, 0], [[0, 0], [0, 0]], examples=2),
    site("b", [1, 0], [[0, 0], [0, 0]], examples=1),
    site("c", [0, 0], [[0, 1], [0, 0]], examples=1),
    site("d", [0, 2], [[0, 0], [0, 0]], examples=1),
    site("e", [10, 0], [[0, 0], [0, 10]], examples=1000),
]


def test_krum_picks_the_lowest_score():
    krum = Krum(byzantine=1)
    result = krum.aggregate(GLOBAL, KRUM_SITES)
    assert krum.last_scores == pytest.approx([2, 3, 3, 9, 381])
    assert krum.last_selected == ["a"]
    assert_state(result, [0, 0], [[0, 0], [0, 0]])


def test_multi_krum_is_the_example_weighted_mean_of_the_m_best():
    krum = Krum(byzantine=1, multi=3)
    result = krum.aggregate(GLOBAL, KRUM_SITES)
    assert sorted(krum.last_selected) == ["a", "b", "c"]
    # Weights a:2, b:1, c:1 of 4 (e's 1000 examples do not help it get selected):
    # w0 = (2*0 + 1*1 + 1*0)/4, m01 = (2*0 + 1*0 + 1*1)/4.
    assert_state(result, [0.25, 0], [[0, 0.25], [0, 0]])


def test_krum_without_byzantine_uses_one_neighbour():
    # f = 0, n = 3: one neighbour each; a-b 1, a-c 64, b-c 49 -> a: 1, b: 1, c: 49. Tie -> first.
    updates = [
        site("a", [0, 0], [[0, 0], [0, 0]]),
        site("b", [1, 0], [[0, 0], [0, 0]]),
        site("c", [8, 0], [[0, 0], [0, 0]]),
    ]
    krum = Krum()
    result = krum.aggregate(GLOBAL, updates)
    assert krum.last_scores == pytest.approx([1, 1, 49])
    assert krum.last_selected == ["a"]
    assert_state(result, [0, 0], [[0, 0], [0, 0]])


def test_krum_does_not_select_a_non_finite_update():
    updates = [*HONEST, site("nan", [float("nan"), 0], [[0, 0], [0, 0]])]
    krum = Krum(byzantine=1, multi=4)
    result = krum.aggregate(GLOBAL, updates)
    assert "nan" not in krum.last_selected
    assert bool(torch.isfinite(result["w"]).all())


def test_krum_needs_two_f_plus_three_updates():
    with pytest.raises(AdapterError, match=r"at least 2f \+ 3 = 5 updates, got 4"):
        Krum(byzantine=1).aggregate(GLOBAL, KRUM_SITES[:4])
    with pytest.raises(AdapterError, match="at least 2f"):
        Krum().aggregate(GLOBAL, KRUM_SITES[:2])


def test_multi_krum_cannot_select_more_than_it_has():
    with pytest.raises(AdapterError, match="cannot select 4 of 3 updates"):
        Krum(multi=4).aggregate(GLOBAL, KRUM_SITES[:3])


def test_multi_krum_refuses_selected_updates_without_examples():
    updates = [SiteUpdate(u.site, u.state, 0) for u in KRUM_SITES]
    with pytest.raises(AdapterError, match="no training examples"):
        Krum(byzantine=1, multi=2).aggregate(GLOBAL, updates)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrimmedMean(-0.1), r"trim fraction must be in \[0, 0.5\), got -0.1"),
        (lambda: TrimmedMean(0.5), r"trim fraction must be in \[0, 0.5\), got 0.5"),
        (lambda: Krum(byzantine=-1), "byzantine count must be an integer >= 0, got -1"),
        (lambda: Krum(multi=0), r"multi \(updates to select\) must be an integer >= 1, got 0"),
        (lambda: Krum(multi=1.5), "must be an integer >= 1, got 1.5"),
    ],
)
def test_bad_settings_raise_config_error(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


ROBUST: list[Strategy] = [CoordinateMedian(), TrimmedMean(), Krum()]
IDS = ["median", "trimmed-mean", "krum"]


@pytest.mark.parametrize("strategy", ROBUST, ids=IDS)
def test_missing_or_misshaped_tensor_is_refused(strategy):
    missing = [*THREE[:2], SiteUpdate("c", {"w": torch.zeros(2)}, 1)]
    with pytest.raises(AdapterError, match=r"site c: .*missing \['m'\]"):
        strategy.aggregate(GLOBAL, missing)
    misshaped = [*THREE[:2], SiteUpdate("c", {"w": torch.zeros(3), "m": torch.zeros(2, 2)}, 1)]
    with pytest.raises(AdapterError, match=r"site c: adapter tensor w is \(3,\)"):
        strategy.aggregate(GLOBAL, misshaped)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("strategy", [*ROBUST, Krum(multi=2)], ids=[*IDS, "multi-krum"])
def test_dtype_is_preserved(strategy, dtype):
    global_state = {name: tensor.to(dtype) for name, tensor in GLOBAL.items()}
    updates = [
        SiteUpdate(u.site, {name: t.to(dtype) for name, t in u.state.items()}, 1) for u in THREE
    ]
    result = strategy.aggregate(global_state, updates)
    assert list(result) == list(global_state)
    for name, tensor in result.items():
        assert tensor.dtype == dtype
        assert tensor.shape == global_state[name].shape


def test_median_of_bfloat16_is_exact_for_odd_counts():
    global_state = {"w": torch.zeros(2, dtype=torch.bfloat16)}
    updates = [
        SiteUpdate(name, {"w": torch.tensor(values, dtype=torch.bfloat16)}, 1)
        for name, values in [("a", [1.5, -2.0]), ("b", [0.25, 3.0]), ("c", [7.0, 0.5])]
    ]
    result = CoordinateMedian().aggregate(global_state, updates)
    assert torch.equal(result["w"], torch.tensor([1.5, 0.5], dtype=torch.bfloat16))
