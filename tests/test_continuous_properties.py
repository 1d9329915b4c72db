"""The property of ``Continuous``: any schedule of readers, through ``batched.testing``.

Random settings, items with random output lengths and growing lengths, per-item
failures and raising steps, readers that stop early (closing or dropping their stream)
or are cancelled at random points, random step durations, early closes of the block,
on virtual time and on both backends: ``check_continuous`` judges each run.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from _helpers import BACKENDS
from hypothesis import given, settings

from batched import BatchInfo, Continuous
from batched.testing import (
    ContinuousSchedule,
    ReaderPlan,
    check_continuous,
    continuous_schedules,
    continuous_settings,
    run_continuous,
)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(deadline=None)
@given(options=continuous_settings(), schedule=continuous_schedules(closes=True))
def test_every_reader_reads_its_own_values_and_steps_keep_their_limits(
    backend: str, options: dict[str, Any], schedule: ContinuousSchedule
) -> None:
    result = run_continuous(lambda step: Continuous(step, **options), schedule, backend=backend)
    check_continuous(result)


# `-m slow`: 2,000 examples per backend (a few minutes).
@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("backend", BACKENDS)
@settings(deadline=None, max_examples=2_000)
@given(options=continuous_settings(), schedule=continuous_schedules(closes=True))
def test_every_reader_reads_its_own_values_slow(
    backend: str, options: dict[str, Any], schedule: ContinuousSchedule
) -> None:
    result = run_continuous(lambda step: Continuous(step, **options), schedule, backend=backend)
    check_continuous(result)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_checker_catches_a_reader_that_reads_another_items_values(backend: str) -> None:
    """check_continuous is not vacuous: a run whose record shows a reader with values
    that were not emitted for it fails."""
    schedule = ContinuousSchedule([ReaderPlan(at_ms=0, values=3), ReaderPlan(at_ms=0, values=2)])
    result = run_continuous(lambda step: Continuous(step, batch_size=2), schedule, backend=backend)
    check_continuous(result)
    swapped = attrs.evolve(
        result,
        readers=(
            attrs.evolve(result.readers[0], got=result.readers[1].got),
            result.readers[1],
        ),
    )
    with pytest.raises(AssertionError, match="reader 0"):
        check_continuous(swapped)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_checker_catches_a_step_over_batch_size_and_a_broken_join_order(
    backend: str,
) -> None:
    schedule = ContinuousSchedule(
        [ReaderPlan(at_ms=0, values=3), ReaderPlan(at_ms=0, values=3), ReaderPlan(at_ms=1)]
    )
    result = run_continuous(
        lambda step: Continuous(step, batch_size=3, timeout_ms=5), schedule, backend=backend
    )
    check_continuous(result)
    first = result.steps[0]
    # Readers 0 and 1 come at the same instant: trio may start either first.
    assert sorted(first.readers[:2]) == [0, 1]
    assert first.readers[2] == 2
    small = attrs.evolve(result, settings={**result.settings, "batch_size": 2})
    with pytest.raises(AssertionError, match="batch_size=2"):
        check_continuous(small)
    second = result.steps[1]
    swapped = attrs.evolve(second, readers=second.readers[::-1])
    reordered = attrs.evolve(result, steps=(first, swapped, *result.steps[2:]))
    with pytest.raises(AssertionError, match="order"):
        check_continuous(reordered)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(deadline=None, max_examples=50)
@given(options=continuous_settings(), schedule=continuous_schedules(closes=True))
def test_on_batch_reports_each_step_once_as_it_ran(
    backend: str, options: dict[str, Any], schedule: ContinuousSchedule
) -> None:
    """Any schedule: one BatchInfo per step that ran to its end (a step cancelled by an
    abnormal close is not reported), of its size; each item's wait reported once, at the
    step it joined; the items a step ended add up to the stats; ``full`` exactly when the
    step held ``batch_size`` items."""
    infos: list[BatchInfo] = []
    result = run_continuous(
        lambda step: Continuous(step, on_batch=infos.append, **options), schedule, backend=backend
    )
    check_continuous(result)
    ran = [step for step in result.steps if not step.cancelled]
    assert [info.size for info in infos] == [len(step.readers) for step in ran]
    joined = {reader for step in ran for reader in step.readers}
    assert sum(len(info.waits_s) for info in infos) == len(joined)
    assert all(wait >= 0 for info in infos for wait in info.waits_s)
    batch_size = options.get("batch_size", 32)
    for info, step in zip(infos, ran, strict=True):
        ended = info.outcome.completed + info.outcome.failed + info.outcome.cancelled
        assert ended <= info.size
        if step.raised:
            assert info.outcome.completed == 0
            assert ended == info.size
        assert (info.reason == "full") == (info.size >= batch_size), (info, batch_size)
        assert info.reason in {"full", "budget", "closing", "timeout"}
        assert len(info.contexts) == info.size
    stats = result.stats
    assert sum(info.outcome.completed for info in infos) == stats.completed
    assert sum(info.outcome.cancelled for info in infos) <= stats.cancelled
    assert sum(info.outcome.failed for info in infos) <= stats.failed


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_checker_sees_a_cancellation_due_at_a_step_start_read_a_hair_early(
    backend: str,
) -> None:
    """Found by the property: a reader cancelled at once at 14 ms, and a step that
    starts at 14 ms read as 13.999999999999998 (a sum of floats); the reader may leave
    before that step, and the checker must allow it."""
    schedule = ContinuousSchedule(
        [ReaderPlan(at_ms=11, values=2), ReaderPlan(at_ms=14, cancel_after_ms=0, call=True)]
    )
    result = run_continuous(
        lambda step: Continuous(step, batch_size=2, timeout_ms=2), schedule, backend=backend
    )
    check_continuous(result)
