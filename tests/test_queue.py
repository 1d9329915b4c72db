"""``max_queue_size``: waiting for room, ``QueueFull``, cancelled items, closing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest
from _helpers import Caller, Recorder, launch, settle

import batched

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskGroup

pytestmark = pytest.mark.anyio


async def start(tg: TaskGroup, make: Callable[[], Awaitable[Any]]) -> Caller:
    """:func:`launch` a caller of ``make()``: it is accepted (or queued for room) when this
    returns; an error other than batched's own fails the test."""
    return await launch(tg, make, catch=batched.BatchedError)


def batcher(fn: Recorder, **settings: Any) -> batched.Batcher[Any, Any]:
    b: batched.Batcher[Any, Any] = batched.Batcher(fn, batch_size=1, timeout_ms=0, **settings)
    fn.batcher = b
    return b


async def hold(tg: TaskGroup, fn: Recorder, b: batched.Batcher[Any, Any]) -> Caller:
    """Occupy the only slot with a running batch: its item no longer counts as queued."""
    caller = await start(tg, lambda: b("hold"))
    await fn.held.wait()
    assert b.stats.queue_size == 0
    return caller


async def test_call_that_does_not_fit_waits_for_room_in_fifo_order() -> None:
    """A call that does not fit waits; waiters get room first come, first served."""
    fn = Recorder(hold_first=True)
    b = batcher(fn, max_queue_size=2)
    with anyio.fail_after(60):
        async with b, anyio.create_task_group() as tg:
            await hold(tg, fn, b)
            a = await start(tg, lambda: b("a"))
            c = await start(tg, lambda: b("b"))
            big = await start(tg, lambda: b.many(["c1", "c2"]))  # needs 2: waits
            d = await start(tg, lambda: b("d"))  # would fit after "a" leaves: must not jump
            assert b.stats.queue_size == 2
            fn.release.set()
    assert fn.batches == [["hold"], ["a"], ["b"], ["c1"], ["c2"], ["d"]]
    assert max(fn.queue_sizes) <= 2
    assert (a.result, c.result, d.result) == (("a", "r"), ("b", "r"), ("d", "r"))
    assert big.result == [("c1", "r"), ("c2", "r")]


async def test_wait_false_raises_queue_full_when_call_does_not_fit() -> None:
    """wait=False and no room: QueueFull (also anyio.WouldBlock); fn never sees the items."""
    fn = Recorder(hold_first=True)
    b = batcher(fn, max_queue_size=2)
    with anyio.fail_after(60):
        async with b, anyio.create_task_group() as tg:
            await hold(tg, fn, b)
            await start(tg, lambda: b("a"))
            with pytest.raises(batched.QueueFull):
                await b.many(["x1", "x2"], wait=False)  # 1 + 2 > 2
            await start(tg, lambda: b("b"))
            with pytest.raises(anyio.WouldBlock) as excinfo:
                await b("y", wait=False)
            assert isinstance(excinfo.value, batched.QueueFull)
            assert isinstance(excinfo.value, batched.BatchedError)
            fn.release.set()
    assert fn.batches == [["hold"], ["a"], ["b"]]
    stats = b.stats
    assert stats.rejected == 3
    assert stats.completed == 3
    assert stats.submitted == stats.completed + stats.failed + stats.cancelled + stats.rejected


async def test_wait_false_succeeds_when_there_is_room() -> None:
    """wait=False with room: accepted like any call."""
    fn = Recorder(hold_first=True)
    b = batcher(fn, max_queue_size=2)
    with anyio.fail_after(60):
        async with b, anyio.create_task_group() as tg:
            await hold(tg, fn, b)
            a = await start(tg, lambda: b("a", wait=False))
            m = await start(tg, lambda: b.many(["m"], wait=False))
            assert b.stats.queue_size == 2
            fn.release.set()
    assert a.result == ("a", "r")
    assert m.result == [("m", "r")]
    assert b.stats.rejected == 0


async def test_wait_false_raises_queue_full_while_others_wait_for_room() -> None:
    """wait=False raises QueueFull when calls already wait for room, even if it would fit."""
    fn = Recorder(hold_first=True)
    b = batcher(fn, max_queue_size=2)
    with anyio.fail_after(60):
        async with b, anyio.create_task_group() as tg:
            await hold(tg, fn, b)
            await start(tg, lambda: b("a"))
            big = await start(tg, lambda: b.many(["c1", "c2"]))  # 1 + 2 > 2: waits
            assert b.stats.queue_size == 1  # room for one more, but someone waits
            with pytest.raises(batched.QueueFull):
                await b("y", wait=False)
            fn.release.set()
    assert fn.batches == [["hold"], ["a"], ["c1"], ["c2"]]
    assert big.result == [("c1", "r"), ("c2", "r")]
    assert b.stats.rejected == 1


async def test_call_larger_than_max_queue_size_is_accepted_when_nothing_waits() -> None:
    """A call with more items than max_queue_size is accepted when the queue is empty."""
    fn = Recorder(hold_first=True)
    fn.release.set()
    b = batcher(fn, max_queue_size=2)
    with anyio.fail_after(60):
        async with b:
            assert await b.many([1, 2, 3, 4, 5], wait=False) == [(i, "r") for i in range(1, 6)]
    assert fn.batches == [[1], [2], [3], [4], [5]]
    assert b.stats.rejected == 0


