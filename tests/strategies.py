"""Hypothesis strategies for scripts that drive one ``Batcher`` (see TESTING.md).

A script is plain data: the batcher's settings, the callers (when each arrives, what it
sends, whether it gives up), what each successive call of the batch function does, and
rarely how the owner ends the block early. ``tests/test_properties.py`` runs a script on
a virtual clock and checks the invariants. All times are whole milliseconds, so events
that should coincide do coincide, which is where the edge cases live.

Everything shrinks towards the simplest script: one caller at time 0, default-ish
settings, every batch ``ok`` in 0 ms, no cancellation, no early close.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

import batched

__all__ = [
    "OUTCOMES",
    "BatchPlan",
    "CallerPlan",
    "ClosePlan",
    "Config",
    "Script",
    "batch_plans",
    "callers",
    "close_plans",
    "configs",
    "fails_alone",
    "scripts",
]

# What one call of the batch function does once its duration has passed.
# ``item_failure`` returns ``batched.Failure(exc)`` in the slots of some items (see
# ``fails_alone``); the others get their results.
OUTCOMES = ("ok", "raise", "short", "long", "wrong_type", "item_failure", "base_exception")

# Weighted draws: sampled_from is uniform and shrinks towards the first element.
_OUTCOME_WEIGHTS = (
    ("ok",) * 28
    + ("raise",) * 4
    + ("short",) * 2
    + ("long",) * 2
    + ("wrong_type",) * 3
    + ("item_failure",) * 3
    + ("base_exception",) * 1
)
STRATEGIES: tuple[batched.Strategy, ...] = (
    batched.Fifo(),
    batched.ByLength(),
    batched.ByPriority(),
)


def fails_alone(item: int) -> bool:
    """Under ``item_failure``: caller ``i``'s item ``j`` fails when ``i + j`` is even."""
    return (item // 10 + item % 10) % 2 == 0


@dataclass(frozen=True)
class Config:
    """The batcher's settings."""

    batch_size: int
    timeout_ms: int
    max_batch_length: int | None
    max_queue_size: int | None
    strategy: batched.Strategy
    max_concurrent_batches: int
    small_batch_threshold: int
    max_wait_ms: int


@dataclass(frozen=True)
class CallerPlan:
    """One caller: ``b(item)`` for one item, ``b.many(items)`` for more.

    ``items`` are unique ids across the script (caller ``i`` sends ``10*i + j``), and
    ``lengths[j]`` is the length ``length_fn`` reports for ``items[j]``. With
    ``cancel_after_ms`` the caller is cancelled that long after it submits.
    """

    arrival_ms: int
    items: tuple[int, ...]
    lengths: tuple[int, ...]
    priority: int
    cancel_after_ms: int | None
    wait: bool


@dataclass(frozen=True)
class BatchPlan:
    """What the k-th call of the batch function does: sleep, then ``outcome``."""

    duration_ms: int
    outcome: str


@dataclass(frozen=True)
class ClosePlan:
    """End the block early: ``close`` leaves it normally (drain), ``cancel`` cancels it."""

    kind: str
    at_ms: int


@dataclass(frozen=True)
class Script:
    config: Config
    callers: tuple[CallerPlan, ...]
    batches: tuple[BatchPlan, ...]
    close: ClosePlan | None


def configs() -> st.SearchStrategy[Config]:
    return st.builds(
        Config,
        batch_size=st.integers(1, 8),
        timeout_ms=st.integers(0, 10),
        max_batch_length=st.none() | st.integers(5, 30),
        max_queue_size=st.none() | st.integers(1, 6),
        strategy=st.sampled_from(STRATEGIES),
        max_concurrent_batches=st.integers(1, 3),
        small_batch_threshold=st.integers(0, 3),
        max_wait_ms=st.integers(0, 50),
    )


@st.composite
def _caller(draw: st.DrawFn, index: int, max_arrival_ms: int) -> CallerPlan:
    n_items = draw(st.sampled_from((1, 1, 2, 3)))
    return CallerPlan(
        arrival_ms=draw(st.integers(0, max_arrival_ms)),
        items=tuple(10 * index + j for j in range(n_items)),
        lengths=tuple(draw(st.lists(st.integers(1, 10), min_size=n_items, max_size=n_items))),
        priority=draw(st.integers(0, 3)),
        # Two draws in three: no cancellation.
        cancel_after_ms=draw(st.none() | st.none() | st.integers(0, 20)),
        wait=draw(st.sampled_from((True, True, True, False))),
    )


@st.composite
def callers(
    draw: st.DrawFn, max_callers: int = 14, max_arrival_ms: int = 30
) -> tuple[CallerPlan, ...]:
    n = draw(st.integers(1, max_callers))
    return tuple(draw(_caller(i, max_arrival_ms)) for i in range(n))


def batch_plans(max_batches: int = 12) -> st.SearchStrategy[tuple[BatchPlan, ...]]:
    plan = st.builds(
        BatchPlan, duration_ms=st.integers(0, 10), outcome=st.sampled_from(_OUTCOME_WEIGHTS)
    )
    return st.lists(plan, max_size=max_batches).map(tuple)


@st.composite
def close_plans(draw: st.DrawFn, max_at_ms: int = 40) -> ClosePlan | None:
    kind = draw(st.sampled_from((None,) * 6 + ("close", "cancel")))
    if kind is None:
        return None
    return ClosePlan(kind=kind, at_ms=draw(st.integers(0, max_at_ms)))


@st.composite
def scripts(draw: st.DrawFn, max_callers: int = 14, max_batches: int = 12) -> Script:
    return Script(
        config=draw(configs()),
        callers=draw(callers(max_callers)),
        batches=draw(batch_plans(max_batches)),
        close=draw(close_plans()),
    )
