"""The async decorator: ``batched.dynamically``, ``batched.aio`` and ``AsyncBatchProcessor``.

Outside ``async with f:`` the callers drive the batching themselves (caller-driven mode);
inside it, a ``Batcher`` owned by the block serves them (owned mode). Every async test
runs on asyncio (virtual-time loop) and trio (``MockClock``); the property test at the
end runs each hypothesis example in its own ``anyio.run`` on both backends.
"""

from __future__ import annotations

import gc
import inspect
import math
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from _helpers import (
    BACKENDS,
    Caller,
    Fatal,
    Rec,
    assert_nothing_left,
    assert_stats_add_up,
    launch,
    recorded,
    run_releases_its_loop,
    running_tasks,
    settle,
    settled,
    submit,
    tag,
)
from hypothesis import example, given
from hypothesis import strategies as st

import batched
from batched.testing import (
    OUTCOME_KINDS,
    Arrival,
    BatchOutcome,
    Schedule,
    arrival_schedules,
    batcher_settings,
    check_invariants,
    fn_outcomes,
    real_time,
    run_schedule,
)

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

pytestmark = pytest.mark.anyio

# -- helpers ---------------------------------------------------------------------------


def approx(value: float) -> Any:
    return pytest.approx(value, abs=1e-9)


# -- 1. decorator forms ----------------------------------------------------------------


