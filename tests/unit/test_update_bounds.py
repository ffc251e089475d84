"""Bounds on updates and aggregates: the built-in limit, the weights, the aggregate check."""

from __future__ import annotations

import math

import pytest
import torch

from fedlora.errors import AdapterError
from fedlora.strategies.base import SiteUpdate
from fedlora.strategies.helpers import example_weights
from fedlora.strategies.validation import (
    AggregateRejectedError,
    UpdateRejectedError,
    absurd_norm_limit,
    check_weighted_norm,
    effective_bound,
    validate_aggregate,
    validate_update,
)


def _start() -> dict[str, torch.Tensor]:
    return {"a": torch.full((2, 2), 3.0), "b": torch.zeros(5)}  # norm 6, 9 values


def _moved(by: float, where: str = "b") -> dict[str, torch.Tensor]:
    state = {name: tensor.clone() for name, tensor in _start().items()}
    state[where][0] += by
    return state


def test_the_built_in_limit_is_a_multiple_of_the_start_plus_a_floor_per_value() -> None:
    assert absurd_norm_limit(_start()) == pytest.approx(100 * 6 + 10 * math.sqrt(9))
    assert absurd_norm_limit({"b": torch.zeros(16)}) == pytest.approx(10 * 4)  # from zero


def test_without_a_bound_of_its_own_an_absurd_finite_update_is_still_rejected() -> None:
    assert validate_update(_start(), _moved(600.0)) == pytest.approx(600.0)  # within 630

    with pytest.raises(UpdateRejectedError, match="3e\\+38 exceeds the built-in limit 630"):
        validate_update(_start(), _moved(3e38))


def test_the_smaller_of_the_runs_bound_and_the_built_in_limit_applies() -> None:
    with pytest.raises(UpdateRejectedError, match="exceeds update-norm-bound 5"):
        validate_update(_start(), _moved(6.0), norm_bound=5.0)
    with pytest.raises(UpdateRejectedError, match="exceeds the built-in limit"):
        validate_update(_start(), _moved(700.0), norm_bound=1e9)

    assert effective_bound(_start(), 5.0) == 5.0
    assert effective_bound(_start(), 1e9) == effective_bound(_start(), 0.0) == pytest.approx(630)


def _update(site: str, num_examples: int) -> SiteUpdate:
    return SiteUpdate(site=site, state=_start(), num_examples=num_examples)


def test_a_negative_example_count_cannot_weight_an_update() -> None:
    with pytest.raises(AdapterError, match=r"negative example counts from \['c'\]"):
        example_weights([_update("a", 24), _update("b", 24), _update("c", -32)])

    assert example_weights([_update("a", 1), _update("b", 3)]) == [0.25, 0.75]


def test_what_enters_the_aggregate_stays_within_the_largest_bound() -> None:
    assert check_weighted_norm([4.0, 2.0], [1, 3], [5.0, 5.0]) == pytest.approx(2.5)
    assert check_weighted_norm([5.0, 5.0], [1, 1], [5.0, 5.0]) == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("counts", "reason"),
    [
        ([24, 24, -32], "must be >= 0 with a positive sum"),
        ([0, 0, 0], "must be >= 0 with a positive sum"),
    ],
)
def test_weights_that_are_negative_or_sum_to_zero_are_refused(counts, reason: str) -> None:
    with pytest.raises(AggregateRejectedError, match=reason):
        check_weighted_norm([4.9, 1.0, 1.0], counts, [5.0, 5.0, 5.0])


def test_updates_beyond_their_bound_cannot_enter_the_aggregate() -> None:
    with pytest.raises(AggregateRejectedError, match="move 6 from the start, more than the bound"):
        check_weighted_norm([6.0, 6.0], [1, 3], [5.0, 5.0])


def test_an_aggregate_is_checked_before_it_is_saved() -> None:
    assert validate_aggregate(_start(), _moved(2.0)) == pytest.approx(2.0)

    with pytest.raises(AggregateRejectedError, match="aggregate tensor b has NaN"):
        validate_aggregate(_start(), _moved(float("nan")))
    with pytest.raises(AggregateRejectedError, match="more than the built-in limit 630"):
        validate_aggregate(_start(), _moved(1e6))
    with pytest.raises(AggregateRejectedError, match="does not fit the adapter"):
        validate_aggregate(_start(), {"a": torch.zeros(2, 2)})
