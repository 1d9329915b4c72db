"""The property of ``Continuous``: any schedule of readers, through ``batched.testing``.

Random settings, items with random output lengths and growing lengths, per-item
failures and raising steps, readers that stop early (closing or dropping their stream)
or are cancelled at random points, random step durations, early closes of the block,
on virtual time and on both backends: ``check_continuous`` judges each run.
"""

from __future__ import annotations

from typing import Any

import pytest
from _helpers import BACKENDS
from hypothesis import given, settings

from batched import Continuous
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_checker_catches_a_reader_that_reads_another_items_values(backend: str) -> None:
    """check_continuous is not vacuous: a run whose record shows a reader with values
    that were not emitted for it fails."""
    schedule = ContinuousSchedule([ReaderPlan(at_ms=0, values=3), ReaderPlan(at_ms=0, values=2)])
    result = run_continuous(lambda step: Continuous(step, batch_size=2), schedule, backend=backend)
    check_continuous(result)
    import attrs

    swapped = attrs.evolve(
        result,
        readers=(
            attrs.evolve(result.readers[0], got=result.readers[1].got),
            result.readers[1],
        ),
    )
    with pytest.raises(AssertionError, match="reader 0"):
        check_continuous(swapped)