@pytest.mark.virtual_time
async def test_bare_decorator_uses_default_settings() -> None:
    """``@batched.dynamically`` without arguments: batch_size 32, timeout_ms 5."""
    baseline = running_tasks()
    seen: list[list[int]] = []

    @batched.dynamically
    async def double(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [2 * x for x in items]

    assert isinstance(double, batched.BatchedFunction)
    with anyio.fail_after(60):
        start = anyio.current_time()
        assert await double(21) == 42
        assert anyio.current_time() - start == approx(0.005)  # the default timeout_ms
        out: dict[Any, Any] = {}
        async with anyio.create_task_group() as tg:
            for x in range(40):
                tg.start_soon(lambda x=x: _store_at(out, x, double(x)))
    assert out == {x: 2 * x for x in range(40)}
    assert sorted(len(batch) for batch in seen) == [1, 8, 32]  # the default batch_size
    assert_nothing_left(double, baseline)


async def _store_at(out: dict[Any, Any], key: Any, awaitable: Any) -> None:
    out[key] = await awaitable


@pytest.mark.virtual_time
async def test_decorator_with_settings_applies_them() -> None:
    """``@batched.dynamically(batch_size=..., timeout_ms=...)`` batches by those settings."""
    rec = Rec()
    f = recorded(rec, batch_size=2, timeout_ms=7)
    with anyio.fail_after(60):
        start = anyio.current_time()
        assert await f("lone") == ("r", "lone")
        assert anyio.current_time() - start == approx(0.007)
        out: dict[Any, Any] = {}
        async with anyio.create_task_group() as tg:
            await submit(tg, f, "a", out)
            await submit(tg, f, "b", out)  # a full batch of 2 leaves at once
            assert rec.batches[1:] == [["a", "b"]]
    assert out == {"a": ("r", "a"), "b": ("r", "b")}
    assert rec.times[1] == approx(start + 0.007)


def test_metadata_is_preserved() -> None:
    """Name, doc, qualname, module and ``__wrapped__`` are the function's; signature follows."""

    async def embed(texts: list[str], /) -> list[int]:
        """Embed some texts."""
        return [len(t) for t in texts]

    for decorate in (
        batched.dynamically,
        batched.dynamically(batch_size=4),
        batched.aio.dynamically,
        batched.aio.dynamically(timeout_ms=1),
    ):
        f = decorate(embed)
        assert f.__name__ == "embed"
        assert f.__doc__ == "Embed some texts."
        assert f.__qualname__ == embed.__qualname__
        assert f.__module__ == embed.__module__
        assert f.__wrapped__ is embed
        assert inspect.signature(f) == inspect.signature(embed)
        assert "embed" in repr(f)


def test_method_metadata_and_signature() -> None:
    """A method's batched function keeps its metadata; bound, its signature drops ``self``."""

    class Model:
        @batched.dynamically(batch_size=2)
        async def predict(self, rows: list[int]) -> list[int]:
            """Predict rows."""
            return rows

    m = Model()
    assert Model.predict.__name__ == m.predict.__name__ == "predict"
    assert m.predict.__doc__ == "Predict rows."
    assert m.predict.__qualname__.endswith("Model.predict")
    assert list(inspect.signature(Model.predict).parameters) == ["self", "rows"]
    assert list(inspect.signature(m.predict).parameters) == ["rows"]


@pytest.mark.parametrize("decorator", [batched.dynamically, batched.aio.dynamically])
def test_unknown_setting_is_a_type_error_naming_it(decorator: Any) -> None:
    with pytest.raises(TypeError, match="batch_sise"):
        decorator(batch_sise=3)
    with pytest.raises(TypeError, match="bogus"):
        decorator(batch_size=3, bogus=True)


@pytest.mark.parametrize("decorator", [batched.dynamically, batched.aio.dynamically])
@pytest.mark.parametrize(
    ("setting", "value", "error"),
    [
        ("batch_size", 0, ValueError),
        ("batch_size", True, TypeError),
        ("timeout_ms", -1, ValueError),
        ("timeout_ms", math.nan, ValueError),
        ("max_batch_length", 0, ValueError),
        ("max_queue_size", 0, ValueError),
        ("max_concurrent_batches", 0, ValueError),
        ("max_wait_ms", math.inf, ValueError),
        ("strategy", batched.ByPriority, TypeError),
        ("isolate_errors", 1, TypeError),
    ],
)
def test_bad_setting_value_fails_at_decoration_naming_it(
    decorator: Any, setting: str, value: Any, error: type[Exception]
) -> None:
    async def fn(items: list[int]) -> list[int]:
        return items

    with pytest.raises(error, match=setting):
        decorator(**{setting: value})(fn)


# -- 2. call shapes --------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_call_shapes() -> None:
    """One item -> its result; a list -> a list; ``one`` for a list item; ``many``; ``[]``."""
    baseline = running_tasks()
    rec = Rec()
    f = recorded(rec, batch_size=4, timeout_ms=1)
    with anyio.fail_after(60):
        assert await f(1) == ("r", 1)
        assert await f([2, 3]) == [("r", 2), ("r", 3)]
        assert await f([4]) == [("r", 4)]
        assert await f.one([5, 6]) == ("r", [5, 6])
        assert await f.many(x for x in (7, 8, 9)) == tag([7, 8, 9])
        assert await f.many([[10], [11]]) == [("r", [10]), ("r", [11])]
        assert await f.many([12]) == [("r", 12)]
        start = anyio.current_time()
        assert await f([]) == []
        assert await f.many([]) == []
        assert await f.many(iter(())) == []
        assert anyio.current_time() == start  # nothing to wait for
    assert rec.batches == [[1], [2, 3], [4], [[5, 6]], [7, 8, 9], [[10], [11]], [12]]
    stats = f.stats
    assert (stats.submitted, stats.completed, stats.total_batches) == (11, 11, 7)
    assert_nothing_left(f, baseline)


async def test_one_and_many_in_owned_mode() -> None:
    """The same shapes inside ``async with f:``."""
    rec = Rec()
    f = recorded(rec, batch_size=4, timeout_ms=1)
    with anyio.fail_after(60):
        async with f:
            assert await f(1) == ("r", 1)
            assert await f([2, 3]) == tag([2, 3])
            assert await f.one([4]) == ("r", [4])
            assert await f.many(x for x in (5, 6)) == tag([5, 6])
            assert await f([]) == []
    assert rec.batches == [[1], [2, 3], [[4]], [5, 6]]


@pytest.mark.virtual_time
async def test_priority_passes_through() -> None:
    """``priority=`` reaches the strategy: ByPriority orders waiting items by it."""
    baseline = running_tasks()
    rec = Rec(hold={"block"})
    f = recorded(
        rec, batch_size=2, timeout_ms=0, strategy=batched.ByPriority(), max_concurrent_batches=1
    )
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await submit(tg, f, "block", out)
            await rec.running.wait()
            await submit(tg, f, "p5", out, priority=5)
            await submit(tg, f.one, "p1", out, priority=1)
            await submit(tg, f, "p3", out, priority=3.0)
            await submit(tg, f, "p0", out, priority=0)
            assert f.stats.queue_size == 4
            rec.release.set()
    assert rec.batches == [["block"], ["p0", "p1"], ["p3", "p5"]]
    assert out == {item: ("r", item) for item in ("block", "p0", "p1", "p3", "p5")}
    assert_nothing_left(f, baseline)


@pytest.mark.parametrize("priority", ["high", None, True, math.nan])
async def test_bad_priority_fails_the_call_and_leaves_nothing(priority: Any) -> None:
    baseline = running_tasks()
    rec = Rec()
    f = recorded(rec, batch_size=2, timeout_ms=1)
    error = ValueError if isinstance(priority, float) else TypeError
    with anyio.fail_after(60):
        with pytest.raises(error, match="priority"):
            await f(1, priority=priority)
        with pytest.raises(error, match="priority"):
            await f.many([1, 2], priority=priority)
        with pytest.raises(error, match="priority"):
            await f([], priority=priority)
        assert_nothing_left(f, baseline)
        assert await f(3) == ("r", 3)
    assert rec.batches == [[3]]
    stats = f.stats
    assert (stats.failed, stats.completed) == (3, 1)
    assert stats.submitted == settled(stats) == 4


@pytest.mark.virtual_time
async def test_wait_false_passes_through() -> None:
    """``wait=False`` with the queue full raises QueueFull; waiting callers get room later."""
    baseline = running_tasks()
    rec = Rec(hold={"block"})
    f = recorded(rec, batch_size=1, timeout_ms=0, max_queue_size=1)
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await submit(tg, f, "block", out)
            await rec.running.wait()
            await submit(tg, f, "queued", out)
            assert f.stats.queue_size == 1
            with pytest.raises(batched.QueueFull):
                await f("rejected", wait=False)
            with pytest.raises(batched.QueueFull):
                await f.many(["r1", "r2"], wait=False)
            await submit(tg, f, "waits", out)  # waits for room, then goes through
            rec.release.set()
    assert out == {item: ("r", item) for item in ("block", "queued", "waits")}
    assert rec.batches == [["block"], ["queued"], ["waits"]]
    stats = f.stats
    assert (stats.rejected, stats.completed) == (3, 3)
    assert stats.submitted == settled(stats) == 6
    assert_nothing_left(f, baseline)


# -- 3. caller-driven batching ---------------------------------------------------------


@pytest.mark.virtual_time
@pytest.mark.parametrize(("n", "size"), [(7, 3), (6, 3), (1, 4), (5, 1), (9, 4)])
async def test_concurrent_callers_make_ceil_n_over_b_batches(n: int, size: int) -> None:
    """N callers arriving together: full batches leave at once, the rest after timeout_ms."""
    baseline = running_tasks()
    rec = Rec()
    f = recorded(rec, batch_size=size, timeout_ms=10)
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for x in range(n):
                tg.start_soon(lambda x=x: _store_at(out, x, f(x)))
    assert out == {x: ("r", x) for x in range(n)}
    assert len(rec.batches) == math.ceil(n / size)
    assert sorted(rec.seen()) == list(range(n))
    full, rest = divmod(n, size)
    assert [len(batch) for batch in rec.batches] == [size] * full + ([rest] if rest else [])
    assert rec.times == [start] * full + ([approx(start + 0.010)] if rest else [])
    assert_nothing_left(f, baseline)


@pytest.mark.virtual_time
async def test_lone_call_waits_exactly_timeout_ms() -> None:
    rec = Rec()
    f = recorded(rec, batch_size=8, timeout_ms=25)
    with anyio.fail_after(60):
        start = anyio.current_time()
        assert await f("x") == ("r", "x")
        assert anyio.current_time() - start == approx(0.025)
        assert rec.times == [approx(start + 0.025)]
        out: dict[Any, Any] = {}
        async with anyio.create_task_group() as tg:
            second = anyio.current_time()
            await submit(tg, f, "a", out)
            await anyio.sleep(0.015)
            await submit(tg, f, "b", out)  # does not extend the wait of "a"
            await anyio.sleep(0.0099)
            assert len(rec.batches) == 1  # not one moment early
    assert rec.batches[1] == ["a", "b"]
    assert rec.times[1] == approx(second + 0.025)


@pytest.mark.virtual_time
async def test_full_batch_is_cut_at_once() -> None:
    rec = Rec()
    f = recorded(rec, batch_size=3, timeout_ms=1000)
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            await submit(tg, f, "a", out)
            await submit(tg, f, "b", out)
            assert rec.batches == []
            assert f.stats.queue_size == 2
            await submit(tg, f, "c", out)
            assert rec.batches == [["a", "b", "c"]]
        assert anyio.current_time() == start
    assert rec.times == [start]
    assert out == {x: ("r", x) for x in "abc"}


@pytest.mark.virtual_time
async def test_timeout_zero_cuts_at_once() -> None:
    rec = Rec()
    f = recorded(rec, batch_size=10, timeout_ms=0)
    with anyio.fail_after(60):
        start = anyio.current_time()
        assert await f(1) == ("r", 1)
        assert await f.many([2, 3]) == tag([2, 3])
        assert anyio.current_time() == start
    assert rec.batches == [[1], [2, 3]]


@pytest.mark.virtual_time
async def test_two_batches_run_at_once_with_two_slots() -> None:
    """max_concurrent_batches=2: both batches are inside fn at the same time."""
    baseline = running_tasks()
    inside = 0
    both = anyio.Event()

    @batched.dynamically(batch_size=1, timeout_ms=0, max_concurrent_batches=2)
    async def f(items: list[str]) -> list[str]:
        nonlocal inside
        inside += 1
        if inside == 2:
            both.set()
        await both.wait()  # hangs (fail_after) unless the other batch runs meanwhile
        inside -= 1
        return items

    with anyio.fail_after(60):
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(f, "a")
            tg.start_soon(f, "b")
        assert anyio.current_time() == start
    assert both.is_set()
    assert_nothing_left(f, baseline)


@pytest.mark.virtual_time
@pytest.mark.parametrize(("slots", "elapsed"), [(1, 4.0), (2, 2.0), (4, 1.0)])
async def test_concurrency_limit_is_kept(slots: int, elapsed: float) -> None:
    inside = peak = 0

    @batched.dynamically(batch_size=1, timeout_ms=0, max_concurrent_batches=slots)
    async def f(items: list[int]) -> list[int]:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await anyio.sleep(1)
        inside -= 1
        return items

    with anyio.fail_after(60):
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for x in range(4):
                tg.start_soon(f, x)
        assert anyio.current_time() - start == approx(elapsed)
    assert peak == slots
    assert f.stats.total_batches == 4


@pytest.mark.virtual_time
async def test_many_call_uses_free_slots() -> None:
    """The documented limit of caller-driven mode: a caller runs one batch at a time, so
    the two batches of one many() call run one after the other, even with two slots.

    (Inside ``async with f:`` they run at once: see the next test.)
    """
    rec = Rec(duration=1.0)
    f = recorded(rec, batch_size=1, timeout_ms=0, max_concurrent_batches=2)
    with anyio.fail_after(60):
        start = anyio.current_time()
        assert await f.many([1, 2]) == tag([1, 2])
        assert rec.times == [start, start + 1.0]
        assert anyio.current_time() - start == approx(2.0)


@pytest.mark.virtual_time
async def test_many_call_uses_free_slots_in_owned_mode() -> None:
    rec = Rec(duration=1.0)
    f = recorded(rec, batch_size=1, timeout_ms=0, max_concurrent_batches=2)
    with anyio.fail_after(60):
        async with f:
            start = anyio.current_time()
            assert await f.many([1, 2]) == tag([1, 2])
            assert rec.times == [start, start]
            assert anyio.current_time() - start == approx(1.0)


async def test_nothing_left_running_after_the_last_call() -> None:
    """Caller-driven: no task of its own; the engine is dropped when its last caller leaves."""
    rec = Rec(duration=0.003)
    f = recorded(rec, batch_size=3, timeout_ms=2, max_concurrent_batches=2)
    baseline = running_tasks()
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for x in range(10):
                tg.start_soon(lambda x=x: _store_at(out, x, f(x)))
            await settle()
            # Two full batches run in two callers' tasks; four items wait for a slot.
            stats = f.stats
            assert (stats.submitted, settled(stats), stats.queue_size) == (10, 0, 4)
            assert running_tasks() == baseline + 10  # the callers, and nothing else
        assert_nothing_left(f, baseline)
        assert await f.many([10, 11]) == tag([10, 11])
        assert_nothing_left(f, baseline)
    assert out == {x: ("r", x) for x in range(10)}
    assert f.stats.queue_size == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_of_a_finished_run_is_kept(backend: str) -> None:
    """Caller-driven calls keep nothing of their run once the last one returned, whatever
    they did (waited, were cancelled, failed, were rejected), nor does a closed
    ``async with`` block: a function that outlives ``anyio.run`` keeps no loop alive."""
    rec = Rec(duration=0.003)
    f = recorded(rec, batch_size=3, timeout_ms=2, max_concurrent_batches=2, max_queue_size=1)

    async def main() -> None:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for x in range(6):
                    tg.start_soon(f, x)
            with anyio.move_on_after(0.001):
                await f.many([6, 7])
            with pytest.raises(TypeError, match="priority"):
                await f(8, priority="high")
            async with anyio.create_task_group() as tg:
                for x in range(9, 13):
                    tg.start_soon(f, x)
                await settle()
                with pytest.raises(batched.QueueFull):
                    await f(13, wait=False)
            async with f:
                assert await f(14) == ("r", 14)

    assert run_releases_its_loop(backend, main)
    assert_stats_add_up(f)
    assert f.stats.submitted == 15


# -- 4. caller-driven under cancellation -----------------------------------------------


@pytest.mark.virtual_time
async def test_leader_cancelled_while_waiting_hands_over() -> None:
    """The first caller leads (waits for the deadline); cancelled, another takes over."""
    baseline = running_tasks()
    rec = Rec()
    f = recorded(rec, batch_size=4, timeout_ms=100)
    leader = Caller(f, "leader", catch=())
    mates = [Caller(f, x, catch=()) for x in ("a", "b")]
    with anyio.fail_after(60):
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(leader.run)
            await settle()
            await anyio.sleep(0.010)
            for mate in mates:
                tg.start_soon(mate.run)
            await settle()
            assert f.stats.queue_size == 3
            await anyio.sleep(0.040)
            leader.scope.cancel()
            await settle()
            assert f.stats.queue_size == 2
            assert rec.batches == []
    assert leader.scope.cancelled_caught
    assert leader.cancelled
    assert leader.at == approx(start + 0.050)
    assert [m.result for m in mates] == [("r", "a"), ("r", "b")]
    # The new leader times from the oldest item left, not from the departed one.
    assert sorted(rec.batches[0]) == ["a", "b"]
    assert len(rec.batches) == 1
    assert rec.times == [approx(start + 0.110)]
    assert rec.tasks[0] in {m.task_id for m in mates}
    stats = f.stats
    assert (stats.completed, stats.cancelled, stats.failed) == (2, 1, 0)
    assert stats.submitted == settled(stats) == 3
    assert_nothing_left(f, baseline)


@pytest.mark.virtual_time
async def test_follower_cancelled_while_waiting_is_dropped() -> None:
    """A waiting caller (not the leader) cancelled: its item leaves; fn never sees it."""
    baseline = running_tasks()
    rec = Rec()
    f = recorded(rec, batch_size=3, timeout_ms=100)
    first, gone = Caller(f, "first", catch=()), Caller(f, "gone", catch=())
    rest = [Caller(f, x, catch=()) for x in ("second", "third")]
    with anyio.fail_after(60):
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run)
            await settle()
            tg.start_soon(gone.run)
            await settle()
            assert f.stats.queue_size == 2
            gone.scope.cancel()
            await settle()
            assert f.stats.queue_size == 1
            for caller in rest:
                tg.start_soon(caller.run)
                await settle()
    assert gone.scope.cancelled_caught
    assert gone.cancelled
    assert rec.batches == [["first", "second", "third"]]
    assert rec.times == [start]  # full at once: "gone" left no hole
    assert [c.result for c in (first, *rest)] == tag(["first", "second", "third"])
    stats = f.stats
    assert (stats.completed, stats.cancelled) == (3, 1)
    assert stats.submitted == settled(stats) == 4
    assert_nothing_left(f, baseline)


