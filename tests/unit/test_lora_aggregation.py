import math

import pytest
import torch

from fedlora.errors import AdapterError, ConfigError
from fedlora.lora_factors import is_lora_a, lora_modules, lora_scaling, other_names
from fedlora.strategies.base import SiteUpdate
from fedlora.strategies.ffa_lora import FfaLora, frozen_names, trained_names, trained_state
from fedlora.strategies.hetero_rank import HeteroRank, factor_product, truncate

F64 = torch.float64
QA, QB = "m.q.lora_A.weight", "m.q.lora_B.weight"
HEAD = "m.score.weight"

# One module, d_out = 3, d_in = 4. Site "a" trains rank 1 on 1 example, site "b" rank 2 on 3.
B_A = torch.tensor([[1.0], [2.0], [-1.0]], dtype=F64)
A_A = torch.tensor([[1.0, 0.0, 2.0, -1.0]], dtype=F64)
B_B = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64)
A_B = torch.tensor([[0.0, 1.0, -1.0, 2.0], [3.0, 0.0, 1.0, 0.0]], dtype=F64)
HEAD_A = torch.tensor([[4.0, 0.0, 8.0], [0.0, 4.0, 0.0]], dtype=F64)
HEAD_B = torch.tensor([[0.0, 8.0, 4.0], [4.0, 0.0, 8.0]], dtype=F64)
# Example weights 1/4 and 3/4.
HEAD_MEAN = 0.25 * HEAD_A + 0.75 * HEAD_B
# lora_alpha = 4: s_a = 4 / 1, s_b = 4 / 2.
DELTA_W = 0.25 * 4.0 * B_A @ A_A + 0.75 * 2.0 * B_B @ A_B


def _hetero_updates() -> list[SiteUpdate]:
    return [
        SiteUpdate("a", {QA: A_A, QB: B_A, HEAD: HEAD_A}, num_examples=1),
        SiteUpdate("b", {QA: A_B, QB: B_B, HEAD: HEAD_B}, num_examples=3),
    ]


def _global(rank: int) -> dict[str, torch.Tensor]:
    return {
        QA: torch.ones(rank, 4, dtype=F64),
        QB: torch.zeros(3, rank, dtype=F64),
        HEAD: torch.zeros(2, 3, dtype=F64),
    }


# --- lora_factors -----------------------------------------------------------------------


def test_lora_modules_pairs_factors_and_leaves_other_tensors():
    state = {
        "x.k.lora_A.weight": torch.zeros(2, 4),
        "x.k.lora_B.weight": torch.zeros(3, 2),
        **_global(1),
        "x.head.modules_to_save.lora_A.weight": torch.zeros(1),
    }
    assert lora_modules(state) == {
        "m.q": (QA, QB),
        "x.k": ("x.k.lora_A.weight", "x.k.lora_B.weight"),
    }
    assert other_names(state) == [HEAD, "x.head.modules_to_save.lora_A.weight"]
    assert not is_lora_a("x.head.modules_to_save.lora_A.weight")


def test_lora_modules_refuses_an_unpaired_factor():
    with pytest.raises(AdapterError, match=r"lora_A without lora_B at \['m.q'\]"):
        lora_modules({QA: torch.zeros(1, 4)})
    with pytest.raises(AdapterError, match=r"lora_B without lora_A at \['m.q'\]"):
        lora_modules({QB: torch.zeros(3, 1)})


def test_lora_modules_refuses_mismatched_ranks():
    with pytest.raises(AdapterError, match=r"m.q: lora_A is .*rank 2.* lora_B is .*rank 1"):
        lora_modules({QA: torch.zeros(2, 4), QB: torch.zeros(3, 1)})


def test_lora_scaling_matches_peft():
    assert lora_scaling(16, 8) == 2.0
    assert lora_scaling(8, 4, use_rslora=True) == 4.0
    with pytest.raises(ConfigError):
        lora_scaling(16, 0)


# --- FFA-LoRA ---------------------------------------------------------------------------

FFA_A = torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.0, 1.0, -1.0, 3.0]], dtype=F64)


def _ffa_global() -> dict[str, torch.Tensor]:
    return {QA: FFA_A.clone(), QB: torch.zeros(3, 2, dtype=F64), HEAD: torch.zeros(2, 3, dtype=F64)}


def test_ffa_lora_trained_names_are_b_and_non_factor_tensors():
    state = _ffa_global()
    assert trained_names(state) == [QB, HEAD]
    assert frozen_names(state) == [QA]
    assert list(trained_state(state)) == [QB, HEAD]


