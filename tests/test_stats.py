"""BatchStats: a frozen snapshot of counters that count items, and timing percentiles."""

from __future__ import annotations

from typing import Any

import anyio
import attrs
import pytest
from _helpers import Boom, echo, settled, tag

from batched import Batcher, BatcherClosed, BatchStats, Failure, QueueFull
from batched.testing import settle

pytestmark = pytest.mark.anyio

PERCENTILES = (
    "wait_p50_ms",
    "wait_p90_ms",
    "wait_p99_ms",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
)


def test_stats_are_a_frozen_attrs_snapshot() -> None:
    """BatchStats is a frozen attrs class; Batcher.stats is a snapshot, not a live view."""
    assert attrs.has(BatchStats)
    b = Batcher(echo)
    stats = b.stats
    assert isinstance(stats, BatchStats)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.completed = 5  # type: ignore[misc]
    assert stats == BatchStats()


def test_all_zero_before_any_sample() -> None:
    """A fresh batcher's stats are all zero; percentiles and averages read 0.0."""
    stats = Batcher(echo).stats
    for field in (*PERCENTILES, "avg_batch_size", "avg_processing_time"):
        value = getattr(stats, field)
        assert value == 0.0
        assert type(value) is float, field
    assert (stats.submitted, stats.queue_size, stats.total_batches, stats.total_processed) == (
        0,
        0,
        0,
        0,
    )
    assert stats.cache_stats is None


async def _cancelled_while_waiting(call: Any) -> None:
    """Await ``call()``, cancelled once every task waits: by a scope without a deadline
    (a caller's deadline would send its batch early, see test_deadlines.py)."""
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:

            async def leave() -> None:
                await settle()
                scope.cancel()

            tg.start_soon(leave)
            await call()
    assert scope.cancelled_caught


@pytest.mark.virtual_time  # exact clock readings or long timeouts
async def test_percentiles_stay_zero_without_a_batch() -> None:
    """Calls that never reach fn (closed, cancelled) add no timing samples."""
    b = Batcher(echo, batch_size=2, timeout_ms=10_000)
    with pytest.raises(BatcherClosed):
        await b(1)
    async with b:
        await _cancelled_while_waiting(lambda: b(2))
    stats = b.stats
    assert (stats.submitted, stats.failed, stats.cancelled) == (2, 1, 1)
    assert all(getattr(stats, field) == 0.0 for field in PERCENTILES), stats
    assert stats.total_batches == 0


async def test_counters_count_items_by_outcome() -> None:
    """completed/failed/cancelled/rejected count items and add up to submitted."""
    release = anyio.Event()
    running = anyio.Event()

    async def fn(items: list[Any]) -> list[Any]:
        if "block" in items:
            running.set()
            await release.wait()
        if "boom" in items:
            raise Boom
        return [Failure(Boom()) if x == "bad" else ("r", x) for x in items]

    b = Batcher(fn, batch_size=3, timeout_ms=0, max_queue_size=3, max_concurrent_batches=1)
    with anyio.fail_after(60):
        async with b, anyio.create_task_group() as tg:
            tg.start_soon(b, "block")  # runs, holding the only slot
            await running.wait()
            cancel = anyio.CancelScope()

            async def doomed() -> None:
                with cancel:
                    await b.many(["c1", "c2"])

            tg.start_soon(doomed)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(QueueFull):
                await b.many(["q1", "q2"], wait=False)  # 2 waiting + 2 > 3
            mid = b.stats
            assert (mid.submitted, mid.queue_size, mid.rejected) == (5, 2, 2)
            cancel.cancel()
            await anyio.wait_all_tasks_blocked()
            assert b.stats.queue_size == 0
            release.set()
            assert await b.many(["m1", "m2", "m3"]) == tag(["m1", "m2", "m3"])
            with pytest.raises(Boom):
                await b.many(["boom", "x"])
            with pytest.raises(Boom):
                await b.many(["ok", "bad"])
    stats = b.stats
    assert stats.completed == 1 + 3  # "block", m1-m3
    assert stats.failed == 2 + 2  # a call's items count alike, its good items included
    assert stats.cancelled == 2
    assert stats.rejected == 2
    assert stats.submitted == 12 == settled(stats)
    assert stats.queue_size == 0


async def test_submitted_counts_items_in_flight() -> None:
    """submitted = settled items + items still waiting or running."""
    release = anyio.Event()

    async def fn(items: list[Any]) -> list[Any]:
        await release.wait()
        return tag(items)

    b = Batcher(fn, batch_size=2, timeout_ms=0, max_concurrent_batches=1)
    with anyio.fail_after(60):
        async with b, anyio.create_task_group() as tg:
            tg.start_soon(b.many, [1, 2])
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(b.many, [3, 4, 5])
            await anyio.wait_all_tasks_blocked()
            stats = b.stats
            assert stats.submitted == 5
            assert settled(stats) == 0
            assert stats.queue_size == 3  # waiting while the slot is busy; 1 and 2 run
            release.set()
    stats = b.stats
    assert stats.completed == stats.submitted == 5
    assert stats.queue_size == 0


