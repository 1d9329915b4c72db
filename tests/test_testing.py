"""batched.testing: the harness users test their batching with, tested on both backends.

The async tests here run on ``batched.testing.anyio_backend``, imported below as a user
would (conftest.py imports the same fixture); the pytest plugin runs in projects of its own.
"""

from __future__ import annotations

import time
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import attrs
import numpy as np
import pytest
import sniffio
from _helpers import check_exit_ok, run_python
from hypothesis import given, settings
from hypothesis import strategies as st

import batched
from batched.cache import MemoryCache
from batched.testing import (
    OUTCOME_KINDS,
    Arrival,
    BatchOutcome,
    BatchRecord,
    PlannedError,
    Schedule,
    ScheduleResult,
    anyio_backend,  # noqa: F401 - the async tests of this module run on it
    arrival_schedules,
    batcher_settings,
    check_batch_invariant,
    check_invariants,
    fn_outcomes,
    run_schedule,
    settle,
    virtual_time_backends,
)

if TYPE_CHECKING:
    from pathlib import Path

BACKENDS = ["asyncio", "trio"]
CLOSE_KINDS = ("exit", "cancel", "raise")  # Schedule.close_by


async def echo(items: list[Any]) -> list[Any]:
    return items


# -- virtual time ----------------------------------------------------------------------


def test_virtual_time_backends_are_instant_and_fresh() -> None:
    async def hour() -> float:
        start = anyio.current_time()
        await anyio.sleep(3600)
        return anyio.current_time() - start

    pairs = virtual_time_backends()
    assert [name for name, _ in pairs] == BACKENDS
    assert pairs[1][1]["clock"] is not virtual_time_backends()[1][1]["clock"]
    real0 = time.monotonic()
    for backend, options in pairs:
        assert anyio.run(hour, backend=backend, backend_options=options) >= 3600
    assert time.monotonic() - real0 < 5


@pytest.mark.virtual_time
@pytest.mark.anyio
async def test_fixture_runs_each_backend_on_virtual_time(
    anyio_backend: tuple[str, dict[str, Any]],  # noqa: F811 - the fixture under test
) -> None:
    assert sniffio.current_async_library() == anyio_backend[0]
    real0, start = time.monotonic(), anyio.current_time()
    await anyio.sleep(3600)
    assert anyio.current_time() - start >= 3600
    assert time.monotonic() - real0 < 5