async def test_call_larger_than_max_queue_size_waits_until_queue_is_empty() -> None:
    """An oversize call waits while items are queued, then gets in once nothing waits."""
    fn = Recorder(hold_first=True)
    b = batcher(fn, max_queue_size=2)
    with anyio.fail_after(60):
        async with b, anyio.create_task_group() as tg:
            await hold(tg, fn, b)
            await start(tg, lambda: b("a"))
            with pytest.raises(batched.QueueFull):
                await b.many([1, 2, 3], wait=False)
            big = await start(tg, lambda: b.many([1, 2, 3]))
            assert b.stats.queue_size == 1
            fn.release.set()
    assert fn.batches == [["hold"], ["a"], [1], [2], [3]]
    assert big.result == [(1, "r"), (2, "r"), (3, "r")]


async def test_cancelled_queued_items_free_room_at_once() -> None:
    """Cancelling a queued call frees its room at once: the next waiter gets in."""
    fn = Recorder(hold_first=True)
    b = batcher(fn, max_queue_size=3)
    with anyio.fail_after(60):
        async with b, anyio.create_task_group() as tg:
            await hold(tg, fn, b)
            a = await start(tg, lambda: b.many(["a1", "a2"]))
            c = await start(tg, lambda: b("b"))
            w = await start(tg, lambda: b("w"))  # 2 + 1 + 1 > 3: waits
            assert b.stats.queue_size == 3
            a.scope.cancel()
            await settle()
            # a's 2 items left and w came in: b + w.
            assert b.stats.queue_size == 2
            d = await start(tg, lambda: b("d", wait=False))  # fits: 3 of 3
            assert b.stats.queue_size == 3
            fn.release.set()
    assert a.scope.cancelled_caught
    assert a.cancelled
    assert fn.batches == [["hold"], ["b"], ["w"], ["d"]]
    assert (c.result, w.result, d.result) == (("b", "r"), ("w", "r"), ("d", "r"))
    assert b.stats.cancelled == 2


async def test_cancelled_room_waiter_no_longer_blocks_others() -> None:
    """A caller cancelled while waiting for room stops counting as waiting at once."""
    fn = Recorder(hold_first=True)
    b = batcher(fn, max_queue_size=2)
    with anyio.fail_after(60):
        async with b, anyio.create_task_group() as tg:
            await hold(tg, fn, b)
            await start(tg, lambda: b("a"))
            big = await start(tg, lambda: b.many(["c1", "c2"]))  # waits for room
            big.scope.cancel()
            await settle()
            d = await start(tg, lambda: b("d", wait=False))  # fits, and nobody waits now
            fn.release.set()
    assert big.scope.cancelled_caught
    assert fn.batches == [["hold"], ["a"], ["d"]]
    assert d.outcome == ("result", ("d", "r"))
    stats = b.stats
    assert (stats.cancelled, stats.rejected) == (2, 0)


async def test_rejected_counts_items_not_calls() -> None:
    """stats.rejected counts the items of rejected calls; submitted still adds up."""
    fn = Recorder(hold_first=True)
    b = batcher(fn, max_queue_size=1)
    with anyio.fail_after(60):
        async with b, anyio.create_task_group() as tg:
            await hold(tg, fn, b)
            await start(tg, lambda: b("a"))
            for n in (1, 2, 4):
                with pytest.raises(batched.QueueFull):
                    await b.many(list(range(n)), wait=False)
            assert b.stats.rejected == 7
            fn.release.set()
    stats = b.stats
    assert stats.rejected == 7
    assert stats.completed == 2
    assert stats.submitted == stats.completed + stats.failed + stats.cancelled + stats.rejected


@pytest.mark.virtual_time
async def test_normal_close_fails_callers_waiting_for_room() -> None:
    """Leaving the block normally: callers waiting for room get BatcherClosed, accepted finish."""
    fn = Recorder(hold_first=True)
    b = batcher(fn, max_queue_size=1)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            async with b:
                held = await hold(tg, fn, b)
                a = await start(tg, lambda: b("a"))
                c = await start(tg, lambda: b("c"))  # waits for room
                m = await start(tg, lambda: b.many(["m1", "m2"]))  # waits for room

                async def release_once_failed() -> None:
                    await c.done.wait()
                    await m.done.wait()
                    fn.release.set()

                tg.start_soon(release_once_failed)
                closed_at = anyio.current_time()
            # The waiters were failed at once, not after the running batch finished.
            assert fn.release.is_set()
    assert anyio.current_time() == closed_at
    assert isinstance(c.error, batched.BatcherClosed)
    assert isinstance(m.error, batched.BatcherClosed)
    assert isinstance(c.error, anyio.ClosedResourceError)
    assert held.result == ("hold", "r")
    assert a.result == ("a", "r")
    assert fn.batches == [["hold"], ["a"]]
    stats = b.stats
    assert (stats.completed, stats.failed) == (2, 3)