def test_ffa_lora_aggregate_is_the_weighted_mean_of_the_products():
    b_a = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 1.0]], dtype=F64)
    b_b = torch.tensor([[-2.0, 0.0], [1.0, 1.0], [0.0, 4.0]], dtype=F64)
    updates = [
        SiteUpdate("a", {QB: b_a, HEAD: HEAD_A}, num_examples=1),
        SiteUpdate("b", {QB: b_b, HEAD: HEAD_B}, num_examples=3),
    ]
    result = FfaLora().aggregate(_ffa_global(), updates)

    assert FfaLora.name == "ffa-lora"
    assert torch.equal(result[QA], FFA_A)
    expected = 0.25 * (b_a @ FFA_A) + 0.75 * (b_b @ FFA_A)
    assert torch.allclose(result[QB] @ result[QA], expected, rtol=0, atol=1e-12)
    assert torch.allclose(result[HEAD], HEAD_MEAN, rtol=0, atol=1e-12)


def test_ffa_lora_refuses_an_update_carrying_a():
    update = SiteUpdate("a", {QA: FFA_A, QB: torch.zeros(3, 2, dtype=F64), HEAD: HEAD_A}, 1)
    with pytest.raises(AdapterError, match=r"site a sent frozen LoRA A tensor\(s\) \['m.q.lora_A"):
        FfaLora().aggregate(_ffa_global(), [update])


def test_ffa_lora_refuses_an_update_without_b():
    with pytest.raises(AdapterError, match=r"site a did not send .*m.q.lora_B.weight"):
        FfaLora().aggregate(_ffa_global(), [SiteUpdate("a", {HEAD: HEAD_A}, 1)])


def test_ffa_lora_refuses_a_misshaped_b():
    update = SiteUpdate("a", {QB: torch.zeros(3, 1, dtype=F64), HEAD: HEAD_A}, 1)
    with pytest.raises(AdapterError, match=r"site a: adapter tensor m.q.lora_B.weight is"):
        FfaLora().aggregate(_ffa_global(), [update])


# --- heterogeneous ranks: factor_product and truncate -----------------------------------


def _delta_factors():
    return factor_product([(B_A, A_A), (B_B, A_B)], [0.25 * 4.0, 0.75 * 2.0], module="m.q")


def test_factor_product_singular_values_are_those_of_the_explicit_product():
    u, s, v = _delta_factors()
    assert u.shape == (3, 3) and s.shape == (3,) and v.shape == (4, 3)
    assert u.dtype == s.dtype == v.dtype == F64
    assert torch.allclose(s, torch.linalg.svdvals(DELTA_W), rtol=0, atol=1e-12)
    assert torch.allclose(u @ torch.diag(s) @ v.T, DELTA_W, rtol=0, atol=1e-12)