async def _runner_cancelled_during_fn() -> tuple[Rec, batched.BatchedFunction[Any, Any], Any]:
    """Three callers in one batch, run by the first; the runner is cancelled 1 s into fn."""
    rec = Rec(duration=5.0)
    f = recorded(rec, batch_size=3, timeout_ms=10)
    runner = Caller(f, 0, catch=())
    mates = [Caller(f, x, catch=()) for x in (1, 2)]
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await settle()
            for mate in mates:
                tg.start_soon(mate.run)
                await settle()
            assert len(rec.batches) == 1
            await anyio.sleep(1.0)
            runner.scope.cancel()
            await settle()
            assert runner.outcome is None  # still held by fn
            assert runner.at < 0
    return rec, f, (runner, mates)


@pytest.mark.virtual_time
async def test_runner_cancelled_while_fn_runs_spares_batch_mates() -> None:
    """The batch is shielded from its runner's cancellation: fn runs to its end."""
    baseline = running_tasks()
    rec, f, (runner, mates) = await _runner_cancelled_during_fn()
    assert rec.tasks == [runner.task_id]  # the first caller ran the batch in its task
    assert rec.cancelled == 0
    assert rec.ends == [approx(rec.times[0] + 5.0)]
    assert [m.result for m in mates] == [("r", 1), ("r", 2)]
    assert [m.at for m in mates] == [approx(rec.ends[0])] * 2
    assert runner.at == approx(rec.ends[0])  # released only when fn returned
    assert_nothing_left(f, baseline)


