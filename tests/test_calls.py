"""A call is an awaitable made when the batcher is called, usable wherever a coroutine is.

``b(item)`` queues the item at once and returns what its caller awaits: on asyncio the
call is itself a future, on trio the call parks its task. Both are coroutines to task
groups (``start_soon(b, item)``) and to asyncio (``create_task``, ``gather``,
``wait_for``), and cancelling what awaits it drops the item.
"""

from __future__ import annotations

import asyncio
import collections.abc

import anyio
import pytest
from _helpers import Rec, assert_stats_add_up, asyncio_only, tag

import batched

pytestmark = pytest.mark.anyio


async def test_a_call_is_queued_when_made_and_awaited_for_its_result() -> None:
    rec = Rec()
    async with batched.Batcher(rec, batch_size=2, timeout_ms=10) as b:
        first = b(1)  # queued now: the second call fills the batch
        second = b(2)
        assert isinstance(first, collections.abc.Coroutine)
        assert b.stats.queue_size == 2
        assert [await first, await second] == tag([1, 2])
    assert rec.batches == [[1, 2]]


async def test_start_soon_takes_calls_and_many() -> None:
    rec = Rec()
    async with batched.Batcher(rec, batch_size=4, timeout_ms=10) as b:
        async with anyio.create_task_group() as tg:
            for item in range(3):
                tg.start_soon(b, item)
            tg.start_soon(b.many, [3, 4, 5])
        assert sorted(x for batch in rec.batches for x in batch) == list(range(6))
    assert b.stats.completed == 6
    assert_stats_add_up(b)


async def test_a_task_cancelled_before_it_awaits_its_call_drops_the_item() -> None:
    rec = Rec()
    async with batched.Batcher(rec, batch_size=8, timeout_ms=10) as b:
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.many, [1, 2])
            tg.start_soon(b, 3)
            tg.cancel_scope.cancel()  # before the children first run
        assert await b(4) == ("r", 4)  # the batcher still serves
    assert rec.batches == [[4]]
    stats = b.stats
    assert (stats.cancelled, stats.completed) == (3, 1)
    assert_stats_add_up(b)


async def test_a_call_made_but_failed_raises_where_it_is_awaited() -> None:
    b = batched.Batcher(Rec(), batch_size=2)
    call = b(1)  # not open: nothing raised yet
    with pytest.raises(batched.BatcherClosed):
        await call
    async with b:
        bad = b(1, priority="high")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="'priority'"):
            await bad
    assert b.stats.failed == 2


@asyncio_only
async def test_asyncio_tools_take_a_call() -> None:
    rec = Rec()
    async with batched.Batcher(rec, batch_size=2, timeout_ms=10) as b:
        assert await asyncio.create_task(b(1)) == ("r", 1)
        assert await asyncio.gather(b(2), b(3)) == tag([2, 3])
        assert await asyncio.wait_for(b(4), timeout=60) == ("r", 4)
        held = Rec(hold={5})
    async with batched.Batcher(held, batch_size=1, timeout_ms=0) as b:
        running = asyncio.ensure_future(b(5))
        await held.running.wait()
        waiting = b(6)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(waiting, timeout=0.01)  # cancels the waiting call
        held.release.set()
        assert await running == ("r", 5)
    assert held.batches == [[5]]  # 6 left before its batch formed: fn never saw it
    stats = b.stats
    assert (stats.completed, stats.cancelled) == (1, 1)
    assert_stats_add_up(b)
