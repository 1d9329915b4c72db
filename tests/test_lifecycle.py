"""The batcher's lifecycle: enter, exit (normal, exception, cancellation), re-entry, loops."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import pytest
from _helpers import BACKENDS, JOIN, Boom, echo, running_tasks, tag, trio_only

from batched import Batcher, BatcherClosed
from batched.cache import MemoryCache
from batched.testing import fresh_backend_options, real_time

pytestmark = pytest.mark.anyio


class Outcomes:
    """Callers started in a task group outside the block; records what each got."""

    def __init__(self) -> None:
        self.got: dict[Any, Any] = {}

    async def call(self, b: Batcher[Any, Any], item: Any) -> None:
        try:
            self.got[item] = await b(item)
        except BatcherClosed as exc:
            self.got[item] = exc

    def closed(self) -> set[Any]:
        return {k for k, v in self.got.items() if isinstance(v, BatcherClosed)}


@pytest.mark.virtual_time  # exact clock readings or long timeouts
async def test_call_before_enter_and_after_exit_is_closed() -> None:
    """A call before __aenter__ or after __aexit__ raises BatcherClosed at once."""
    b = Batcher(echo, batch_size=2, timeout_ms=10_000)
    start = anyio.current_time()
    with anyio.fail_after(60):
        with pytest.raises(BatcherClosed):
            await b(1)
        with pytest.raises(BatcherClosed):
            await b.many([1, 2])
        async with b:
            assert await b.many([1, 2]) == tag([1, 2])
        with pytest.raises(BatcherClosed):
            await b(1)
        with pytest.raises(BatcherClosed):
            await b.many([])
    assert anyio.current_time() == start
    assert b.stats.completed == 2


async def test_reentering_open_batcher_is_runtime_error() -> None:
    """Entering a batcher that is open raises RuntimeError and leaves it working."""
    async with Batcher(echo, batch_size=1, timeout_ms=0) as b:
        with pytest.raises(RuntimeError):
            await b.__aenter__()
        assert await b(1) == ("r", 1)
    with pytest.raises(BatcherClosed):
        await b(2)


@pytest.mark.parametrize("how", ["normal", "exception", "fatal"])
async def test_reentry_after_close_starts_afresh_with_stats_kept(how: str) -> None:
    """Entering again after close (however it closed) works afresh; stats carry over."""
    seen: list[list[Any]] = []

    async def fn(items: list[Any]) -> list[tuple[str, Any]]:
        seen.append(list(items))
        if "fatal" in items:
            raise KeyboardInterrupt
        return tag(items)

    b = Batcher(fn, batch_size=2, timeout_ms=5)
    with pytest.raises((Boom, KeyboardInterrupt)) if how != "normal" else _nothing():
        async with b:
            assert await b.many([1, 2, 3]) == tag([1, 2, 3])
            if how == "exception":
                raise Boom
            if how == "fatal":
                await b("fatal")
    first = b.stats
    async with b:
        assert await b(4) == ("r", 4)
    stats = b.stats
    extra = how == "fatal"
    assert (first.submitted, first.completed, first.failed) == (3 + extra, 3, extra)
    assert (stats.submitted, stats.completed, stats.failed) == (4 + extra, 4, extra)
    assert stats.total_batches == first.total_batches + 1
    assert seen[-1] == [4]


async def test_normal_exit_drains_without_waiting_out_the_timeout() -> None:
    """A normal exit finishes every accepted item at once; room-waiters get BatcherClosed."""
    seen: list[list[Any]] = []

    async def fn(items: list[Any]) -> list[tuple[str, Any]]:
        seen.append(list(items))
        return tag(items)

    b = Batcher(fn, batch_size=100, timeout_ms=10_000, max_queue_size=3)
    out = Outcomes()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            async with b:
                for x in range(3):
                    tg.start_soon(out.call, b, x)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(out.call, b, "no room")
                await anyio.wait_all_tasks_blocked()
                assert b.stats.queue_size == 3
                start = anyio.current_time()
            end = anyio.current_time()
    assert end - start < 1.0  # not the 10 s timeout
    assert {x: out.got[x] for x in range(3)} == {x: ("r", x) for x in range(3)}
    assert out.closed() == {"no room"}
    assert sorted(x for batch in seen for x in batch) == [0, 1, 2]


async def _hold_forever(items: list[Any]) -> list[Any]:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


@pytest.mark.virtual_time  # exact clock readings or long timeouts
@pytest.mark.parametrize("how", ["exception", "cancel"])
async def test_exceptional_exit_releases_callers_and_cancels_batch(how: str) -> None:
    """Exit by exception or cancellation: callers get BatcherClosed at once, async fn is
    cancelled, and the exception propagates unchanged (never an ExceptionGroup)."""
    fn_cancelled = anyio.Event()
    fn_running = anyio.Event()

    async def fn(items: list[Any]) -> list[Any]:
        fn_running.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            fn_cancelled.set()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    b = Batcher(fn, batch_size=2, timeout_ms=10_000, max_concurrent_batches=1, max_queue_size=3)
    out = Outcomes()
    error = Boom("the body failed")
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            with pytest.raises(Boom) if how == "exception" else _nothing() as excinfo:
                with anyio.CancelScope() as scope:
                    async with b:
                        for x in ("run1", "run2"):  # the running batch
                            tg.start_soon(out.call, b, x)
                        await fn_running.wait()
                        for x in ("wait1", "wait2", "wait3"):  # waiting in the queue
                            tg.start_soon(out.call, b, x)
                        await anyio.wait_all_tasks_blocked()
                        tg.start_soon(out.call, b, "no room")
                        await anyio.wait_all_tasks_blocked()
                        start = anyio.current_time()
                        if how == "exception":
                            raise error
                        scope.cancel()
                        await anyio.lowlevel.checkpoint()
                        raise AssertionError("not cancelled")  # pragma: no cover
            released = anyio.current_time()
    if how == "exception":
        assert excinfo is not None
        assert excinfo.value is error
        assert type(excinfo.value) is Boom
    else:
        assert scope.cancelled_caught
    assert released == start  # nothing waited on a timer
    assert fn_cancelled.is_set()
    assert out.closed() == {"run1", "run2", "wait1", "wait2", "wait3", "no room"}
    stats = b.stats
    assert stats.queue_size == 0
    assert stats.failed == 6
    assert stats.submitted == stats.completed + stats.failed + stats.cancelled + stats.rejected


class _nothing:
    """A stand-in for ``pytest.raises`` when nothing must be raised."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def test_exceptional_exit_waits_for_running_sync_fn() -> None:
    """Exit by exception waits for a running sync fn (threads cannot stop); its results drop."""
    started = threading.Event()
    finished: list[list[Any]] = []

    def fn(items: list[Any]) -> list[Any]:
        started.set()
        time.sleep(0.05)
        finished.append(list(items))
        return tag(items)

    b = Batcher(fn, batch_size=1, timeout_ms=0)
    out = Outcomes()

    async def body(tg: anyio.abc.TaskGroup) -> None:
        async with b:
            tg.start_soon(out.call, b, "sync")
            await anyio.to_thread.run_sync(started.wait, 5)
            assert not finished
            raise Boom

    with real_time(), anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            with pytest.raises(Boom):
                await body(tg)
            assert finished == [["sync"]]  # __aexit__ returned only after fn did
    assert out.closed() == {"sync"}