@pytest.mark.virtual_time
async def test_runner_cancelled_while_fn_runs_sees_its_cancellation() -> None:
    rec, f, (runner, _) = await _runner_cancelled_during_fn()
    assert runner.at == approx(rec.ends[0])
    stats = f.stats
    assert (stats.completed, stats.cancelled) == (2, 1)
    assert runner.scope.cancelled_caught
    assert runner.cancelled


@pytest.mark.virtual_time
async def test_runner_cancelled_runs_no_further_batch() -> None:
    """Cancelled during its first batch, a many() caller must not start its other items."""
    rec = Rec(duration=1.0)
    f = recorded(rec, batch_size=1, timeout_ms=0)
    with anyio.fail_after(60):
        start = anyio.current_time()
        with anyio.move_on_after(0.5) as scope:
            await f.many([1, 2, 3])
        assert anyio.current_time() - start == approx(1.0)  # the shielded batch ends
    assert rec.batches == [[1]]
    assert scope.cancelled_caught
    stats = f.stats
    assert (stats.completed, stats.cancelled) == (0, 3)


@pytest.mark.virtual_time
async def test_caller_cancelled_while_its_batch_runs_elsewhere() -> None:
    """A batch-mate (not the runner) cancelled while fn runs leaves at once; counted cancelled."""
    baseline = running_tasks()
    rec = Rec(duration=5.0)
    f = recorded(rec, batch_size=2, timeout_ms=10)
    runner, mate = Caller(f, "run", catch=()), Caller(f, "mate", catch=())
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await settle()
            tg.start_soon(mate.run)
            await settle()
            await anyio.sleep(1.0)
            mate.scope.cancel()
            await settle()
            assert mate.scope.cancelled_caught
            assert mate.cancelled
            assert mate.at == approx(rec.times[0] + 1.0)
    assert runner.result == ("r", "run")
    assert rec.tasks == [runner.task_id]
    stats = f.stats
    assert (stats.completed, stats.cancelled) == (1, 1)
    assert stats.submitted == settled(stats) == 2
    assert_nothing_left(f, baseline)


# -- 5. owned mode ---------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_owned_block_serves_calls_and_stats_carry_across_modes() -> None:
    rec = Rec()
    f = recorded(rec, batch_size=2, timeout_ms=1)
    baseline = running_tasks()
    me = anyio.get_current_task().id
    with anyio.fail_after(60):
        assert await f("before") == ("r", "before")  # caller-driven: in this very task
        assert rec.tasks == [me]
        async with f as entered:
            assert entered is f
            assert running_tasks() > baseline  # the block's own task group
            async with anyio.create_task_group() as tg:
                a = await launch(tg, f, "a", catch=())
                assert f.stats.queue_size == 1  # waits in the block's batcher
                b = await launch(tg, f, "b", catch=())
            assert await f.many(["c", "d", "e"]) == tag(["c", "d", "e"])
        # Served by the block, not caller-driven: no caller's task ran a batch.
        assert not {me, a.task_id, b.task_id} & set(rec.tasks[1:])
        assert running_tasks() == baseline
        assert await f("after") == ("r", "after")  # caller-driven again
        assert rec.tasks[-1] == me
    assert (a.result, b.result) == (("r", "a"), ("r", "b"))
    assert rec.batches == [["before"], ["a", "b"], ["c", "d"], ["e"], ["after"]]
    stats = f.stats
    assert (stats.completed, stats.total_batches, stats.total_processed) == (7, 5, 7)
    assert stats.submitted == settled(stats) == 7
    assert_nothing_left(f, baseline)


async def test_entering_twice_raises_and_reentry_after_exit_works() -> None:
    rec = Rec()
    f = recorded(rec, batch_size=1, timeout_ms=0)
    with anyio.fail_after(60):
        async with f:
            with pytest.raises(RuntimeError, match="already open"):
                await f.__aenter__()
            assert await f(1) == ("r", 1)  # the first block still serves
        async with f:
            assert await f(2) == ("r", 2)
            # The second block serves the call: it ran in the block's task, not this one.
            assert rec.tasks[-1] != anyio.get_current_task().id
    assert rec.batches == [[1], [2]]
    assert f.stats.completed == 2


@pytest.mark.virtual_time
async def test_owned_block_exit_drains_without_waiting_timeout() -> None:
    rec = Rec()
    f = recorded(rec, batch_size=10, timeout_ms=10_000)
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            async with f:
                for x in range(3):
                    await submit(tg, f, x, out)
                assert rec.batches == []
                start = anyio.current_time()
            assert rec.batches == [[0, 1, 2]]  # the exit ran what was accepted
            assert anyio.current_time() == start
    assert out == {x: ("r", x) for x in range(3)}
    assert f.stats.completed == 3


async def test_owned_block_closes_on_exception_and_late_calls_drive_themselves() -> None:
    """An exception ends the block: waiting callers get BatcherClosed; f keeps working."""
    rec = Rec()
    f = recorded(rec, batch_size=10, timeout_ms=10_000)
    out: dict[Any, Any] = {}

    class Stop(Exception):
        pass

    async def block(tg: TaskGroup) -> None:
        async with f:
            await submit(tg, f, "waiting", out)
            raise Stop

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            with pytest.raises(Stop):
                await block(tg)
        assert isinstance(out["waiting"], batched.BatcherClosed)
        assert await f.many([1, 2]) == tag([1, 2])
    assert rec.batches == [[1, 2]]