def test_truncate_at_the_total_rank_is_exact():
    scaling = 4.0 / 3
    b, a = truncate(*_delta_factors(), 3, scaling)
    assert b.shape == (3, 3) and a.shape == (3, 4)
    assert torch.allclose(scaling * b @ a, DELTA_W, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rank", [1, 2])
def test_truncation_error_is_the_discarded_singular_values(rank):
    scaling = 4.0 / rank
    b, a = truncate(*_delta_factors(), rank, scaling)
    assert b.shape == (3, rank) and a.shape == (rank, 4)
    discarded = torch.linalg.svdvals(DELTA_W)[rank:]
    error = torch.linalg.matrix_norm(DELTA_W - scaling * b @ a)
    assert error.item() > 0.1
    assert error.item() == pytest.approx(math.sqrt(float((discarded**2).sum())), abs=1e-12)


def test_truncate_pads_with_zeros_beyond_the_available_rank():
    u, s, v = factor_product([(B_A, A_A)], [2.0])
    assert s.shape == (1,)
    b, a = truncate(u, s, v, 3, 0.5)
    assert b.shape == (3, 3) and a.shape == (3, 4)
    assert torch.equal(b[:, 1:], torch.zeros(3, 2, dtype=F64))
    assert torch.equal(a[1:], torch.zeros(2, 4, dtype=F64))
    assert torch.allclose(0.5 * b @ a, 2.0 * B_A @ A_A, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rank", [0, -1])
def test_truncate_refuses_a_rank_below_one(rank):
    with pytest.raises(ConfigError, match=r"rank for module m.q must be an integer >= 1"):
        truncate(*_delta_factors(), rank, 1.0, module="m.q")


def test_truncate_refuses_a_rank_above_the_module_limit():
    with pytest.raises(ConfigError, match=r"rank 4 for module m.q exceeds .* = 3"):
        truncate(*_delta_factors(), 4, 1.0, module="m.q")


def test_factor_product_refuses_factors_that_do_not_multiply():
    with pytest.raises(AdapterError, match=r"m.q: factors B"):
        factor_product([(B_A, A_B)], [1.0], module="m.q")


# --- heterogeneous ranks: the strategy --------------------------------------------------


def test_hetero_rank_aggregate_keeps_the_exact_delta_and_returns_the_global_rank():
    strategy = HeteroRank(2, lora_alpha=4)
    result = strategy.aggregate(_global(2), _hetero_updates())

    assert strategy.name == "hetero-rank"
    assert result[QA].shape == (2, 4) and result[QB].shape == (3, 2)
    assert torch.allclose(result[HEAD], HEAD_MEAN, rtol=0, atol=1e-12)
    singular = torch.linalg.svdvals(DELTA_W)
    error = torch.linalg.matrix_norm(DELTA_W - 2.0 * result[QB] @ result[QA])
    assert error.item() == pytest.approx(singular[2].item(), abs=1e-12)
    assert strategy.truncation_error(2)["m.q"] == pytest.approx(singular[2].item(), abs=1e-12)

    exact = strategy.site_state(3)
    assert torch.allclose((4.0 / 3) * exact[QB] @ exact[QA], DELTA_W, rtol=0, atol=1e-12)
    assert torch.allclose(exact[HEAD], HEAD_MEAN, rtol=0, atol=1e-12)
    small = strategy.site_state(1)
    assert small[QA].shape == (1, 4) and small[QB].shape == (3, 1)
    assert strategy.site_payload_values(1) == 1 * (3 + 4) + 6


def test_hetero_rank_with_site_scalings_gives_the_same_delta():
    strategy = HeteroRank(2, site_scalings={"a": 4.0, "b": 2.0}, global_scaling=2.0)
    strategy.aggregate(_global(2), _hetero_updates())
    state = strategy.site_state(3, site_scaling=0.5)
    assert torch.allclose(0.5 * state[QB] @ state[QA], DELTA_W, rtol=0, atol=1e-12)
    with pytest.raises(ConfigError, match="needs the site's scaling"):
        strategy.site_state(2)


def test_hetero_rank_keeps_the_global_dtype():
    global_state = {name: tensor.float() for name, tensor in _global(2).items()}
    updates = [
        SiteUpdate(u.site, {n: t.float() for n, t in u.state.items()}, u.num_examples)
        for u in _hetero_updates()
    ]
    result = HeteroRank(2, lora_alpha=4).aggregate(global_state, updates)
    assert {tensor.dtype for tensor in result.values()} == {torch.float32}


def test_hetero_rank_fills_empty_directions_without_changing_the_product():
    strategy = HeteroRank(2, lora_alpha=4)
    strategy.set_global(_global(2))
    state = strategy.site_state(2)
    assert torch.equal(state[QB], torch.zeros(3, 2, dtype=F64))
    assert bool((state[QA] != 0).all()) and float(state[QA].abs().max()) <= 0.5
    assert torch.equal(strategy.site_state(2)[QA], state[QA])
    assert torch.equal(
        HeteroRank(2, lora_alpha=4, fill_empty=False).aggregate(
            _global(2), [SiteUpdate("a", {**_global(1), HEAD: HEAD_A}, 1)]
        )[QA],
        torch.zeros(2, 4, dtype=F64),
    )


def test_hetero_rank_checks_ranks():
    with pytest.raises(ConfigError, match="global LoRA rank must be an integer >= 1"):
        HeteroRank(0, lora_alpha=4)
    with pytest.raises(ConfigError, match=r"rank 4 for module m.q exceeds .* = 3"):
        HeteroRank(4, lora_alpha=4).aggregate(_global(4), _hetero_updates())
    strategy = HeteroRank(2, lora_alpha=4)
    strategy.aggregate(_global(2), _hetero_updates())
    with pytest.raises(ConfigError, match=r"rank 4 for module m.q exceeds .* = 3"):
        strategy.site_state(4)
    with pytest.raises(ConfigError):
        strategy.site_state(0)


def test_hetero_rank_refuses_bad_set_ups_and_updates():
    with pytest.raises(ConfigError, match="exactly one of lora_alpha and site_scalings"):
        HeteroRank(2)
    with pytest.raises(RuntimeError, match="no global adapter yet"):
        HeteroRank(2, lora_alpha=4).site_state(1)
    with pytest.raises(AdapterError, match=r"global adapter has rank 1 at LoRA module m.q"):
        HeteroRank(2, lora_alpha=4).aggregate(_global(1), _hetero_updates())
    wide = SiteUpdate("a", {QA: torch.zeros(1, 5), QB: torch.zeros(3, 1), HEAD: HEAD_A}, 1)
    with pytest.raises(AdapterError, match=r"site a: LoRA module m.q is 3 × 5, expected 3 × 4"):
        HeteroRank(2, lora_alpha=4).aggregate(_global(2), [wide])
    headless = SiteUpdate("a", {QA: A_A, QB: B_A}, 1)
    with pytest.raises(AdapterError, match="site a: adapter tensors do not match"):
        HeteroRank(2, lora_alpha=4).aggregate(_global(2), [headless])