@pytest.mark.virtual_time  # exact clock readings or long timeouts
async def test_batch_counters_and_processing_time() -> None:
    """total_processed, total_batches, avg_batch_size and avg_processing_time (virtual s)."""
    sizes: list[int] = []

    async def fn(items: list[Any]) -> list[Any]:
        sizes.append(len(items))
        await anyio.sleep(0.01)
        return tag(items)

    async with Batcher(fn, batch_size=4, timeout_ms=5) as b:
        assert await b.many(range(6)) == tag(list(range(6)))  # a batch of 4, then of 2
        assert await b(6) == ("r", 6)
    stats = b.stats
    assert sizes == [4, 2, 1]
    assert stats.total_batches == 3
    assert stats.total_processed == 7
    assert stats.avg_batch_size == pytest.approx(7 / 3)
    assert stats.avg_processing_time == pytest.approx(0.01)


@pytest.mark.virtual_time  # exact clock readings or long timeouts
async def test_cancelled_items_are_not_processed() -> None:
    """Items dropped before their batch add nothing to total_processed or total_batches."""
    async with Batcher(echo, batch_size=4, timeout_ms=10_000) as b:
        await _cancelled_while_waiting(lambda: b.many([1, 2, 3]))
        assert await b.many([4, 5, 6, 7]) == tag([4, 5, 6, 7])
    stats = b.stats
    assert (stats.total_processed, stats.total_batches) == (4, 1)
    assert (stats.cancelled, stats.completed) == (3, 4)


@pytest.mark.virtual_time  # exact clock readings or long timeouts
async def test_wait_and_latency_of_a_lone_item() -> None:
    """A lone item waits timeout_ms, then fn's time: wait and latency percentiles show it."""

    async def fn(items: list[Any]) -> list[Any]:
        await anyio.sleep(0.01)
        return tag(items)

    async with Batcher(fn, batch_size=8, timeout_ms=5) as b:
        assert await b("alone") == ("r", "alone")
    stats = b.stats
    for field in ("wait_p50_ms", "wait_p90_ms", "wait_p99_ms"):
        assert getattr(stats, field) == pytest.approx(5.0, rel=0.03), field
    for field in ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms"):
        assert getattr(stats, field) == pytest.approx(15.0, rel=0.03), field


@pytest.mark.virtual_time  # exact clock readings or long timeouts
async def test_percentiles_of_a_spread() -> None:
    """101 items served one by one, 10 ms each: waits 0..1000 ms give p50/p90/p99 exactly."""

    async def fn(items: list[Any]) -> list[Any]:
        await anyio.sleep(0.01)
        return tag(items)

    b = Batcher(fn, batch_size=1, timeout_ms=0, max_concurrent_batches=1)
    async with b, anyio.create_task_group() as tg:
        # All arrive at once; waits are 0, 10, ..., 1000 ms. With 101 samples the
        # nearest-rank and the interpolated percentiles agree.
        for x in range(101):
            tg.start_soon(b, x)
    stats = b.stats
    assert stats.total_batches == 101
    assert stats.wait_p50_ms == pytest.approx(500.0, rel=0.03)
    assert stats.wait_p90_ms == pytest.approx(900.0, rel=0.03)
    assert stats.wait_p99_ms == pytest.approx(990.0, rel=0.03)
    assert stats.latency_p50_ms == pytest.approx(510.0, rel=0.03)
    assert stats.latency_p90_ms == pytest.approx(910.0, rel=0.03)
    assert stats.latency_p99_ms == pytest.approx(1000.0, rel=0.03)
    assert stats.avg_processing_time == pytest.approx(0.01)


@pytest.mark.virtual_time  # exact clock readings or long timeouts
async def test_queue_size_shows_items_waiting_behind_busy_slots() -> None:
    """queue_size counts waiting items (not running ones) while every slot is busy."""
    release = anyio.Event()
    running = anyio.Event()

    async def fn(items: list[Any]) -> list[Any]:
        running.set()
        await release.wait()
        return tag(items)

    b = Batcher(fn, batch_size=2, timeout_ms=10_000, max_concurrent_batches=1)
    with anyio.fail_after(60):
        async with b, anyio.create_task_group() as tg:
            assert b.stats.queue_size == 0
            tg.start_soon(b.many, ["a", "b"])  # a full batch: runs at once
            await running.wait()
            await anyio.wait_all_tasks_blocked()
            assert b.stats.queue_size == 0
            for x in ("c", "d", "e"):
                tg.start_soon(b, x)
                await anyio.wait_all_tasks_blocked()
            assert b.stats.queue_size == 3
            release.set()
    assert b.stats.queue_size == 0
    assert b.stats.completed == 5


@pytest.mark.virtual_time  # exact clock readings
async def test_latency_counts_a_wait_for_queue_room_and_wait_does_not() -> None:
    """A call that waits for queue room: its latency runs from the call, its wait from its
    arrival in the queue (when it got room)."""

    async def slow(items: list[int]) -> list[int]:
        await anyio.sleep(0.1)
        return items

    b = Batcher(slow, batch_size=1, timeout_ms=0, max_queue_size=1)
    async with b, anyio.create_task_group() as tg:
        tg.start_soon(b, 1)  # runs from t=0 to 0.1
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(b, 2)  # waits in the queue; runs 0.1 to 0.2
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(b, 3)  # waits for room until 0.1, in the queue until 0.2
    # Waits: 0, 0.1 (2, in the queue from 0), 0.1 (3, in the queue from 0.1).
    # Latencies: 0.1, 0.2, 0.3 (3 called at 0, its result at 0.3).
    stats = b.stats
    assert stats.wait_p99_ms == pytest.approx(100.0, abs=1.0)
    assert stats.latency_p99_ms == pytest.approx(300.0, abs=1.0)
    assert stats.latency_p50_ms == pytest.approx(200.0, abs=1.0)