async def test_owned_block_base_exception_closes_it_and_propagates() -> None:
    """A BaseException from fn ends the block: callers get BatcherClosed chained to it."""

    ran_in: list[int] = []  # the task of each batch

    @batched.dynamically(batch_size=2, timeout_ms=1)
    async def f(items: list[str]) -> list[str]:
        ran_in.append(anyio.get_current_task().id)
        if "boom" in items:
            raise Fatal
        return items

    got: dict[str, Any] = {}

    async def call(item: str) -> None:
        try:
            got[item] = await f(item)
        except batched.BatcherClosed as exc:
            got[item] = exc

    async def block() -> None:
        async with f, anyio.create_task_group() as tg:
            tg.start_soon(call, "boom")
            tg.start_soon(call, "x")

    with anyio.fail_after(60):
        with pytest.raises(BaseException) as info:  # Fatal, or a group holding it
            await block()
        if isinstance(info.value, BaseExceptionGroup):
            assert info.value.subgroup(Fatal) is not None
        else:
            assert isinstance(info.value, Fatal)
        assert set(got) == {"boom", "x"}
        for exc in got.values():
            assert isinstance(exc, batched.BatcherClosed)
            assert isinstance(exc.__cause__, Fatal)
        assert await f("after") == "after"
        assert ran_in[-1] == anyio.get_current_task().id  # the block is closed: caller-driven
        async with f:
            assert await f.many(["a", "b"]) == ["a", "b"]


def test_same_function_under_successive_runs() -> None:
    """One decorated function serves asyncio, then trio, then asyncio again; both modes."""
    batches: list[list[int]] = []

    @batched.dynamically(batch_size=2, timeout_ms=1)
    async def f(items: list[int]) -> list[tuple[str, int]]:
        batches.append(list(items))
        return tag(items)

    async def main() -> None:
        baseline = running_tasks()
        with anyio.fail_after(60):
            assert await f.many([1, 2]) == tag([1, 2])
            async with f:
                assert await f(3) == ("r", 3)
            assert_nothing_left(f, baseline)

    for backend in ("asyncio", "trio", "asyncio"):
        assert run_releases_its_loop(backend, main)  # nothing bound to a finished loop
    assert batches == [[1, 2], [3]] * 3
    assert f.stats.completed == 9


# -- 6. methods, static and class methods, callable objects ----------------------------


def model_classes() -> tuple[type[Any], type[Any]]:
    """Fresh classes per test: a batched function's stats live on the class's descriptor."""

    class Model:
        """Each instance batches its own calls with its own ``self``."""

        def __init__(self, name: str, log: list[tuple[str, list[Any]]]) -> None:
            self.name = name
            self.log = log
            self.tasks: list[int] = []  # the task that ran each batch of predict

        @batched.dynamically(batch_size=2, timeout_ms=10)
        async def predict(self, items: list[Any]) -> list[tuple[str, Any]]:
            """Predict."""
            self.log.append((self.name, list(items)))
            self.tasks.append(anyio.get_current_task().id)
            return [(self.name, item) for item in items]

        @batched.dynamically(batch_size=2, timeout_ms=10)
        @staticmethod
        async def static(items: list[Any]) -> list[tuple[str, Any]]:
            return [("static", item) for item in items]

        @batched.dynamically(batch_size=2, timeout_ms=10)
        @classmethod
        async def klass(cls, items: list[Any]) -> list[tuple[str, Any]]:
            return [(cls.__name__, item) for item in items]

    class SubModel(Model):
        pass

    return Model, SubModel


@pytest.mark.virtual_time
async def test_two_instances_batch_separately_at_once() -> None:
    Model, _ = model_classes()
    log: list[tuple[str, list[Any]]] = []
    a, b = Model("a", log), Model("b", log)
    baseline = running_tasks()
    assert a.predict is a.predict
    assert a.predict is not b.predict
    assert isinstance(a.predict, batched.BatchedFunction)
    assert Model.predict is Model.__dict__["predict"]  # on the class: the descriptor
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            # Interleaved, all at once: each instance fills its own batch of 2.
            for model, item in ((a, 1), (b, 2), (a, 3), (b, 4)):
                tg.start_soon(lambda m=model, x=item: _store_at(out, x, m.predict(x)))
        assert anyio.current_time() == start  # two full batches, no timeout waited
    assert out == {1: ("a", 1), 2: ("b", 2), 3: ("a", 3), 4: ("b", 4)}
    assert sorted((name, sorted(items)) for name, items in log) == [("a", [1, 3]), ("b", [2, 4])]
    assert (a.predict.stats.completed, b.predict.stats.completed) == (2, 2)
    assert Model.predict.stats.completed == 0
    assert_nothing_left(a.predict, baseline)
    assert_nothing_left(b.predict, baseline)


async def test_owned_block_per_instance() -> None:
    Model, _ = model_classes()
    log: list[tuple[str, list[Any]]] = []
    a, b = Model("a", log), Model("b", log)
    with anyio.fail_after(60):
        async with a.predict:
            assert await a.predict.many([1, 2]) == [("a", 1), ("a", 2)]
            assert await b.predict.many([3, 4]) == [("b", 3), ("b", 4)]
    assert log == [("a", [1, 2]), ("b", [3, 4])]
    # a's block served a's call; b's call, with no block of its own, drove itself.
    me = anyio.get_current_task().id
    assert len(a.tasks) == 1
    assert a.tasks != [me]
    assert b.tasks == [me]


async def test_static_and_class_methods() -> None:
    Model, SubModel = model_classes()
    with anyio.fail_after(60):
        assert await Model.static(1) == ("static", 1)
        assert await Model("m", []).static([2, 3]) == [("static", 2), ("static", 3)]
        assert await Model.klass(4) == ("Model", 4)
        assert await Model("m", []).klass(5) == ("Model", 5)
        assert await SubModel.klass(6) == ("SubModel", 6)
    assert Model.static is Model("m", []).static
    assert isinstance(Model.static, batched.BatchedFunction)
    assert Model.klass is Model.klass
    assert isinstance(Model.klass, batched.BatchedFunction)
    assert Model.klass.stats.completed == 2
    assert Model.static.stats.completed == 3


async def test_callable_object() -> None:
    class Scorer:
        def __init__(self) -> None:
            self.batches: list[list[int]] = []

        async def __call__(self, items: list[int]) -> list[int]:
            self.batches.append(list(items))
            return [x * x for x in items]

    scorer = Scorer()
    bare = batched.dynamically(scorer)
    f = batched.dynamically(batch_size=3, timeout_ms=1)(scorer)
    assert isinstance(bare, batched.BatchedFunction)
    assert bare.__wrapped__ is f.__wrapped__ is scorer
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for x in range(3):
                tg.start_soon(lambda x=x: _store_at(out, x, f(x)))
        assert await bare.many([4, 5]) == [16, 25]
    assert out == {0: 0, 1: 1, 2: 4}
    assert sorted(map(sorted, scorer.batches)) == [[0, 1, 2], [4, 5]]


async def test_super_call_keeps_the_override() -> None:
    class Base:
        @batched.dynamically(batch_size=2, timeout_ms=0)
        async def m(self, items: list[int]) -> list[tuple[str, int]]:
            return [("base", x) for x in items]

    class Plain(Base):
        async def m(self, x: int) -> Any:  # type: ignore[override]
            return ("plain", await super().m(x))

    class Decorated(Base):
        @batched.dynamically(batch_size=2, timeout_ms=0)
        async def m(self, items: list[int]) -> list[tuple[str, int]]:
            return [("decorated", x) for x in items]

        async def base_m(self, x: int) -> Any:
            return await super().m(x)

    with anyio.fail_after(60):
        plain = Plain()
        assert await plain.m(1) == ("plain", ("base", 1))
        assert await plain.m(2) == ("plain", ("base", 2))  # the override still runs
        decorated = Decorated()
        assert await decorated.base_m(3) == ("base", 3)
        assert await decorated.m(4) == ("decorated", 4)


