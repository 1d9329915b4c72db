"""The property-based core (TESTING.md): one generated script drives a ``Batcher``.

A script is the batcher's settings, its callers (``batched.testing.Schedule``: when each
calls, with which items, priority, ``wait``, and whether it gives up; now and then the
owner ends its block early by leaving it, being cancelled or raising) and what each
successive call of the batch function does (``fn_outcomes``: ok, raise, too few or too
many results, the wrong type, a ``Failure`` per item, a ``BaseException``).
``batched.testing.run_schedule`` plays it in its own ``anyio.run`` on virtual time
(asyncio: ``VirtualTimeLoop``; trio: ``MockClock(autojump_threshold=0)``) and records
every caller's outcome and every call of ``fn``; ``check_invariants`` then judges the
record. The oracle is batched.testing's own, the one users test their batching with
(the checks named below live in batched/testing/_invariants.py, _outcomes.py,
_timing.py, _order.py and _queue.py):

1. one outcome per caller, no hang ........ ``_check_exit``, ``check_outcomes``
2. a result is fn of the caller's items ... ``check_outcomes`` (at the instant fn ended)
3. no item twice, none of a departed caller ``_check_processing``
4. batch size and length budget ........... ``_check_batches``, ``check_concurrency``
5. bounded wait ........................... ``check_wait_bound`` (without a queue bound),
   ``check_no_idle_slot`` (exact form, every configuration)
6. no premature dispatch .................. ``check_no_premature``
7. arrival order within one key ........... ``check_arrival_order``, ``check_rule_order``
8. failing batches fail exactly their callers; a BaseException closes the batcher and
   leaves ``async with`` .................. ``check_outcomes``, ``_check_block``
9. queue bound and rejections ............. ``check_queue_size`` (and, on a stepped
   run, ``check_admission``: see tests/test_reliability.py)
10. stats add up .......................... ``_check_stats``
11. later callers complete after a failure  ``check_outcomes`` (exact outcomes)
12. clean exit ............................ ``_check_exit``: no exception handler call,
    no task left, nothing left open

The planted bugs that show each check can fail are in tests/test_testing.py (the kit's
own tests) and tests/test_reliability.py (an off-by-one in a pool).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import example, given, settings
from strategies import core_outcomes, core_schedules, core_settings

import batched
from batched.testing import Arrival, BatchOutcome, Schedule, check_invariants, run_schedule

BACKENDS = ["asyncio", "trio"]


def run_and_check(
    backend: str, options: dict[str, Any], schedule: Schedule, outcomes: tuple[BatchOutcome, ...]
) -> None:
    result = run_schedule(
        lambda fn: batched.Batcher(fn, **options), schedule, backend=backend, outcomes=outcomes
    )
    check_invariants(result)


# The owner cancelled at the instant it enters: `__aenter__` itself is cancelled, and
# the callers then find the batcher closed. Before a5811b7 this left the engine's
# intake streams unclosed (ResourceWarning): kept as an explicit case.
CANCELLED_ON_ENTRY = {
    "options": {
        "batch_size": 1,
        "timeout_ms": 0,
        "max_batch_length": None,
        "max_queue_size": None,
        "strategy": batched.Fifo(),
        "max_concurrent_batches": 1,
        "small_batch_threshold": 0,
        "max_wait_ms": 0,
        "isolate_errors": False,
    },
    "schedule": Schedule([Arrival(0, ((0, 1),))], close_at_ms=0, close_by="cancel"),
    "outcomes": (),
}


def _profile_examples() -> int:
    profile = settings.default
    assert profile is not None  # tests/conftest.py loads one
    return profile.max_examples


# At least 500 examples per backend in CI (the `dev` profile may ask for fewer).
CORE_EXAMPLES = (
    _profile_examples()
    if os.environ.get("HYPOTHESIS_PROFILE") == "dev"
    else max(500, _profile_examples())
)


# pytest-timeout's 120 s guard is for hangs in real time; a failing example can take
# longer than that to shrink, and the virtual hang guard already catches hangs.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", BACKENDS)
@settings(deadline=None, max_examples=CORE_EXAMPLES)
@given(options=core_settings(), schedule=core_schedules(), outcomes=core_outcomes())
@example(**CANCELLED_ON_ENTRY)
def test_script_keeps_invariants(
    backend: str, options: dict[str, Any], schedule: Schedule, outcomes: tuple[BatchOutcome, ...]
) -> None:
    run_and_check(backend, options, schedule, outcomes)


# `-m long`: 20,000 examples per backend, larger scripts (about an hour).
@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(7200)
@pytest.mark.parametrize("backend", BACKENDS)
@settings(deadline=None, max_examples=20_000)
@given(options=core_settings(), schedule=core_schedules(30), outcomes=core_outcomes(30))
def test_script_keeps_invariants_long(
    backend: str, options: dict[str, Any], schedule: Schedule, outcomes: tuple[BatchOutcome, ...]
) -> None:
    run_and_check(backend, options, schedule, outcomes)

