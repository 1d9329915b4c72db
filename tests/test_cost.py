"""The core's model of ``fn``'s cost per batch size (a core unit test: no event loop)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from batched._core.cost import Cost


def test_nothing_known_before_the_first_run() -> None:
    cost = Cost()
    assert cost.line() == (0.0, 0.0)
    assert cost.estimate(32) == 0.0


def test_recovers_a_line_from_runs_of_several_sizes() -> None:
    cost = Cost()
    for size in [1, 4, 16, 32, 8, 2] * 5:
        cost.add(size, 0.002 + 0.0005 * size)
    per_batch, per_item = cost.line()
    assert math.isclose(per_batch, 0.002, rel_tol=1e-6)
    assert math.isclose(per_item, 0.0005, rel_tol=1e-6)
    assert math.isclose(cost.estimate(64), 0.002 + 0.0005 * 64, rel_tol=1e-6)


def test_one_size_only_errs_on_the_slow_side() -> None:
    cost = Cost()
    for _ in range(10):
        cost.add(8, 0.004)
    assert cost.line() == (0.004, 0.0)
    assert cost.estimate(2) == 0.004  # fewer items: taken as costing as much
    assert math.isclose(cost.estimate(16), 0.008)  # more: proportionally more


def test_follows_a_model_that_became_slower() -> None:
    cost = Cost()
    for size in [1, 8, 32] * 30:
        cost.add(size, 0.001 * size)
    for size in [1, 8, 32] * 60:
        cost.add(size, 0.003 * size)
    assert math.isclose(cost.estimate(32), 0.096, rel_tol=0.05)


def test_bad_samples_are_ignored() -> None:
    cost = Cost()
    cost.add(0, 1.0)
    cost.add(4, math.nan)
    cost.add(4, -1.0)
    assert cost.runs == 0
    assert cost.estimate(4) == 0.0


@given(
    st.lists(
        st.tuples(st.integers(1, 512), st.floats(0.0, 10.0, allow_nan=False)),
        min_size=1,
        max_size=80,
    ),
    st.integers(1, 1024),
)
def test_estimates_are_finite_non_negative_and_grow_with_size(
    runs: list[tuple[int, float]], size: int
) -> None:
    cost = Cost()
    for n, seconds in runs:
        cost.add(n, seconds)
    per_batch, per_item = cost.line()
    assert per_batch >= 0.0
    assert per_item >= 0.0
    assert math.isfinite(cost.estimate(size))
    assert cost.estimate(size) >= 0.0
    assert cost.estimate(size + 1) >= cost.estimate(size)