async def _use_instance(cls: type, n: int) -> weakref.ref[Any]:
    obj = cls()
    baseline = running_tasks()
    out: dict[Any, Any] = {}
    async with anyio.create_task_group() as tg:
        for x in range(n):
            tg.start_soon(lambda x=x: _store_at(out, x, obj.m(x)))
    assert out == {x: ("r", x) for x in range(n)}
    assert_nothing_left(obj.m, baseline)
    return weakref.ref(obj)


class WithDict:
    @batched.dynamically(batch_size=2, timeout_ms=1)
    async def m(self, items: list[Any]) -> list[tuple[str, Any]]:
        return tag(items)


class Slotted:
    __slots__ = ("__weakref__",)

    @batched.dynamically(batch_size=2, timeout_ms=1)
    async def m(self, items: list[Any]) -> list[tuple[str, Any]]:
        return tag(items)


@pytest.mark.parametrize("n", [1, 3])
async def test_instance_is_garbage_collected_after_use(n: int) -> None:
    with anyio.fail_after(60):
        ref = await _use_instance(WithDict, n)
        await anyio.lowlevel.checkpoint()  # let the task drop its last caught exception
    gc.collect()
    assert ref() is None


async def test_slotted_instance_is_garbage_collected_after_use() -> None:
    with anyio.fail_after(60):
        ref = await _use_instance(Slotted, 3)
        await anyio.lowlevel.checkpoint()
    gc.collect()
    assert ref() is None


async def test_a_bound_method_keeps_its_instance() -> None:
    """``WithDict().m`` held without its instance works, as a plain bound method does (the
    sync front does the same: tests/test_sync.py)."""
    m = WithDict().m
    gc.collect()
    with anyio.fail_after(60):
        assert await m(1) == ("r", 1)


# -- 7. errors -------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_fn_error_reaches_every_caller_of_the_batch() -> None:
    baseline = running_tasks()
    error = ValueError("bad batch")
    batches: list[list[str]] = []

    @batched.dynamically(batch_size=3, timeout_ms=10)
    async def f(items: list[str]) -> list[str]:
        batches.append(list(items))
        if "bad" in items:
            raise error
        return items

    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for item in ("bad", "x", "y"):
                await submit(tg, f, item, out)
        assert out == {"bad": error, "x": error, "y": error}
        with pytest.raises(ValueError, match="bad batch"):
            await f.many(["bad", "z"])
        assert await f("later") == "later"  # later batches run
    stats = f.stats
    assert (stats.failed, stats.completed) == (5, 1)
    assert stats.submitted == settled(stats) == 6
    assert_nothing_left(f, baseline)


@pytest.mark.virtual_time
async def test_base_exception_in_caller_driven_mode() -> None:
    """The runner's task gets fn's BaseException; every other caller BatcherClosed from it."""
    baseline = running_tasks()
    runner_task: list[int] = []

    @batched.dynamically(batch_size=3, timeout_ms=10)
    async def f(items: list[str]) -> list[str]:
        runner_task.append(anyio.get_current_task().id)
        if "boom" in items:
            raise Fatal("boom")
        return items

    got: dict[str, BaseException] = {}
    tasks: dict[str, int] = {}

    async def call(item: str) -> None:
        tasks[item] = anyio.get_current_task().id
        try:
            await f(item)
        except BaseException as exc:  # Fatal is what the test is about
            got[item] = exc

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for item in ("a", "boom", "b"):
                tg.start_soon(call, item)
                await settle()
        (runner,) = [item for item, task in tasks.items() if task == runner_task[0]]
        assert isinstance(got[runner], Fatal)
        others = [item for item in tasks if item != runner]
        for item in others:
            assert isinstance(got[item], batched.BatcherClosed)
            assert isinstance(got[item].__cause__, Fatal)
            assert got[item].__cause__ is got[runner]
        assert_nothing_left(f, baseline)
        stats = f.stats
        assert stats.failed == 3
        assert stats.submitted == settled(stats) == 3
        # A fresh engine serves later calls.
        assert await f.many(["c", "d"]) == ["c", "d"]
        assert_nothing_left(f, baseline)
    assert f.stats.completed == 2


@pytest.mark.virtual_time
async def test_base_exception_waiting_callers_of_other_batches_are_closed() -> None:
    """Callers still waiting (not in the failed batch) also get BatcherClosed."""

    baseline = running_tasks()

    @batched.dynamically(batch_size=1, timeout_ms=0, max_concurrent_batches=1)
    async def f(items: list[str]) -> list[str]:
        await anyio.sleep(1)
        if "boom" in items:
            raise Fatal
        return items

    got: dict[str, Any] = {}

    async def call(item: str) -> None:
        try:
            got[item] = await f(item)
        except BaseException as exc:
            got[item] = exc

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "boom")
            await settle()
            tg.start_soon(call, "next")
            await settle()
        assert isinstance(got["boom"], Fatal)
        assert isinstance(got["next"], batched.BatcherClosed)
        assert isinstance(got["next"].__cause__, Fatal)
        assert_nothing_left(f, baseline)
        assert await f("again") == "again"


@pytest.mark.virtual_time  # its two calls must reach one batch within timeout_ms
async def test_batch_size_mismatch_reaches_every_caller() -> None:
    baseline = running_tasks()

    @batched.dynamically(batch_size=2, timeout_ms=1)
    async def f(items: list[int]) -> list[int]:
        return items[:-1]

    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await submit(tg, f, 1, out)
            await submit(tg, f, 2, out)
        for item in (1, 2):
            assert isinstance(out[item], batched.BatchSizeMismatch)
            assert isinstance(out[item], ValueError)
        assert "2" in str(out[1])
        assert "1" in str(out[1])
        with pytest.raises(batched.BatchSizeMismatch):
            await f(3)
    assert f.stats.failed == 3
    assert_nothing_left(f, baseline)


async def test_wrong_result_type_is_a_type_error() -> None:
    baseline = running_tasks()

    @batched.dynamically(batch_size=2, timeout_ms=1)
    async def f(items: list[int]) -> Any:
        return {x: x for x in items}

    with anyio.fail_after(60), pytest.raises(TypeError, match="dict"):
        await f.many([1, 2])
    assert_nothing_left(f, baseline)


# -- 8. batched.aio --------------------------------------------------------------------


async def test_aio_dynamically_runs_a_sync_def_in_a_worker_thread() -> None:
    baseline = running_tasks()
    loop_thread = threading.current_thread()
    threads: list[threading.Thread] = []
    batches: list[list[int]] = []

    @batched.aio.dynamically(batch_size=3, timeout_ms=1)
    def f(items: list[int]) -> list[int]:
        """Square."""
        threads.append(threading.current_thread())
        batches.append(list(items))
        return [x * x for x in items]

    assert isinstance(f, batched.BatchedFunction)
    assert f.__doc__ == "Square."
    out: dict[Any, Any] = {}
    with real_time(), anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for x in range(3):
                tg.start_soon(lambda x=x: _store_at(out, x, f(x)))
        assert await f([4, 5]) == [16, 25]
        async with f:
            assert await f.many([6]) == [36]
    assert out == {0: 0, 1: 1, 2: 4}
    assert threads
    assert all(thread is not loop_thread for thread in threads)
    assert sorted(map(sorted, batches)) == [[0, 1, 2], [4, 5], [6]]
    assert_nothing_left(f, baseline)