@pytest.mark.virtual_time
@pytest.mark.anyio
async def test_settle_waits_for_other_tasks_without_moving_time() -> None:
    reached: list[int] = []

    async def worker() -> None:
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        reached.append(1)
        await anyio.sleep(10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        start = anyio.current_time()
        await settle()
        assert reached == [1]
        assert anyio.current_time() == start
        tg.cancel_scope.cancel()


# -- the pytest plugin -----------------------------------------------------------------

USER_TESTS = """
import time

import anyio
import pytest
import sniffio


@pytest.mark.anyio
async def test_an_hour(anyio_backend):
    real0, start = time.monotonic(), anyio.current_time()
    await anyio.sleep(3600 if VIRTUAL else 0.05)
    assert anyio.current_time() - start >= (3600 if VIRTUAL else 0.05)
    assert (time.monotonic() - real0 < 5) if VIRTUAL else (time.monotonic() - real0 >= 0.05)
    print("ran on", sniffio.current_async_library())


@pytest.mark.virtual_time
def test_the_marker_is_registered():
    pass
"""


def run_user_project(
    tmp_path: Path, *, ini: str = "", conftest: str | None = None, virtual: bool = True
) -> str:
    """pytest, in a project of its own with the tests above, a pytest.ini of ``ini`` and
    no conftest.py unless given; its output, once it passed."""
    (tmp_path / "test_user.py").write_text(f"VIRTUAL = {virtual}\n{USER_TESTS}")
    (tmp_path / "pytest.ini").write_text(f"[pytest]\n{ini}\n")
    if conftest is not None:
        (tmp_path / "conftest.py").write_text(conftest)
    # The entry point, unless this environment's install of batched predates it.
    installed = any(ep.name == "batched" for ep in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "batched.testing._plugin"]
    proc = run_python(
        "-m", "pytest", *plugin, "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
        "-p", "no:cacheprovider", "--strict-markers", "-s", "-v", str(tmp_path),
        # A user's pytest loads plugins by their entry points, whatever ours was run with
        # (.ci/run's -O pass turns that off so that pytest leaves the library's asserts be).
        unset=("PYTEST_DISABLE_PLUGIN_AUTOLOAD",),
    )  # fmt: skip
    return check_exit_ok(proc)


def test_plugin_gives_a_project_without_conftest_the_fixture(tmp_path: Path) -> None:
    out = run_user_project(tmp_path, ini="batched_virtual_time = true")
    assert "batched: anyio_backend on virtual time (asyncio, trio)" in out
    assert "ran on asyncio" in out
    assert "ran on trio" in out
    assert "3 passed" in out


def test_plugin_never_replaces_a_projects_own_fixture(tmp_path: Path) -> None:
    own = "import pytest\n\n@pytest.fixture\ndef anyio_backend():\n    return 'asyncio'\n"
    out = run_user_project(tmp_path, ini="batched_virtual_time = true", conftest=own, virtual=False)
    assert "ran on asyncio" in out
    assert "ran on trio" not in out
    assert "2 passed" in out


def test_plugin_leaves_anyios_default_alone_unless_asked(tmp_path: Path) -> None:
    out = run_user_project(tmp_path, virtual=False)  # anyio's own fixture: real time
    assert "batched:" not in out
    assert "ran on asyncio" in out


# -- strategies ------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(options=batcher_settings())
def test_batcher_settings_are_valid(options: dict[str, Any]) -> None:
    b: batched.Batcher[Any, Any] = batched.Batcher(echo, **options)
    assert b.stats.submitted == 0


@settings(max_examples=20, deadline=None)
@given(options=batcher_settings(batch_size=32, timeout_ms=st.just(2.5), length_fn=len))
def test_batcher_settings_take_fixed_values_and_strategies(options: dict[str, Any]) -> None:
    assert (options["batch_size"], options["timeout_ms"], options["length_fn"]) == (32, 2.5, len)
    batched.Batcher(echo, **options)


def test_batcher_settings_reject_an_unknown_setting() -> None:
    with pytest.raises(TypeError, match="batchsize"):
        batcher_settings(batchsize=3)


@settings(max_examples=100, deadline=None)
@given(schedule=arrival_schedules(items=st.text(), max_callers=5, max_items=4, no_wait_calls=True))
def test_arrival_schedules_are_well_formed(schedule: Schedule) -> None:
    arrivals = schedule.arrivals
    assert 1 <= len(arrivals) <= 5
    items = [item for a in arrivals for item in a.items]
    assert len(items) == len(set(items))
    for a in arrivals:
        assert 1 <= len(a.items) <= (4 if a.many else 1)
        assert 0 <= a.at_ms <= 30
        assert 0 <= a.priority <= 3
        assert a.cancel_after_ms is None or 0 <= a.cancel_after_ms <= 20


@settings(max_examples=50, deadline=None)
@given(schedule=arrival_schedules(items=st.lists(st.integers(0, 3)), cancellations=False))
def test_arrival_schedules_take_unhashable_items(schedule: Schedule) -> None:
    reprs = [repr(item) for a in schedule.arrivals for item in a.items]
    assert len(reprs) == len(set(reprs))
    assert all(a.cancel_after_ms is None and a.wait for a in schedule.arrivals)


@settings(max_examples=50, deadline=None)
@given(outcomes=fn_outcomes(kinds=["raise", "ok"], max_batches=3, max_duration_ms=2))
def test_fn_outcomes_keep_to_their_bounds(outcomes: tuple[BatchOutcome, ...]) -> None:
    assert len(outcomes) <= 3
    assert all(o.kind in ("ok", "raise") and 0 <= o.duration_ms <= 2 for o in outcomes)


def test_plans_are_validated() -> None:
    with pytest.raises(ValueError, match="kinds"):
        fn_outcomes(kinds=["ok", "explode"])
    with pytest.raises(ValueError, match="many=True"):
        Arrival(0, (1, 2))
    with pytest.raises(ValueError, match="kind"):
        BatchOutcome(kind="explode")
    with pytest.raises(ValueError, match="close_by"):
        Schedule([], close_at_ms=1, close_by="explode")
    assert set(OUTCOME_KINDS) == {"ok", "raise", "short", "long", "wrong_type", "item_failure"}
    assert BatchOutcome(kind="base_exception").kind == "base_exception"  # asked for only


@settings(max_examples=100, deadline=None)
@given(
    schedule=arrival_schedules(max_arrival_ms=20, closes=True),
    outcomes=fn_outcomes(kinds=["ok", "base_exception"], max_batches=20),
)
def test_closes_and_base_exceptions_are_drawn_when_asked(
    schedule: Schedule, outcomes: tuple[BatchOutcome, ...]
) -> None:
    if schedule.close_at_ms is not None:
        assert schedule.close_by in CLOSE_KINDS
        assert 0 <= schedule.close_at_ms <= 30
    assert {o.kind for o in outcomes} <= {"ok", "base_exception"}


# -- run_schedule ----------------------------------------------------------------------

# batch_size 3, timeout 5 ms: callers 0 and 1 (two items) fill a batch at 0 ms that runs
# 1 ms; caller 2 comes at 1 ms and leaves alone at its timeout, 6 ms.
KNOWN = Schedule([Arrival(0, (0,)), Arrival(0, (10, 11), many=True), Arrival(1, (20,))])


def fifo3(fn: Any) -> batched.Batcher[Any, Any]:
    return batched.Batcher(fn, batch_size=3, timeout_ms=5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_schedule_is_recorded(backend: str) -> None:
    result = run_schedule(fifo3, KNOWN, backend=backend)
    # Callers 0 and 1 both come at 0 ms: trio starts them in either order.
    assert [(sorted(b.items), b.start_ms, b.end_ms) for b in result.batches] == [
        ([0, 10, 11], 0.0, 1.0),
        ([20], 6.0, 7.0),
    ]
    assert [(c.kind, c.result, c.submitted_ms, c.done_ms) for c in result.callers] == [
        ("result", 0, 0.0, 1.0),
        ("result", [10, 11], 0.0, 1.0),
        ("result", 20, 1.0, 7.0),
    ]
    assert result.settings["batch_size"] == 3
    assert result.stats.completed == 4
    assert not result.hung
    check_invariants(result)


@pytest.mark.parametrize("backend", BACKENDS)
def test_item_fn_gives_the_results(backend: str) -> None:
    result = run_schedule(fifo3, KNOWN, backend=backend, item_fn=lambda x: -x)
    assert [c.result for c in result.callers] == [0, [-10, -11], -20]
    check_invariants(result)


@pytest.mark.parametrize("backend", BACKENDS)
def test_outcome_kinds_reach_their_callers(backend: str) -> None:
    # Pairs at 0, 10, 20, 30 ms each fill a batch of 2.
    schedule = Schedule([Arrival(10 * (i // 2), (i,)) for i in range(8)])
    outcomes = [BatchOutcome(0, kind) for kind in ("raise", "item_failure", "short", "wrong_type")]
    result = run_schedule(
        lambda fn: batched.Batcher(fn, batch_size=2, timeout_ms=5),
        schedule,
        backend=backend,
        outcomes=outcomes,
    )
    got = [c.exception for c in result.callers]
    assert isinstance(got[0], PlannedError)
    assert got[1] is got[0]
    first = result.batches[1].items[0]  # item_failure fails position 0 alone
    assert isinstance(got[first], PlannedError)
    assert got[first].position == 0
    assert result.callers[5 - first].result == 5 - first
    assert [type(e) for e in got[4:]] == [batched.BatchSizeMismatch] * 2 + [TypeError] * 2
    check_invariants(result)


@pytest.mark.parametrize("backend", BACKENDS)
def test_isolate_errors_retries_are_recorded(backend: str) -> None:
    schedule = Schedule([Arrival(0, (i,)) for i in range(4)])
    plan = ("raise", "ok", "raise", "ok", "raise")
    result = run_schedule(
        lambda fn: batched.Batcher(fn, batch_size=4, isolate_errors=True),
        schedule,
        backend=backend,
        outcomes=[BatchOutcome(1, kind) for kind in plan],
    )
    assert [b.retry_of for b in result.batches] == [None, 0, 0, 2, 2]
    assert [len(b.items) for b in result.batches] == [4, 2, 2, 1, 1]
    failed = [c.index for c in result.callers if c.kind == "error"]
    assert failed == list(result.batches[4].items)
    # Every run of fn counts, each retry too.
    assert (result.stats.total_batches, result.stats.total_processed) == (5, 10)
    check_invariants(result)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=150, deadline=None)
@given(
    options=batcher_settings(),
    schedule=arrival_schedules(no_wait_calls=True),
    outcomes=fn_outcomes(),
)
def test_a_correct_batcher_keeps_the_invariants(
    backend: str, options: dict[str, Any], schedule: Schedule, outcomes: tuple[BatchOutcome, ...]
) -> None:
    result = run_schedule(
        lambda fn: batched.Batcher(fn, **options), schedule, backend=backend, outcomes=outcomes
    )
    check_invariants(result)


# Items 0-3 at 0 ms, batch_size 2: batch A (0, 1) runs from 0 to 4 ms; B (2, 3) waits.
FOUR = Schedule([Arrival(0, (i,)) for i in range(4)])


def pair(fn: Any) -> batched.Batcher[Any, Any]:
    return batched.Batcher(fn, batch_size=2, timeout_ms=5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("close_by", CLOSE_KINDS)
def test_an_early_close_is_recorded(backend: str, close_by: str) -> None:
    schedule = attrs.evolve(FOUR, close_at_ms=2, close_by=close_by)
    result = run_schedule(pair, schedule, backend=backend, outcomes=[BatchOutcome(4)] * 2)
    check_invariants(result)
    kinds = sorted((c.kind, type(c.exception).__name__) for c in result.callers)
    if close_by == "exit":  # drained: B runs at once, without its timeout
        assert result.closed_ms == 2
        assert [b.start_ms for b in result.batches] == [0, 4]
        assert kinds == [("result", "NoneType")] * 4
    else:  # every caller closed at 2 ms, batch A cancelled
        assert result.closed_ms is None
        assert [(b.start_ms, b.cancelled) for b in result.batches] == [(0, True)]
        assert kinds == [("error", "BatcherClosed")] * 4
        assert result.owner_cancelled == (close_by == "cancel")
        if close_by == "raise":
            assert isinstance(result.escaped, PlannedError)
            assert result.escaped.batch is None
    assert result.block_ended_ms == (8 if close_by == "exit" else 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_base_exception_from_fn_is_recorded(backend: str) -> None:
    result = run_schedule(pair, FOUR, backend=backend, outcomes=[BatchOutcome(1, "base_exception")])
    check_invariants(result)
    boom = result.batches[0].error
    assert isinstance(boom, BaseException)
    assert not isinstance(boom, Exception)
    assert not result.batches[0].finished
    escaped = result.escaped
    in_group = isinstance(escaped, BaseExceptionGroup) and boom in escaped.exceptions
    assert escaped is boom or in_group
    assert all(isinstance(c.exception, batched.BatcherClosed) for c in result.callers)
    assert all(c.exception.__cause__ is boom for c in result.callers if c.exception)


@pytest.mark.parametrize("backend", BACKENDS)
def test_caller_driven_functions_are_played_without_a_block(backend: str) -> None:
    result = run_schedule(
        lambda fn: batched.dynamically(batch_size=2, timeout_ms=5)(fn), FOUR, backend=backend
    )
    check_invariants(result)
    assert result.driven
    assert result.loop_released is True
    assert result.block_ended_ms is None
    # The batches ran in the callers' own tasks.
    tasks = {c.task for c in result.callers}
    assert all(isinstance(b, BatchRecord) and b.task in tasks for b in result.batches)


# Item 1 twice, the second call while the first is computed, then at 5 ms once more.
REPEATS = Schedule([Arrival(0, (1,)), Arrival(0.5, (1,)), Arrival(5, (1,)), Arrival(5, (2,))])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cache", [False, True], ids=["dedupe", "cache"])
def test_equal_items_share_a_computation_under_a_cache_or_dedupe(
    backend: str, cache: bool
) -> None:
    def factory(fn: Any) -> batched.Batcher[Any, Any]:
        store = MemoryCache(10) if cache else None
        return batched.Batcher(fn, batch_size=4, timeout_ms=0, dedupe=True, cache=store)

    result = run_schedule(factory, REPEATS, backend=backend, item_fn=lambda x: -x)
    check_invariants(result)
    # Each result names the call of fn that computed it: the first two callers share
    # batch 0; at 5 ms item 1 is cached (or computed afresh) with item 2.
    assert [c.result for c in result.callers[:2]] == [(-1, 0, 0)] * 2
    # (Callers 2 and 3 both come at 5 ms: trio starts them in either order.)
    batches = [sorted(b.items) for b in result.batches]
    assert batches == ([[1], [2]] if cache else [[1], [1, 2]])


def memoizing(fn: Any) -> batched.Batcher[Any, Any]:
    """A bug: results kept from one batch to the next, as a cache would, with none set."""
    memo: dict[Any, Any] = {}

    async def stale(items: list[Any]) -> list[Any]:
        fresh = [item for item in items if item not in memo]
        if fresh:
            memo.update(zip(fresh, await fn(fresh), strict=True))
        return [memo[item] for item in items]

    return batched.Batcher(stale, batch_size=4, timeout_ms=0, dedupe=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_invariants_catches_a_stale_shared_result(backend: str) -> None:
    result = run_schedule(memoizing, REPEATS, backend=backend)
    with pytest.raises(AssertionError, match="ended before it came, with no cache"):
        check_invariants(result)


def test_run_schedule_refuses_what_it_cannot_check() -> None:
    with pytest.raises(ValueError, match="distinct"):
        run_schedule(fifo3, Schedule([Arrival(0, (1,)), Arrival(2, (1,))]))
    with pytest.raises(ValueError, match="distinct"):
        run_schedule(fifo3, Schedule([Arrival(0, (1, 1), many=True)]))
    with pytest.raises(ValueError, match="backend"):
        run_schedule(fifo3, KNOWN, backend="curio")
    with pytest.raises(TypeError, match=r"batched\.Batcher"):
        run_schedule(lambda fn: fn, KNOWN)  # type: ignore[arg-type,return-value]
    cached = lambda fn: batched.Batcher(fn, cache=MemoryCache(10))  # noqa: E731
    with pytest.raises(ValueError, match="only ok outcomes and no close"):
        run_schedule(cached, KNOWN, outcomes=[BatchOutcome(kind="raise")])
    with pytest.raises(ValueError, match="only ok outcomes and no close"):
        run_schedule(cached, attrs.evolve(KNOWN, close_at_ms=1))
    driven = lambda fn: batched.dynamically(fn)  # noqa: E731
    with pytest.raises(ValueError, match="no block to close"):
        run_schedule(driven, attrs.evolve(KNOWN, close_at_ms=1))
    with pytest.raises(ValueError, match="base_exception"):
        run_schedule(driven, KNOWN, outcomes=[BatchOutcome(kind="base_exception")])


# -- the checks fail on broken batching -------------------------------------------------


def reversing(fn: Any) -> batched.Batcher[Any, Any]:
    """A bug: the results come back in the wrong order."""

    async def wrong_order(items: list[Any]) -> list[Any]:
        return list(reversed(await fn(items)))

    return batched.Batcher(wrong_order, batch_size=3, timeout_ms=5)


def dropping(fn: Any) -> batched.Batcher[Any, Any]:
    """A bug: the last item of a batch never reaches fn and gets ``None``."""

    async def drop_last(items: list[Any]) -> list[Any]:
        if len(items) == 1:
            return list(await fn(items))
        return [*(await fn(items[:-1])), None]

    return batched.Batcher(drop_last, batch_size=3, timeout_ms=5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("factory", "match"),
    [(reversing, r"got \d+ for item \d+, but fn returned"), (dropping, "never went through fn")],
    ids=["wrong order", "dropped item"],
)
def test_check_invariants_catches_a_broken_batch_function(
    backend: str, factory: Any, match: str
) -> None:
    result = run_schedule(factory, KNOWN, backend=backend)
    with pytest.raises(AssertionError, match=match):
        check_invariants(result)


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_invariants_catches_a_hang(backend: str) -> None:
    async def stuck(items: list[Any]) -> list[Any]:
        await anyio.sleep_forever()
        raise AssertionError  # never

    result = run_schedule(lambda fn: batched.Batcher(stuck), KNOWN, backend=backend)
    assert result.hung
    assert [c.kind for c in result.callers] == ["missing"] * 3
    with pytest.raises(AssertionError, match=r"hang: .* callers \[0, 1, 2\] still had no outcome"):
        check_invariants(result)


def test_hypothesis_finds_and_shrinks_a_misdelivery() -> None:
    @settings(max_examples=200, deadline=None, database=None)
    @given(schedule=arrival_schedules(cancellations=False))
    def prop(schedule: Schedule) -> None:
        check_invariants(run_schedule(reversing, schedule))

    # Shrunk to a batch of two items sent at 0 ms (by one caller or two).
    with pytest.raises(AssertionError, match=r"caller 0 \[b.* at 0 ms\]: got 1 for item 0, but"):
        prop()


@pytest.fixture(scope="module")
def known() -> ScheduleResult:
    return run_schedule(fifo3, KNOWN)


def _evolve_settings(result: ScheduleResult, **changes: Any) -> ScheduleResult:
    return attrs.evolve(result, settings={**result.settings, **changes})


def _swap_results(result: ScheduleResult) -> ScheduleResult:
    a, b = result.callers[0], result.callers[2]
    callers = (
        attrs.evolve(a, result=b.result),
        result.callers[1],
        attrs.evolve(b, result=a.result),
    )
    return attrs.evolve(result, callers=callers)


def _set_batch_items(result: ScheduleResult, index: int, items: tuple[Any, ...]) -> ScheduleResult:
    batches = list(result.batches)
    batches[index] = attrs.evolve(batches[index], items=items)
    return attrs.evolve(result, batches=tuple(batches))


def _evolve_batch(result: ScheduleResult, index: int, **changes: Any) -> ScheduleResult:
    batches = list(result.batches)
    batches[index] = attrs.evolve(batches[index], **changes)
    return attrs.evolve(result, batches=tuple(batches))


def _evolve_caller(result: ScheduleResult, index: int, **changes: Any) -> ScheduleResult:
    callers = list(result.callers)
    callers[index] = attrs.evolve(callers[index], **changes)
    return attrs.evolve(result, callers=tuple(callers))


def _shift_last_batch(result: ScheduleResult, by_ms: float) -> ScheduleResult:
    """Batch 1 (item 20 alone) and its caller's result ``by_ms`` later."""
    batch = result.batches[1]
    moved = _evolve_batch(result, 1, start_ms=batch.start_ms + by_ms, end_ms=batch.end_ms + by_ms)
    done = result.callers[2].done_ms
    assert done is not None
    return _evolve_caller(moved, 2, done_ms=done + by_ms)


def _swap_first_two(result: ScheduleResult) -> ScheduleResult:
    """Batch 0 took items 10 and 0 in the wrong order (results swapped along)."""
    batch = result.batches[0]
    assert batch.results is not None
    return _evolve_batch(result, 0, items=_swap(batch.items), results=_swap(batch.results))


def _swap(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return (values[1], values[0], *values[2:])


TAMPERS: list[tuple[str, Any, str]] = [
    ("hang", lambda r: attrs.evolve(r, hung=True), "hang"),
    ("task left", lambda r: attrs.evolve(r, tasks_left=1), "tasks left running"),
    ("loop kept", lambda r: attrs.evolve(r, loop_released=False), "kept its finished run's"),
    ("escaped", lambda r: attrs.evolve(r, escaped=RuntimeError("x")), "raised RuntimeError"),
    ("misdelivered", _swap_results, "got 20 for item 0"),
    ("late result", lambda r: _evolve_caller(r, 0, done_ms=2.0), "not when its last call"),
    ("unknown item", lambda r: _set_batch_items(r, 1, (99,)), "nobody sent: 99"),
    ("processed twice", lambda r: _set_batch_items(r, 1, (20, 0)), "processed twice"),
    ("over batch_size", lambda r: _evolve_settings(r, batch_size=2), "has 3 items"),
    ("over length", lambda r: _evolve_settings(r, max_batch_length=2), "has length 3"),
    ("two at once", lambda r: _evolve_batch(r, 0, end_ms=6.5), "2 batches run"),
    ("premature", lambda r: _evolve_settings(r, timeout_ms=7), "before timeout_ms=7"),
    ("late batch", lambda r: _shift_last_batch(r, 2.0), r"waited 7\.0 ms > bound 5\.0"),
    (
        "idle slot",  # with a queue bound: the wait bound does not apply
        lambda r: _evolve_settings(r, timeout_ms=3, max_queue_size=10),
        "yet no batch left",
    ),
    ("arrival order", _swap_first_two, "out of arrival order"),
    ("no drain", lambda r: attrs.evolve(r, closed_ms=2.0), "while the batcher drains"),
    ("queue size", lambda r: _evolve_caller(r, 2, queue_size_before=9), "exceeds the 0 items"),
    ("stats", lambda r: attrs.evolve(r, stats=attrs.evolve(r.stats, completed=0)), "stats"),
    ("admission", lambda r: _read_queue(r, 5), "stats.queue_size 5 at 1.0 ms, yet 1 items"),
]


def _read_queue(result: ScheduleResult, size: int) -> ScheduleResult:
    """A reading of ``stats.queue_size`` just after caller 2 (item 20) called, as a
    stepping driver records it: check_invariants replays the admission rule to it."""
    seq = result.callers[2].sent_seq + 0.5  # between that call and the next event
    return attrs.evolve(result, queue_sizes=((seq, 1.0, size),))


def test_a_stepped_reading_of_the_queue_is_replayed(known: ScheduleResult) -> None:
    check_invariants(_read_queue(known, 1))  # item 20 waits alone


@pytest.mark.parametrize(("name", "tamper", "match"), TAMPERS, ids=[t[0] for t in TAMPERS])
def test_check_invariants_catches_a_wrong_record(
    known: ScheduleResult, name: str, tamper: Any, match: str
) -> None:
    """No check is vacuous: each fails on a record of the known run made wrong."""
    check_invariants(known)
    with pytest.raises(AssertionError, match=match):
        check_invariants(tamper(known))


# -- check_batch_invariant --------------------------------------------------------------


def doubled(items: list[int]) -> list[int]:
    return [2 * x for x in items]


async def doubled_async(items: list[int]) -> list[int]:
    await anyio.sleep(0.01)
    return [2 * x for x in items]


def centred(items: list[int]) -> list[float]:
    """A bug: subtracting the batch mean makes each result depend on the batch."""
    mean = sum(items) / len(items)
    return [x - mean for x in items]


def _pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    longest = max(map(len, rows))
    ids = np.zeros((len(rows), longest))
    mask = np.zeros((len(rows), longest), dtype=bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, True
    return ids, mask


def pooled_without_mask(rows: list[list[int]]) -> np.ndarray:
    ids, _ = _pad(rows)
    return np.asarray(ids.mean(axis=1))  # the padding counts: a bug


def pooled_with_mask(rows: list[list[int]]) -> np.ndarray:
    ids, mask = _pad(rows)
    return np.asarray((ids * mask).sum(axis=1) / mask.sum(axis=1))


ROWS = st.lists(st.integers(1, 9), min_size=1, max_size=5)


def test_batch_invariant_holds_for_elementwise_functions() -> None:
    check_batch_invariant(doubled, items=st.integers(), max_examples=50)
    check_batch_invariant(pooled_with_mask, items=ROWS, max_examples=50)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_invariant_takes_async_functions(backend: str) -> None:
    check_batch_invariant(doubled_async, items=st.integers(), backend=backend, max_examples=20)


@pytest.mark.parametrize(
    ("fn", "items"),
    [(centred, st.integers()), (pooled_without_mask, ROWS)],
    ids=["batch mean", "pooled without mask"],
)
def test_batch_invariant_fails_when_the_batch_matters(fn: Any, items: Any) -> None:
    with pytest.raises(AssertionError, match=r"fn gives item .+ a different result") as info:
        check_batch_invariant(fn, items=items, max_examples=100)
    assert "alone" in str(info.value)


def test_batch_invariant_names_the_item() -> None:
    def by_position(items: list[str]) -> list[int]:
        return list(range(len(items)))

    with pytest.raises(AssertionError, match=r"item '' .*alone 0, at position 1 .*: 1"):
        check_batch_invariant(by_position, items=st.text(), max_examples=20)


def test_batch_invariant_fails_on_a_bad_output() -> None:
    with pytest.raises(AssertionError, match="1 results for a batch of 2"):
        check_batch_invariant(lambda items: items[:1], items=st.integers(), max_examples=20)