def test_same_batcher_under_three_event_loops() -> None:
    """One Batcher, built outside any loop, works under asyncio twice and then trio."""
    b = Batcher(echo, batch_size=4, timeout_ms=5)  # no running loop here

    async def use(offset: int) -> list[Any]:
        results: dict[int, Any] = {}

        async def one(x: int) -> None:
            results[x] = await b(x)

        async with b, anyio.create_task_group() as tg:
            for x in range(offset, offset + 3):
                tg.start_soon(one, x)
        assert results == {x: ("r", x) for x in range(offset, offset + 3)}
        async with b:
            return await b.many([offset, offset + 1])

    for offset, backend in ((0, "asyncio"), (10, "asyncio"), (20, "trio")):
        got = anyio.run(
            use, offset, backend=backend, backend_options=fresh_backend_options(backend)
        )
        assert got == tag([offset, offset + 1])
    stats = b.stats
    assert (stats.submitted, stats.completed) == (15, 15)


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "cache"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_call_from_another_threads_event_loop_raises(backend: str, keyed: bool) -> None:
    """A batcher open in one thread's event loop, called from another thread's loop:
    a clear RuntimeError at once (it used to hang, or fail obscurely), and the batcher
    goes on serving its own loop. Real threads and loops, bounded waits."""
    opened, done = threading.Event(), threading.Event()
    box: dict[str, Any] = {}
    b = Batcher(echo, batch_size=4, timeout_ms=1, cache=MemoryCache(8) if keyed else None)

    async def owner() -> None:
        async with b:
            opened.set()
            await anyio.to_thread.run_sync(done.wait, JOIN)
            box["own"] = await b(1)

    def own_thread() -> None:
        try:
            anyio.run(owner, backend=backend)
        except BaseException as exc:
            box["error"] = exc
            opened.set()

    async def caller() -> None:
        with anyio.fail_after(JOIN):
            for call in (lambda: b(2), lambda: b.many([3, 4])):
                with pytest.raises(RuntimeError, match="event loop of another thread"):
                    await call()

    thread = threading.Thread(target=own_thread, daemon=True)
    thread.start()
    try:
        assert opened.wait(JOIN)
        anyio.run(caller, backend=backend)
    finally:
        done.set()
        thread.join(JOIN)
    assert not thread.is_alive(), "the batcher's own thread did not finish"
    assert "error" not in box, box
    assert box["own"] == ("r", 1)


@pytest.mark.parametrize("how", ["normal", "exception", "cancel"])
async def test_no_task_left_after_the_block(how: str) -> None:
    """Nothing the batcher started outlives its block, however the block ends."""
    before = running_tasks()
    b = Batcher(echo, batch_size=2, timeout_ms=5)
    with anyio.fail_after(60), anyio.CancelScope() as scope:
        try:
            async with b:
                assert running_tasks() > before
                results = await b.many([1, 2, 3])
                assert results == tag([1, 2, 3])
                if how == "exception":
                    raise Boom
                if how == "cancel":
                    scope.cancel()
                    await anyio.lowlevel.checkpoint()
        except Boom:
            pass
    assert running_tasks() == before


@trio_only
async def test_calls_checkpoint() -> None:
    """await b(x), b.many([x]) and b.many([]) are checkpoints."""
    import trio.testing

    async with Batcher(echo, batch_size=1, timeout_ms=0) as b:
        with trio.testing.assert_checkpoints():
            assert await b(1) == ("r", 1)
        with trio.testing.assert_checkpoints():
            assert await b.many([2]) == [("r", 2)]
        with trio.testing.assert_checkpoints():
            assert await b.many([]) == []