async def test_aio_dynamically_on_async_def() -> None:
    @batched.aio.dynamically(batch_size=2, timeout_ms=0)
    async def f(items: list[int]) -> list[int]:
        return [-x for x in items]

    assert isinstance(f, batched.BatchedFunction)
    with anyio.fail_after(60):
        assert await f(1) == -1
        assert await f([2, 3]) == [-2, -3]


def test_aio_names() -> None:
    assert batched.aio.BatchedFunction is batched.BatchedFunction
    assert batched.aio.PriorityStrategy is batched.PriorityStrategy
    assert batched.aio.dynamically.__name__ == "dynamically"
    assert batched.aio.dynamically is not batched.dynamically


async def test_async_batch_processor_seed_shapes() -> None:
    baseline = running_tasks()

    async def square(items: list[int]) -> list[int]:
        return [x * x for x in items]

    proc = batched.aio.AsyncBatchProcessor(
        square,
        batch_size=4,
        timeout_ms=1,
        small_batch_threshold=2,
        max_batch_length=None,
        priority_strategy=batched.PriorityStrategy.NONE,
    )
    with anyio.fail_after(60):
        assert await proc(3) == 9
        assert await proc([1, 2, 3]) == [1, 4, 9]
        stats = proc.stats
        assert isinstance(stats, batched.BatchProcessorStats)
        assert (stats.completed, stats.total_batches) == (4, 2)
        proc.clear_stats()
        assert proc.stats.completed == proc.stats.total_batches == 0
        assert await proc.shutdown() is None
        assert await proc(5) == 25  # nothing was stopped: calls still work
    assert proc.stats.completed == 1
    assert_nothing_left(proc, baseline)


def test_async_batch_processor_batch_item_cls_warns() -> None:
    async def fn(items: list[int]) -> list[int]:
        return items

    with pytest.warns(UserWarning, match="batch_item_cls"):
        batched.aio.AsyncBatchProcessor(fn, batch_item_cls=object)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batched.aio.AsyncBatchProcessor(fn, batch_item_cls=None)


def test_async_batch_processor_validates_settings() -> None:
    async def fn(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError, match="batch_size"):
        batched.aio.AsyncBatchProcessor(fn, batch_size=0)
    with pytest.raises(TypeError, match="strategy"):
        batched.aio.AsyncBatchProcessor(fn, priority_strategy="priority")
    with pytest.raises(TypeError, match="nonsense"):
        batched.aio.AsyncBatchProcessor(fn, nonsense=1)


_WAITING = (("ccc", 0), ("a", 2), ("bb", 1))  # (item, priority), in arrival order


@pytest.mark.virtual_time
@pytest.mark.parametrize(
    ("strategy", "order"),
    [
        (batched.PriorityStrategy.NONE, ["ccc", "a", "bb"]),  # arrival order
        (batched.PriorityStrategy.LENGTH, ["a", "bb", "ccc"]),  # shortest first
        (batched.PriorityStrategy.PRIORITY, ["ccc", "bb", "a"]),  # lowest priority first
    ],
)
@pytest.mark.parametrize("front", ["processor", "decorator"])
async def test_priority_strategy_maps_onto_strategies(
    strategy: batched.PriorityStrategy, order: list[str], front: str
) -> None:
    rec = Rec(hold={"block"})
    settings: dict[str, Any] = {"batch_size": 3, "timeout_ms": 0}
    if front == "processor":
        f: Any = batched.aio.AsyncBatchProcessor(rec, priority_strategy=strategy, **settings)
    else:
        f = batched.dynamically(strategy=strategy, **settings)(rec)
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await submit(tg, f, "block", out)
            await rec.running.wait()
            for item, priority in _WAITING:
                await submit(tg, f, item, out, priority=priority)
            rec.release.set()
    assert rec.batches == [["block"], order]
    assert out == {item: ("r", item) for item in ("block", "ccc", "a", "bb")}


@pytest.mark.virtual_time
async def test_async_batch_processor_max_batch_length() -> None:
    rec = Rec()
    proc = batched.aio.AsyncBatchProcessor(rec, batch_size=10, timeout_ms=50, max_batch_length=4)
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            await submit(tg, proc, "aa", out)
            assert rec.batches == []
            await submit(tg, proc, "bb", out)  # the length budget is reached: it leaves
            assert rec.batches == [["aa", "bb"]]
            await submit(tg, proc, "ccc", out)
    assert rec.batches == [["aa", "bb"], ["ccc"]]
    assert rec.times == [start, approx(start + 0.050)]


# -- 9. stats --------------------------------------------------------------------------


async def _five_calls(f: Any) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    async with anyio.create_task_group() as tg:
        for x in range(5):
            await submit(tg, f, x, out)
    return out


@pytest.mark.virtual_time
@pytest.mark.parametrize("owned", [False, True], ids=["caller-driven", "owned"])
async def test_stats_are_exact(owned: bool) -> None:
    rec = Rec(duration=1.0)
    f = recorded(rec, batch_size=2, timeout_ms=10)
    with anyio.fail_after(60):
        if owned:
            async with f:
                out = await _five_calls(f)
        else:
            out = await _five_calls(f)
    assert out == {x: ("r", x) for x in range(5)}
    assert [len(batch) for batch in rec.batches] == [2, 2, 1]
    stats = f.stats
    assert stats.submitted == stats.completed == stats.total_processed == 5
    assert (stats.failed, stats.cancelled, stats.rejected, stats.queue_size) == (0, 0, 0, 0)
    assert stats.total_batches == 3
    assert stats.avg_batch_size == approx(5 / 3)
    assert stats.avg_processing_time == approx(1.0)


# -- 4b. the property: caller-driven batching under cancellation -----------------------
#
# batched.testing plays a function made by batched.dynamically outside any `async with`
# (its caller-driven mode) and judges it with the same oracle as the Batcher: outcomes,
# timing, order, queue, stats, no task left, the run's loop released. It knows the two
# documented limits of the mode: a caller whose task runs a batch sees its own
# cancellation, and its own result, only when that batch (with its retries) returns
# (test_runner_cancelled_*); and while every caller with waiting items runs a batch, a
# free slot stays idle (test_many_call_uses_free_slots; `async with f:` has no such
# limit), so that time counts as busy in the wait bound.

# Half the runs fail no batch, so the check that the run's event loop was released
# applies (a recorded exception's traceback keeps the loop alive).
DRIVEN_OUTCOMES = st.sampled_from([("ok",), OUTCOME_KINDS]).flatmap(
    lambda kinds: fn_outcomes(kinds=kinds)
)


