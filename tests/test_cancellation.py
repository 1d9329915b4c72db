"""Callers that leave: what happens to their items, their batch-mates and the batcher."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest
from _helpers import Rec, settled, tag

from batched import Batcher

pytestmark = pytest.mark.anyio


async def test_cancelled_while_waiting_is_dropped() -> None:
    """A caller cancelled while its item waits: the item leaves; fn never sees it."""
    fn = Rec()
    async with Batcher(fn, batch_size=2, timeout_ms=10_000) as b:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()
                tg.start_soon(_cancellable, scope, b, "gone")
                await anyio.wait_all_tasks_blocked()
                assert b.stats.queue_size == 1
                scope.cancel()
                await anyio.wait_all_tasks_blocked()
                stats = b.stats
                assert stats.cancelled == 1
                assert stats.queue_size == 0
                # Had "gone" stayed, it would have filled this batch with "a".
                tg.start_soon(b, "a")
                await anyio.wait_all_tasks_blocked()
                assert await b("b") == ("r", "b")
    assert "gone" not in fn.seen()
    assert sorted(fn.batches[0]) == ["a", "b"]


async def _cancellable(scope: anyio.CancelScope, b: Batcher[Any, Any], item: Any) -> None:
    """Call ``b(item)`` inside ``scope``; the test cancels the scope, so no result may come."""
    with scope:
        await b(item)
        raise AssertionError(f"{item!r} got a result though its caller was cancelled")


async def test_cancelled_in_intake_while_slots_busy_is_never_run() -> None:
    """Callers that all left while every slot was busy: their batch is never run."""
    fn = Rec(hold={"block"})
    async with Batcher(fn, batch_size=2, timeout_ms=0, max_concurrent_batches=1) as b:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                first: list[Any] = []
                tg.start_soon(lambda: _store(first, b("block")))
                await fn.running.wait()
                scopes = [anyio.CancelScope() for _ in range(3)]
                for scope, item in zip(scopes, ("x", "y", "z"), strict=True):
                    tg.start_soon(_cancellable, scope, b, item)
                await anyio.wait_all_tasks_blocked()
                assert b.stats.queue_size == 3
                for scope in scopes:
                    scope.cancel()
                await anyio.wait_all_tasks_blocked()
                assert b.stats.queue_size == 0
                fn.release.set()
            assert first == [("r", "block")]
            assert await b.many(["p", "q"]) == [("r", "p"), ("r", "q")]
    assert fn.batches == [["block"], ["p", "q"]]
    stats = b.stats
    assert stats.cancelled == 3
    assert stats.total_batches == 2
    assert stats.total_processed == 3


async def _store(into: list[Any], awaitable: Any) -> None:
    into.append(await awaitable)


@pytest.mark.virtual_time  # exact clock readings or long timeouts
async def test_cancelled_while_batch_runs_spares_batch_mates() -> None:
    """A caller cancelled while its batch runs: batch-mates get results; later calls work."""
    fn = Rec(hold={0})
    results: dict[int, Any] = {}

    async def caller(b: Batcher[int, Any], x: int) -> None:
        results[x] = await b(x)

    async with Batcher(fn, batch_size=3, timeout_ms=10_000) as b:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()
                tg.start_soon(_cancellable, scope, b, 0)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(caller, b, 1)
                tg.start_soon(caller, b, 2)
                await fn.running.wait()
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
                await anyio.wait_all_tasks_blocked()
                assert b.stats.cancelled == 1
                fn.release.set()
            assert results == {1: ("r", 1), 2: ("r", 2)}
            assert await b(3) == ("r", 3)
            assert await b.many([4, 5]) == [("r", 4), ("r", 5)]
    assert sorted(fn.batches[0]) == [0, 1, 2]
    assert fn.cancelled == 0  # the batch itself ran to its end
    stats = b.stats
    assert (stats.completed, stats.cancelled, stats.failed) == (5, 1, 0)
    assert stats.submitted == settled(stats) == 6


@pytest.mark.virtual_time  # exact clock readings or long timeouts
async def test_cancelled_many_call_drops_its_waiting_items() -> None:
    """Cancelling a many call: its waiting items are dropped; its running ones spare others."""
    fn = Rec(hold={"q"})
    got: list[Any] = []
    async with Batcher(fn, batch_size=2, timeout_ms=10_000, max_concurrent_batches=1) as b:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: _store(got, b("q")))
                await anyio.wait_all_tasks_blocked()
                scope = anyio.CancelScope()
                # "m1" fills the batch with "q"; "m2", "m3" wait for the busy slot.
                tg.start_soon(_cancelled_many, scope, b, ["m1", "m2", "m3"])
                await fn.running.wait()
                await anyio.wait_all_tasks_blocked()
                assert b.stats.queue_size == 2
                scope.cancel()
                await anyio.wait_all_tasks_blocked()
                assert b.stats.queue_size == 0
                fn.release.set()
            assert got == [("r", "q")]
            assert await b("after") == ("r", "after")
    assert sorted(fn.batches[0]) == ["m1", "q"]
    assert "m2" not in fn.seen()
    assert "m3" not in fn.seen()
    stats = b.stats
    assert stats.cancelled == 3  # all items of one call count alike
    assert stats.completed == 2
    assert stats.submitted == settled(stats) == 5


async def _cancelled_many(scope: anyio.CancelScope, b: Batcher[Any, Any], items: list[Any]) -> None:
    with scope:
        await b.many(items)
        raise AssertionError(f"{items!r} got results though their caller was cancelled")


async def test_caller_cancelled_as_its_result_is_set() -> None:
    """A caller cancelled in the same step its result is set: the loop lives on, no loop errors."""
    scopes: dict[int, anyio.CancelScope] = {}

    async def fn(items: list[int]) -> list[tuple[str, int]]:
        for x in items:
            if x in scopes:
                scopes[x].cancel()  # the cancellation and the result arrive together
        return tag(items)

    results: dict[int, Any] = {}

    async def caller(b: Batcher[int, Any], x: int, cancel: bool) -> None:
        with anyio.CancelScope() as scope:
            if cancel:
                scopes[x] = scope
            results[x] = await b(x)

    async with Batcher(fn, batch_size=4, timeout_ms=10_000) as b:
        with anyio.fail_after(60):
            for round_ in range(3):
                base = round_ * 4
                async with anyio.create_task_group() as tg:
                    for x in range(base, base + 4):
                        tg.start_soon(caller, b, x, x % 2 == 0)
            assert await b.many([100, 101, 102, 103]) == tag([100, 101, 102, 103])
    assert results == {x: ("r", x) for x in range(12) if x % 2}
    stats = b.stats
    assert (stats.completed, stats.cancelled, stats.failed) == (10, 6, 0)
    assert stats.submitted == settled(stats) == 16
    assert stats.queue_size == 0


async def test_fn_blocks_forever_and_callers_cancelled_leaks_nothing() -> None:
    """fn never returns; callers time out: nothing stays queued and every item is accounted for."""
    fn = Rec(hold=set(range(6)))
    b = Batcher(fn, batch_size=1, timeout_ms=0, max_concurrent_batches=2)
    with anyio.move_on_after(60) as outer:
        async with b:
            with anyio.move_on_after(5) as inner:
                async with anyio.create_task_group() as tg:
                    for x in range(6):  # the first two hang in fn; the rest wait for a slot
                        tg.start_soon(b, x)
            assert inner.cancelled_caught
            stats = b.stats
            assert stats.queue_size == 0
            assert stats.cancelled == 6
            assert stats.submitted == settled(stats) == 6
            assert len(fn.seen()) == 2
            # Both slots stay taken by fn, so a normal exit would wait for it forever.
            outer.cancel()
            await anyio.lowlevel.checkpoint()
    assert outer.cancel_called
    assert fn.cancelled == 2  # leaving the block cancelled the hung batches
    stats = b.stats
    assert stats.queue_size == 0
    assert stats.submitted == settled(stats) == 6