# pytest-timeout's 120 s guard is for real-time hangs; a failing example can take longer
# than that to shrink, and the virtual hang guard already catches hangs.
# The first caller's scope expires as it calls: its task leads, the cut drops its expired
# item, and its task runs a batch of later items, seeing its cancellation only when that
# batch returns. Its item left the pool at the cut though the caller was still there (an
# oracle that counted it as waiting saw later items taken over it: found by CI).
EXPIRED_LEADER = Schedule(
    arrivals=(
        Arrival(at_ms=0, items=(0,), cancel_after_ms=0),
        *(Arrival(at_ms=0, items=(i,)) for i in (1, -1, 2, -2, 3, -3, 4, -4, 5)),
    ),
)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", BACKENDS)
@example(
    options={
        "batch_size": 1,
        "timeout_ms": 0,
        "max_batch_length": None,
        "strategy": batched.Fifo(),
        "small_batch_threshold": 0,
        "max_wait_ms": 0,
        "max_queue_size": None,
        "max_concurrent_batches": 2,
        "isolate_errors": False,
    },
    schedule=EXPIRED_LEADER,
    outcomes=(BatchOutcome(duration_ms=2, kind="ok"),),
)
@given(
    options=batcher_settings(),
    schedule=arrival_schedules(max_callers=12, max_arrival_ms=20),
    outcomes=DRIVEN_OUTCOMES,
)
def test_caller_driven_property(
    backend: str, options: dict[str, Any], schedule: Schedule, outcomes: tuple[BatchOutcome, ...]
) -> None:
    """Random settings, arrivals, cancellations and batch outcomes: every invariant holds."""
    result = run_schedule(
        lambda fn: batched.dynamically(**options)(fn), schedule, backend=backend, outcomes=outcomes
    )
    assert result.driven
    check_invariants(result)


# -- copies and pickles of instances ---------------------------------------------------


class Scaler:
    """Module level, so that instances and the decorated method pickle by reference."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    @batched.dynamically(batch_size=4, timeout_ms=1)
    async def scale(self, items: list[int]) -> list[int]:
        return [item * self.factor for item in items]


@batched.dynamically(batch_size=4, timeout_ms=1)
async def double(items: list[int]) -> list[int]:
    return [2 * item for item in items]


async def test_a_copied_instance_gets_a_batcher_of_its_own() -> None:
    import copy

    original = Scaler(2)
    assert await original.scale(5) == 10  # bound and cached on first use
    for clone in (copy.copy(original), copy.deepcopy(original)):
        clone.factor = 3
        assert clone.scale is not original.scale
        assert clone.scale is clone.scale
        assert await clone.scale(5) == 15  # its own weights, not its original's
        assert clone.scale.stats.completed == 1
    assert await original.scale(1) == 2
    assert original.scale.stats.completed == 2


async def test_an_instance_pickles_after_use_and_binds_afresh() -> None:
    import pickle

    original = Scaler(2)
    assert await original.scale(5) == 10
    clone = pickle.loads(pickle.dumps(original))
    assert clone.factor == 2
    assert clone.scale is not original.scale
    assert await clone.scale(4) == 8
    assert clone.scale.stats.completed == 1


@pytest.mark.parametrize("order", ["instance first", "method first"])
async def test_a_bound_method_held_elsewhere_deep_copies_to_the_copys_method(
    order: str,
) -> None:
    """As a plain bound method does (before, it deep-copied to None)."""
    import copy

    model = Scaler(2)
    assert await model.scale(1) == 2  # in use: its batcher must not be shared
    state: dict[str, Any] = {"model": model, "op": model.scale}
    if order == "method first":
        state = {"op": model.scale, "model": model}
    clone = copy.deepcopy(state)
    assert clone["op"] is not None, "the deep copy of a bound batched method is None"
    assert clone["op"] is clone["model"].scale
    assert clone["op"] is not model.scale
    clone["model"].factor = 3
    assert await clone["op"](1) == 3
    assert clone["op"].stats.completed == 1
    assert copy.deepcopy(model.scale) is not model.scale  # alone: with a copy of model


async def test_a_bound_method_pickles_to_the_unpickled_instances_method() -> None:
    """As a plain bound method does (before, it unpickled to None)."""
    import pickle

    model = Scaler(2)
    assert await model.scale(1) == 2
    for pair in ((model, model.scale), (model.scale, model)):
        restored = pickle.loads(pickle.dumps(pair))
        restored_op, restored_model = restored if pair[0] is model.scale else restored[::-1]
        assert restored_op is not None, "a pickled bound batched method unpickles to None"
        assert restored_op is restored_model.scale
        assert await restored_op(4) == 8
        assert restored_op.stats.completed == 1  # a batcher of its own
    alone = pickle.loads(pickle.dumps(model.scale))
    assert await alone(5) == 10


def test_a_decorated_function_pickles_by_reference() -> None:
    import pickle

    assert pickle.loads(pickle.dumps(double)) is double
    assert pickle.loads(pickle.dumps(Scaler.scale)) is Scaler.scale


class _RefusingPool:
    """A user's FIFO pool that refuses (raises in ``add``) the item ``refuse``."""

    def __init__(self, refuse: Any) -> None:
        self.refuse = refuse
        self.entries: list[batched.Entry] = []

    def add(self, entry: batched.Entry) -> None:
        if entry.item == self.refuse:
            raise RuntimeError(f"pool refused {entry.item!r}")
        self.entries.append(entry)

    def remove(self, entry: batched.Entry) -> None:
        self.entries.remove(entry)

    def __len__(self) -> int:
        return len(self.entries)

    def oldest(self) -> batched.Entry | None:
        return self.entries[0] if self.entries else None

    def cut(self, max_items: int, budget: float) -> list[batched.Entry]:
        taken, self.entries = self.entries[:max_items], self.entries[max_items:]
        return taken


@dataclass(frozen=True)
class _Refusing:
    refuse: Any

    def new_pool(self) -> _RefusingPool:
        return _RefusingPool(self.refuse)


async def test_a_fault_in_a_users_pool_closes_the_caller_driven_batcher() -> None:
    """The caller leading the batching meets the fault and raises it; every other waiting
    caller gets BatcherClosed chained to it; a later call is served afresh."""
    rec = Rec()
    f = recorded(rec, batch_size=8, timeout_ms=10, strategy=_Refusing("bad"))
    outcomes: dict[Any, BaseException] = {}

    async def call(item: Any) -> None:
        try:
            await f(item)
        except Exception as exc:
            outcomes[item] = exc

    async with anyio.create_task_group() as tg:
        for item in ("a", "b", "bad", "c"):
            tg.start_soon(call, item)
            await settle()  # in this order: trio starts new tasks in any order
    fault = outcomes["a"]  # the first caller leads: it drains the pool
    assert isinstance(fault, RuntimeError)
    assert "pool refused 'bad'" in str(fault)
    for item in ("b", "bad", "c"):
        assert isinstance(outcomes[item], batched.BatcherClosed), outcomes
        assert outcomes[item].__cause__ is fault
    assert rec.batches == []
    assert await f("d") == ("r", "d")
    assert_stats_add_up(f)
