"""The sync front-end: ``@batched.dynamically`` on a plain ``def``, called from threads.

These tests run in real time: the serving thread runs its own event loop, and calls come
from OS threads, so virtual time cannot apply. They stay small, synchronise with
``threading.Event``/``Barrier`` (never with sleeps), and bound every wait with a timeout
so that a hang fails fast with a message instead of waiting for pytest-timeout.

Async callers (``acall``) run under ``anyio.run`` on real asyncio and trio loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import pytest
from _helpers import (
    BACKENDS,
    JOIN,
    ROOT,
    Boom,
    Fatal,
    assert_stats_add_up,
    await_until,
    close_bounded,
    sync_calls_not_taken_in,
    tag,
    wait_until,
)

import batched

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# -- helpers -----------------------------------------------------------------------------


class Threads:
    """Callables run in daemon threads; each one's result or exception, by key."""

    def __init__(self) -> None:
        self.threads: dict[Any, threading.Thread] = {}
        self.results: dict[Any, Any] = {}
        self.errors: dict[Any, BaseException] = {}

    def start(self, key: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        def run() -> None:
            try:
                self.results[key] = fn(*args, **kwargs)
            except BaseException as exc:
                self.errors[key] = exc

        thread = threading.Thread(target=run, name=f"caller {key!r}", daemon=True)
        self.threads[key] = thread
        thread.start()

    def join(self, timeout: float = JOIN) -> None:
        deadline = time.monotonic() + timeout
        for key, thread in self.threads.items():
            thread.join(max(0.0, deadline - time.monotonic()))
            assert not thread.is_alive(), f"caller {key!r} still blocked after {timeout} s"

    def outcomes(self) -> dict[Any, Any]:
        return {**self.results, **self.errors}


class ThreadGate:
    """Holds a batch open inside the batch function until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def hold(self) -> None:
        self.entered.set()
        assert self.release.wait(JOIN), "the held batch was never released"

    def wait_entered(self) -> None:
        assert self.entered.wait(JOIN), "the batch function was never called"


def serving_threads(f: Any) -> list[threading.Thread]:
    name = f"batched {f.__qualname__}"
    return [thread for thread in threading.enumerate() if thread.name == name]


@pytest.fixture
def cleanup() -> Iterator[contextlib.ExitStack]:
    """Callbacks run after the test, last registered first (release gates, then close)."""
    with contextlib.ExitStack() as stack:
        yield stack


def closing(cleanup: contextlib.ExitStack, f: Any) -> Any:
    cleanup.callback(close_bounded, f)
    return f


# -- many threads --------------------------------------------------------------------------


@pytest.mark.parametrize("max_concurrent_batches", [1, 3])
def test_threads_each_get_their_own_result(
    cleanup: contextlib.ExitStack, max_concurrent_batches: int
) -> None:
    """8 threads x 50 calls: every caller gets fn of its own item; no item is lost or doubled."""
    batches: list[list[Any]] = []
    lock = threading.Lock()

    @batched.dynamically(batch_size=8, timeout_ms=1, max_concurrent_batches=max_concurrent_batches)
    def fn(items: list[Any]) -> list[Any]:
        with lock:
            batches.append(list(items))
        return tag(items)

    closing(cleanup, fn)

    def caller(t: int) -> list[Any]:
        return [fn((t, i)) for i in range(50)]

    threads = Threads()
    for t in range(8):
        threads.start(t, caller, t)
    threads.join()
    assert not threads.errors
    for t in range(8):
        assert threads.results[t] == [("r", (t, i)) for i in range(50)]
    seen = [item for batch in batches for item in batch]
    assert sorted(seen) == sorted((t, i) for t in range(8) for i in range(50))
    assert all(1 <= len(batch) <= 8 for batch in batches)
    stats = fn.stats
    assert stats.submitted == stats.completed == stats.total_processed == 400
    assert stats.total_batches == len(batches)
    assert_stats_add_up(fn)


def test_calls_from_distinct_threads_share_one_batch(cleanup: contextlib.ExitStack) -> None:
    """8 threads released by a barrier, batch_size=8 and a long timeout: one batch of 8."""
    batches: list[list[Any]] = []

    @batched.dynamically(batch_size=8, timeout_ms=60_000)
    def fn(items: list[Any]) -> list[Any]:
        batches.append(list(items))
        return tag(items)

    closing(cleanup, fn)
    barrier = threading.Barrier(8, timeout=JOIN)

    def caller(t: int) -> Any:
        barrier.wait()
        return fn((t, "x"))

    threads = Threads()
    for t in range(8):
        threads.start(t, caller, t)
    threads.join()
    assert threads.results == {t: ("r", (t, "x")) for t in range(8)}
    assert len(batches) == 1
    assert sorted(t for t, _ in batches[0]) == list(range(8))


@pytest.mark.parametrize("timeout_ms", [0.0, 50.0])
def test_calls_sent_while_fn_runs_join_the_leftover_of_the_batch_before(
    cleanup: contextlib.ExitStack, timeout_ms: float
) -> None:
    """A call of 6 items with batch_size=5 leaves one behind; four one-item calls from
    other threads arrive while fn holds the serving thread. When fn returns, the
    leftover (due by then) and the four leave together: batches [5, 5], not [5, 1, 4]."""
    gate = ThreadGate()
    sizes: list[int] = []

    def fn(items: list[Any]) -> list[Any]:
        sizes.append(len(items))
        if len(sizes) == 1:
            gate.hold()
        return tag(items)

    proc = closing(cleanup, batched.BatchProcessor(fn, batch_size=5, timeout_ms=timeout_ms))
    cleanup.callback(gate.release.set)
    threads = Threads()
    threads.start("six", proc, list(range(6)))
    gate.wait_entered()
    started = time.monotonic()
    for n in range(4):
        threads.start(n, proc, 10 + n)
    wait_until(lambda: sync_calls_not_taken_in(proc) == 4, "four calls sent during fn")
    # The leftover is past its timeout when fn returns (bounded poll on the real clock).
    wait_until(lambda: time.monotonic() - started > timeout_ms / 1000, "the timeout")
    gate.release.set()
    threads.join()
    expected: dict[Any, Any] = {n: ("r", 10 + n) for n in range(4)}
    expected["six"] = tag(range(6))
    assert threads.outcomes() == expected
    assert sizes == [5, 5]


def test_serving_thread_starts_on_first_use_and_is_a_named_daemon(
    cleanup: contextlib.ExitStack,
) -> None:
    @batched.dynamically(batch_size=4, timeout_ms=1)
    def fn(items: list[Any]) -> list[Any]:
        return tag(items)

    closing(cleanup, fn)
    assert isinstance(fn, batched.SyncBatchedFunction)
    assert serving_threads(fn) == []  # nothing runs before the first call
    assert fn(1) == ("r", 1)
    [serving] = serving_threads(fn)
    assert serving.daemon
    assert fn(2) == ("r", 2)
    assert serving_threads(fn) == [serving]  # one thread serves every call
    fn.close()
    assert not serving.is_alive()
    assert serving_threads(fn) == []


@pytest.mark.parametrize("max_concurrent_batches", [1, 2])
def test_where_fn_runs(cleanup: contextlib.ExitStack, max_concurrent_batches: int) -> None:
    """One slot: fn runs in the serving thread itself; more slots: in worker threads."""
    ran_in: list[threading.Thread] = []

    @batched.dynamically(batch_size=4, timeout_ms=1, max_concurrent_batches=max_concurrent_batches)
    def fn(items: list[Any]) -> list[Any]:
        ran_in.append(threading.current_thread())
        return tag(items)

    closing(cleanup, fn)
    assert fn.many([1, 2, 3, 4]) == tag([1, 2, 3, 4])
    [serving] = serving_threads(fn)
    assert ran_in[0] is not threading.current_thread()
    if max_concurrent_batches == 1:
        assert ran_in == [serving]
    else:
        assert ran_in[0] is not serving


# -- call shapes ------------------------------------------------------------------------------


def test_call_shapes(cleanup: contextlib.ExitStack) -> None:
    batches: list[list[Any]] = []

    @batched.dynamically(batch_size=4, timeout_ms=1)
    def fn(items: list[Any]) -> list[Any]:
        batches.append(list(items))
        return tag(items)

    closing(cleanup, fn)
    assert fn(1) == ("r", 1)
    assert fn((1, 2)) == ("r", (1, 2))  # a tuple is one item
    assert fn([1, 2, 3]) == tag([1, 2, 3])
    assert fn([7]) == [("r", 7)]
    assert fn.one([1, 2]) == ("r", [1, 2])  # a list as one item
    assert fn.many([4, 5]) == tag([4, 5])
    assert fn.many(iter([6, 8, 9])) == tag([6, 8, 9])
    assert fn.many([10]) == [("r", 10)]
    assert fn(11, priority=3, wait=False) == ("r", 11)
    assert fn.many([12, 13], priority=-1.5) == tag([12, 13])
    calls_before = len(batches)
    assert fn([]) == []
    assert fn.many([]) == []
    assert len(batches) == calls_before  # an empty call never reaches fn
    assert [[1, 2]] in batches  # one() handed the list to fn as a single item
    stats = fn.stats
    assert stats.submitted == stats.completed == 16
    assert_stats_add_up(fn)


def test_bad_priority_is_an_error_counted_as_failed(cleanup: contextlib.ExitStack) -> None:
    @batched.dynamically(batch_size=4, timeout_ms=1)
    def fn(items: list[Any]) -> list[Any]:
        return tag(items)

    closing(cleanup, fn)
    with pytest.raises(TypeError, match="priority"):
        fn(1, priority="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        fn.many([1, 2], priority=float("nan"))
    wait_until(lambda: fn.stats.failed == 3, "the bad calls to be counted")
    assert fn(1) == ("r", 1)
    stats = fn.stats
    assert (stats.submitted, stats.completed, stats.failed) == (4, 1, 3)


# -- errors -----------------------------------------------------------------------------------


def test_fn_error_reaches_every_caller_of_its_batch(cleanup: contextlib.ExitStack) -> None:
    @batched.dynamically(batch_size=4, timeout_ms=60_000)
    def fn(items: list[Any]) -> list[Any]:
        if "boom" in items:
            raise Boom(sorted(map(str, items)))
        return tag(items)

    closing(cleanup, fn)
    barrier = threading.Barrier(4, timeout=JOIN)

    def caller(item: str) -> Any:
        barrier.wait()
        return fn(item)

    threads = Threads()
    for item in ("boom", "a", "b", "c"):
        threads.start(item, caller, item)
    threads.join()
    assert not threads.results
    errors = list(threads.errors.values())
    assert len(errors) == 4
    assert all(isinstance(error, Boom) for error in errors)
    assert len({id(error) for error in errors}) == 1  # that exception, to every caller
    assert errors[0].args == (["a", "b", "boom", "c"],)
    # The function keeps serving.
    assert fn.many([1, 2, 3, 4]) == tag([1, 2, 3, 4])
    with pytest.raises(Boom):
        fn.many(["boom", "d", "e", "f"])
    assert fn.many([5, 6, 7, 8]) == tag([5, 6, 7, 8])
    stats = fn.stats
    assert (stats.completed, stats.failed, stats.total_batches) == (8, 8, 4)
    assert_stats_add_up(fn)


def test_failure_in_a_slot_fails_that_caller_alone(cleanup: contextlib.ExitStack) -> None:
    @batched.dynamically(batch_size=2, timeout_ms=60_000)
    def fn(items: list[Any]) -> list[Any]:
        return [batched.Failure(Boom(i)) if i == "bad" else ("r", i) for i in items]

    closing(cleanup, fn)
    barrier = threading.Barrier(2, timeout=JOIN)

    def caller(item: str) -> Any:
        barrier.wait()
        return fn(item)

    threads = Threads()
    threads.start("ok", caller, "ok")
    threads.start("bad", caller, "bad")
    threads.join()
    assert threads.results == {"ok": ("r", "ok")}
    assert isinstance(threads.errors["bad"], Boom)
    with pytest.raises(Boom):
        fn.many(["x", "bad"])
    assert fn.stats.total_batches == 2
    assert_stats_add_up(fn)


def test_wrong_result_count_or_type_reaches_every_caller(cleanup: contextlib.ExitStack) -> None:
    @batched.dynamically(batch_size=2, timeout_ms=60_000)
    def fn(items: list[Any]) -> Any:
        if "short" in items:
            return tag(items)[:-1]
        if "dict" in items:
            return {item: item for item in items}
        return tag(items)

    closing(cleanup, fn)
    barrier = threading.Barrier(2, timeout=JOIN)

    def caller(item: str) -> Any:
        barrier.wait()
        return fn(item)

    threads = Threads()
    threads.start("short", caller, "short")
    threads.start("mate", caller, "mate")
    threads.join()
    assert not threads.results
    for error in threads.errors.values():
        assert isinstance(error, batched.BatchSizeMismatch)
        assert isinstance(error, ValueError)
        assert "2" in str(error)
        assert "1" in str(error)
    with pytest.raises(TypeError, match="dict"):
        fn.many(["dict", "x"])
    assert fn.many(["a", "b"]) == tag(["a", "b"])  # later batches still run
    assert_stats_add_up(fn)


def test_calls_after_fn_raised_a_base_exception_do_not_hang(
    cleanup: contextlib.ExitStack,
) -> None:
    @batched.dynamically(batch_size=1, timeout_ms=0)
    def fn(items: list[Any]) -> list[Any]:
        if "boom" in items:
            raise Fatal
        return tag(items)

    closing(cleanup, fn)
    assert fn("ok") == ("r", "ok")
    [serving] = serving_threads(fn)
    with pytest.raises(batched.BatcherClosed):
        fn("boom")
    # The crash ends the serving thread. (A call made while it is still winding down
    # gets BatcherClosed; one made after it ended is the case that hangs.)
    serving.join(JOIN)
    assert not serving.is_alive()
    threads = Threads()
    threads.start("later", fn, "later")
    threads.threads["later"].join(2.0)
    # Settled either way (a result from a fresh thread, or BatcherClosed), never blocked.
    assert not threads.threads["later"].is_alive(), "a call after the crash blocks forever"


def test_a_call_while_the_crashed_serving_loop_closes_does_not_hang() -> None:
    """The window between the end of serving and the close of the serving thread's loop,
    made wide: the loop's ``close`` waits in that thread until a later call was made. A
    call sent then to the stopped loop would be queued where nothing runs it."""
    process = spawn_python(
        """
        import asyncio, threading
        import batched

        closing, go = threading.Event(), threading.Event()
        close = asyncio.SelectorEventLoop.close

        def slow_close(loop):
            if threading.current_thread().name.startswith("batched"):
                closing.set()
                go.wait(10)
            close(loop)

        asyncio.SelectorEventLoop.close = slow_close

        class Fatal(BaseException):
            pass

        @batched.dynamically(batch_size=1, timeout_ms=0)
        def fn(items):
            if "boom" in items:
                raise Fatal
            return items

        assert fn("ok") == "ok"
        try:
            fn("boom")
        except batched.BatcherClosed:
            pass
        assert closing.wait(10)
        out = []

        def later():
            try:
                out.append(fn("later"))
            except batched.BatcherClosed as exc:
                out.append(exc)

        thread = threading.Thread(target=later, daemon=True)
        thread.start()
        thread.join(5)
        go.set()
        assert not thread.is_alive(), "a call made while the loop closes blocks forever"
        print(out)
        fn.close()
        """
    )
    assert finish(process) == (0, "['later']\n", "")


def test_batcher_closed_after_a_crash_is_chained_to_it(cleanup: contextlib.ExitStack) -> None:
    """Made deterministic: a held batch keeps the serving thread from finishing the crash."""
    gate = ThreadGate()

    @batched.dynamically(batch_size=1, timeout_ms=0, max_concurrent_batches=2)
    def fn(items: list[Any]) -> list[Any]:
        if "boom" in items:
            raise Fatal
        gate.hold()
        return tag(items)

    closing(cleanup, fn)
    cleanup.callback(gate.release.set)
    threads = Threads()
    threads.start("held", fn, "held")
    gate.wait_entered()
    with pytest.raises(batched.BatcherClosed) as info:
        fn("boom")
    gate.release.set()
    threads.join()
    assert isinstance(threads.errors["held"], batched.BatcherClosed)
    assert isinstance(info.value.__cause__, Fatal)


# -- the event-loop guard ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocking_call_in_an_event_loop_thread_raises(
    cleanup: contextlib.ExitStack, backend: str
) -> None:
    @batched.dynamically(batch_size=4, timeout_ms=1)
    def fn(items: list[Any]) -> list[Any]:
        return tag(items)

    closing(cleanup, fn)

    async def main() -> None:
        calls: list[Callable[[], Any]] = [
            lambda: fn(1),
            lambda: fn([1, 2]),
            lambda: fn.one(1),
            lambda: fn.many([1, 2]),
        ]
        for call in calls:
            with pytest.raises(RuntimeError, match="acall"):
                call()
        assert serving_threads(fn) == []  # refused before starting anything
        with anyio.fail_after(JOIN):
            assert await fn.acall(1) == ("r", 1)
            # A worker thread of this loop runs no loop: it may block.
            assert await anyio.to_thread.run_sync(fn, 2) == ("r", 2)

    anyio.run(main, backend=backend)
    assert fn.stats.completed == 2


# -- acall ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_acall_results(cleanup: contextlib.ExitStack, backend: str) -> None:
    @batched.dynamically(batch_size=8, timeout_ms=1)
    def fn(items: list[Any]) -> list[Any]:
        return tag(items)

    closing(cleanup, fn)
    got: dict[int, Any] = {}

    async def one(i: int) -> None:
        got[i] = await fn.acall(i)

    async def main() -> None:
        with anyio.fail_after(JOIN):
            assert await fn.acall(1) == ("r", 1)
            assert await fn.acall([1, 2, 3]) == tag([1, 2, 3])
            assert await fn.acall([4]) == [("r", 4)]
            assert await fn.acall([]) == []
            assert await fn.acall_one([5, 6]) == ("r", [5, 6])
            assert await fn.acall(7, priority=2, wait=False) == ("r", 7)
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(one, i)

    anyio.run(main, backend=backend)
    assert got == {i: ("r", i) for i in range(20)}
    stats = fn.stats
    assert stats.submitted == stats.completed == 27
    assert_stats_add_up(fn)


class HeldStart:
    """A FIFO strategy whose first pool, once ``armed``, is made only after ``gate`` is
    set (``entered`` is set then). A batcher makes its pools as it opens, so this holds
    the start of a sync function's serving thread, and whoever waits for that start."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.gate = threading.Event()

    def new_pool(self) -> batched.Pool:
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.gate.wait(JOIN), "the first acall blocked its event loop"
        return batched.Fifo().new_pool()


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_acall_starts_the_serving_thread_without_blocking_its_loop(
    cleanup: contextlib.ExitStack, backend: str
) -> None:
    # The serving thread's start is held until another task of the caller's event loop
    # runs: if the first acall started it in the loop's thread, that task never would.
    held = HeldStart()
    entered, gate = held.entered, held.gate

    @batched.dynamically(batch_size=8, timeout_ms=1, strategy=held)
    def fn(items: list[Any]) -> list[Any]:
        return tag(items)

    held.armed = True
    closing(cleanup, fn)

    async def main() -> None:
        with anyio.fail_after(2 * JOIN):
            async with anyio.create_task_group() as tg:

                async def first() -> None:
                    assert await fn.acall(1) == ("r", 1)

                tg.start_soon(first)
                assert await anyio.to_thread.run_sync(entered.wait, JOIN)
                gate.set()  # only if this loop still runs while the thread starts

    anyio.run(main, backend=backend)
    assert fn.stats.completed == 1


def test_a_callers_outcome_is_counted_when_its_call_returns(
    cleanup: contextlib.ExitStack,
) -> None:
    """A blocking caller reads the stats as soon as its call returns, while the serving
    thread is still handing back the rest of the batch (held there: the wake-up of an
    ``acall`` caller's loop waits for that read). Its own item is counted already."""
    read = threading.Event()

    class HeldWakeUps(asyncio.SelectorEventLoop):
        def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            if threading.current_thread().name.startswith("batched"):
                read.wait(JOIN)  # the serving thread hands back the second item
            return super().call_soon_threadsafe(*args, **kwargs)

    @batched.dynamically(batch_size=2, timeout_ms=60_000)
    def fn(items: list[Any]) -> list[Any]:
        return tag(items)

    closing(cleanup, fn)
    seen: list[batched.BatchStats] = []

    def first() -> Any:
        try:
            return fn("a")
        finally:
            seen.append(fn.stats)
            read.set()

    threads = Threads()
    threads.start("a", first)
    wait_until(lambda: fn.stats.queue_size == 1, "the first item to wait")

    async def second() -> None:
        with anyio.fail_after(JOIN):
            assert await fn.acall("b") == ("r", "b")

    anyio.run(second, backend="asyncio", backend_options={"loop_factory": HeldWakeUps})
    threads.join()
    assert threads.outcomes() == {"a": ("r", "a")}
    assert seen[0].completed >= 1, seen[0]
    assert_stats_add_up(fn)


@pytest.mark.parametrize("backend", BACKENDS)
def test_acall_and_thread_calls_share_a_batch(cleanup: contextlib.ExitStack, backend: str) -> None:
    batches: list[list[Any]] = []

    @batched.dynamically(batch_size=2, timeout_ms=60_000)
    def fn(items: list[Any]) -> list[Any]:
        batches.append(list(items))
        return tag(items)

    closing(cleanup, fn)
    threads = Threads()

    async def main() -> None:
        threads.start("thread", fn, "from a thread")
        with anyio.fail_after(JOIN):
            assert await fn.acall("from a loop") == ("r", "from a loop")

    anyio.run(main, backend=backend)
    threads.join()
    assert threads.results == {"thread": ("r", "from a thread")}
    assert len(batches) == 1
    assert sorted(batches[0]) == ["from a loop", "from a thread"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_cancelled_acall_waiting_in_the_pool_never_reaches_fn(
    cleanup: contextlib.ExitStack, backend: str
) -> None:
    batches: list[list[Any]] = []

    @batched.dynamically(batch_size=2, timeout_ms=60_000)
    def fn(items: list[Any]) -> list[Any]:
        batches.append(list(items))
        return tag(items)

    closing(cleanup, fn)

    async def main() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(fn.acall, "x")
                await await_until(lambda: fn.stats.queue_size == 1, "x to wait in the pool")
                scope.cancel()
        assert scope.cancelled_caught
        await await_until(
            lambda: fn.stats.cancelled == 1 and fn.stats.queue_size == 0, "x to be dropped"
        )
        with anyio.fail_after(JOIN):
            assert await fn.acall(["a", "b"]) == tag(["a", "b"])

    anyio.run(main, backend=backend)
    assert batches == [["a", "b"]]
    stats = fn.stats
    assert (stats.submitted, stats.completed, stats.cancelled) == (3, 2, 1)
    assert_stats_add_up(fn)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cancelled_acall_sent_while_a_batch_is_held_never_reaches_fn(
    cleanup: contextlib.ExitStack, backend: str
) -> None:
    """One slot: fn holds the serving thread, so the acall is still on its way in."""
    batches: list[list[Any]] = []
    gate = ThreadGate()

    @batched.dynamically(batch_size=1, timeout_ms=0)
    def fn(items: list[Any]) -> list[Any]:
        batches.append(list(items))
        if "hold" in items:
            gate.hold()
        return tag(items)

    closing(cleanup, fn)
    cleanup.callback(gate.release.set)
    threads = Threads()
    threads.start("hold", fn, "hold")
    gate.wait_entered()

    async def main() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(fn.acall, "x")
                await anyio.wait_all_tasks_blocked()  # acall has sent x and parked
                scope.cancel()
        assert scope.cancelled_caught
        gate.release.set()
        with anyio.fail_after(JOIN):
            assert await fn.acall("y") == ("r", "y")

    anyio.run(main, backend=backend)
    threads.join()
    assert threads.results == {"hold": ("r", "hold")}
    assert batches == [["hold"], ["y"]]
    stats = fn.stats
    assert (stats.submitted, stats.completed, stats.cancelled) == (3, 2, 1)
    assert_stats_add_up(fn)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cancelled_acall_while_its_batch_runs(cleanup: contextlib.ExitStack, backend: str) -> None:
    """Its batch-mate gets its result; the cancelled caller counts as cancelled."""
    gate = ThreadGate()

    @batched.dynamically(batch_size=2, timeout_ms=60_000, max_concurrent_batches=2)
    def fn(items: list[Any]) -> list[Any]:
        gate.hold()
        return tag(items)

    closing(cleanup, fn)
    cleanup.callback(gate.release.set)
    threads = Threads()

    async def main() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(fn.acall, "x")
                threads.start("mate", fn, "mate")
                await anyio.to_thread.run_sync(gate.wait_entered)
                scope.cancel()
        await await_until(lambda: fn.stats.cancelled == 1, "the cancellation to be counted")
        gate.release.set()

    anyio.run(main, backend=backend)
    threads.join()
    assert threads.outcomes() == {"mate": ("r", "mate")}
    stats = fn.stats
    assert (stats.submitted, stats.completed, stats.cancelled, stats.total_processed) == (
        2,
        1,
        1,
        2,
    )
    assert_stats_add_up(fn)


def test_rejected_then_cancelled_acall_is_counted_once(cleanup: contextlib.ExitStack) -> None:
    @batched.dynamically(batch_size=2, timeout_ms=60_000, max_queue_size=1)
    def fn(items: list[Any]) -> list[Any]:
        return tag(items)

    closing(cleanup, fn)
    threads = Threads()
    threads.start("q", fn, "q")
    wait_until(lambda: fn.stats.queue_size == 1, "q to take the only room")

    async def main() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(fn.acall, "r", wait=False))
                await anyio.wait_all_tasks_blocked()  # sent, parked on its future
                # Block this loop (no await) until the serving thread has rejected the call
                # and posted the wake-up, then cancel before the loop can deliver it.
                wait_until(lambda: fn.stats.rejected == 1, "r to be rejected")
                scope.cancel()

    anyio.run(main, backend="asyncio")
    fn.close()
    threads.join()
    assert threads.results == {"q": ("r", "q")}
    assert_stats_add_up(fn)


# -- close ------------------------------------------------------------------------------------


def test_close_drains_held_and_waiting_calls(cleanup: contextlib.ExitStack) -> None:
    gate = ThreadGate()

    @batched.dynamically(batch_size=2, timeout_ms=60_000, max_concurrent_batches=2)
    def fn(items: list[Any]) -> list[Any]:
        if "a" in items:
            gate.hold()
        return tag(items)

    closing(cleanup, fn)
    cleanup.callback(gate.release.set)
    threads = Threads()
    barrier = threading.Barrier(2, timeout=JOIN)

    def caller(item: str) -> Any:
        barrier.wait()
        return fn(item)

    threads.start("a", caller, "a")
    threads.start("b", caller, "b")
    gate.wait_entered()  # batch [a, b] is held open
    threads.start("c", fn, "c")  # c waits in the pool; its timeout is a minute away
    wait_until(lambda: fn.stats.queue_size == 1, "c to wait in the pool")
    [serving] = serving_threads(fn)
    closer = Threads()
    closer.start("close", fn.close)
    # close() has begun once c is served: its timeout is a minute away, but the drain
    # sends it at once, on the free slot.
    wait_until(lambda: "c" in threads.outcomes(), "close() to begin and send c")
    assert closer.threads["close"].is_alive()  # close() blocks while the batch is held
    gate.release.set()
    closer.join()
    threads.join()
    assert closer.outcomes() == {"close": None}
    assert threads.outcomes() == {"a": ("r", "a"), "b": ("r", "b"), "c": ("r", "c")}
    assert not serving.is_alive()
    with pytest.raises(batched.BatcherClosed):
        fn("d")
    stats = fn.stats  # the refused call counts as submitted and failed, as Batcher's do
    assert (stats.submitted, stats.completed, stats.failed) == (4, 3, 1)
    assert_stats_add_up(fn)


def test_calls_after_close_raise_batcher_closed(cleanup: contextlib.ExitStack) -> None:
    @batched.dynamically(batch_size=4, timeout_ms=1)
    def fn(items: list[Any]) -> list[Any]:
        return tag(items)

    closing(cleanup, fn)
    assert fn(1) == ("r", 1)
    [serving] = serving_threads(fn)
    fn.close()
    assert not serving.is_alive()
    assert serving_threads(fn) == []
    fn.close()  # idempotent
    for call in (lambda: fn(1), lambda: fn([1, 2]), lambda: fn.one(1), lambda: fn.many([1, 2])):
        with pytest.raises(batched.BatcherClosed) as info:
            call()
        assert isinstance(info.value, anyio.ClosedResourceError)
        assert isinstance(info.value, batched.BatchedError)

    async def main() -> None:
        with pytest.raises(batched.BatcherClosed):
            await fn.acall(1)
        with pytest.raises(batched.BatcherClosed):
            await fn.acall([1, 2])

    anyio.run(main, backend="asyncio")
    assert serving_threads(fn) == []  # a refused call starts nothing


@pytest.mark.parametrize("slots", [1, 2], ids=["serving-thread", "worker-threads"])
def test_close_from_inside_fn_does_not_wait_for_its_own_batch(
    cleanup: contextlib.ExitStack, slots: int
) -> None:
    # With one slot fn runs in the serving thread, with more in worker threads: either way
    # close() there cannot wait for the serving thread, which waits for this batch.
    @batched.dynamically(batch_size=4, timeout_ms=1, max_concurrent_batches=slots)
    def fn(items: list[Any]) -> list[Any]:
        if "close" in items:
            fn.close()
        return tag(items)

    closing(cleanup, fn)
    outcome: list[Any] = []
    caller = threading.Thread(target=lambda: outcome.append(fn("close")), daemon=True)
    caller.start()
    caller.join(JOIN)
    assert not caller.is_alive(), "close() inside fn waited for its own batch"
    assert outcome == [("r", "close")]  # the batch it was in still finished
    with pytest.raises(batched.BatcherClosed):
        fn(1)
    for thread in serving_threads(fn):
        thread.join(JOIN)
    assert serving_threads(fn) == []


def test_close_before_first_use(cleanup: contextlib.ExitStack) -> None:
    @batched.dynamically
    def fn(items: list[Any]) -> list[Any]:
        return tag(items)

    closing(cleanup, fn)
    fn.close()
    fn.close()
    assert serving_threads(fn) == []
    with pytest.raises(batched.BatcherClosed):
        fn(1)


def test_call_after_close_is_counted_as_failed(cleanup: contextlib.ExitStack) -> None:
    @batched.dynamically(batch_size=4, timeout_ms=1)
    def fn(items: list[Any]) -> list[Any]:
        return tag(items)

    closing(cleanup, fn)
    fn.close()
    with pytest.raises(batched.BatcherClosed):
        fn(1)
    stats = fn.stats
    assert (stats.submitted, stats.failed) == (1, 1)


def test_with_block_reopens_and_closes(cleanup: contextlib.ExitStack) -> None:
    @batched.dynamically(batch_size=4, timeout_ms=1)
    def fn(items: list[Any]) -> list[Any]:
        return tag(items)

    closing(cleanup, fn)
    previous: threading.Thread | None = None
    for round_ in range(2):
        with fn as entered:
            assert entered is fn
            assert fn(round_) == ("r", round_)
            [serving] = serving_threads(fn)
            assert serving is not previous  # a fresh serving thread each time
        assert not serving.is_alive()
        with pytest.raises(batched.BatcherClosed):
            fn(1)
        previous = serving
    fn.close()  # closing a closed function is fine
    with fn:  # reopens after close() too
        assert fn.many([1, 2]) == tag([1, 2])
    stats = fn.stats  # the counters carry over across serving threads; refused calls fail
    assert (stats.submitted, stats.completed, stats.failed) == (6, 4, 2)
    assert_stats_add_up(fn)


@pytest.mark.parametrize("backend", BACKENDS)
def test_aclose(cleanup: contextlib.ExitStack, backend: str) -> None:
    @batched.dynamically(batch_size=4, timeout_ms=1)
    def fn(items: list[Any]) -> list[Any]:
        return tag(items)

    closing(cleanup, fn)

    async def main() -> None:
        with anyio.fail_after(JOIN):
            assert await fn.acall(1) == ("r", 1)
            [serving] = serving_threads(fn)
            await fn.aclose()
            assert not serving.is_alive()
            with pytest.raises(batched.BatcherClosed):
                await fn.acall(2)
            await fn.aclose()  # idempotent

    anyio.run(main, backend=backend)
    assert serving_threads(fn) == []


# -- methods ----------------------------------------------------------------------------------


class Model:
    ran_in: dict[str, threading.Thread]

    def __init__(self, name: str) -> None:
        self.name = name

    @batched.dynamically(batch_size=4, timeout_ms=1)
    def predict(self, items: list[Any]) -> list[Any]:
        Model.ran_in[self.name] = threading.current_thread()
        return [(self.name, item) for item in items]


@pytest.fixture
def models() -> Iterator[dict[str, threading.Thread]]:
    Model.ran_in = {}
    yield Model.ran_in
    del Model.ran_in


def test_each_instance_has_its_own_function_and_thread(
    cleanup: contextlib.ExitStack, models: dict[str, threading.Thread]
) -> None:
    a, b = Model("a"), Model("b")
    closing(cleanup, a.predict)
    closing(cleanup, b.predict)
    assert a.predict is a.predict
    assert a.predict is not b.predict
    assert a.predict(1) == ("a", 1)
    assert b.predict([1, 2]) == [("b", 1), ("b", 2)]
    assert a.predict.many([3]) == [("a", 3)]
    assert models["a"] is not models["b"]  # fn runs in each instance's serving thread
    assert models["a"].daemon
    assert models["b"].daemon
    assert a.predict.stats.completed == 2
    assert b.predict.stats.completed == 2
    b.predict.close()
    assert not models["b"].is_alive()
    assert a.predict(4) == ("a", 4)  # closing one instance's function leaves the other


def test_instance_gc_stops_its_serving_thread(models: dict[str, threading.Thread]) -> None:
    a = Model("a")
    assert a.predict(1) == ("a", 1)
    serving = models["a"]
    ref = weakref.ref(a)
    del a
    gc.collect()
    assert ref() is None, "the serving thread keeps the instance alive"
    serving.join(JOIN)
    assert not serving.is_alive(), "the serving thread outlived its instance"


def test_a_bound_method_keeps_its_instance(models: dict[str, threading.Thread]) -> None:
    """``Model(...).predict`` held without its instance works, as a plain bound method
    (and the async form) does; once both are gone, the serving thread stops."""
    predict = Model("temporary").predict
    gc.collect()
    assert predict(1) == ("temporary", 1)
    serving = models["temporary"]
    ref = weakref.ref(predict)
    del predict
    gc.collect()
    assert ref() is None
    serving.join(JOIN)
    assert not serving.is_alive(), "the serving thread outlived its bound method"


def test_bound_method_keeps_the_method_name(
    cleanup: contextlib.ExitStack, models: dict[str, threading.Thread]
) -> None:
    """Thread name, repr, ``__name__`` and the event-loop error name the method."""
    a = Model("a")
    closing(cleanup, a.predict)
    assert a.predict(1) == ("a", 1)
    assert models["a"].name == "batched Model.predict"
    assert a.predict.__name__ == "predict"
    assert "Model.predict" in repr(a.predict)

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"predict\.acall"):
            a.predict(2)

    anyio.run(main, backend="asyncio")


class Factor:
    """A sync batched method whose results depend on its instance's state."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    @batched.dynamically(batch_size=4, timeout_ms=1)
    def predict(self, items: list[int]) -> list[int]:
        return [item * self.factor for item in items]


def test_a_copy_of_a_copy_never_gets_its_originals_binding(
    cleanup: contextlib.ExitStack,
) -> None:
    """A shallow copy carries its original's binding in its ``__dict__``. The binding
    holds its instance and is matched to it by identity: a copy (or a copy of a copy)
    binds afresh, and the original lives on while its binding does. (Matched by ``id()``
    of a weakly held instance, a copy made at the collected original's address got the
    dead instance's binding: ReferenceError on every call.)"""
    original = Factor(2)
    stale = closing(cleanup, original.predict)
    ref = weakref.ref(original)
    carrier = copy.copy(original)
    del original
    gc.collect()
    assert ref() is not None, "the binding its copy carries keeps the original"
    for factor, clone in ((3, carrier), (4, copy.copy(carrier))):
        clone.factor = factor
        bound = closing(cleanup, clone.predict)
        assert bound is not stale
        assert bound is clone.predict
        assert bound(3) == 3 * factor
    assert stale(3) == 6


def test_a_bound_method_deep_copies_and_pickles_to_the_copys_method(
    cleanup: contextlib.ExitStack,
) -> None:
    """As a plain bound method does; each copy has a function and thread of its own."""
    import pickle

    model = Factor(2)
    closing(cleanup, model.predict)
    assert model.predict(1) == 2
    copies = [
        copy.deepcopy({"model": model, "op": model.predict}),
        pickle.loads(pickle.dumps({"op": model.predict, "model": model})),
    ]
    for factor, state in enumerate(copies, start=3):
        op = closing(cleanup, state["op"])
        assert op is state["model"].predict
        assert op is not model.predict
        state["model"].factor = factor
        assert op(1) == factor
        assert op.stats.completed == 1
    assert model.predict(1) == 2


# -- nesting ----------------------------------------------------------------------------------


def test_fn_may_call_another_sync_batched_function(cleanup: contextlib.ExitStack) -> None:
    @batched.dynamically(batch_size=4, timeout_ms=1)
    def inner(items: list[int]) -> list[int]:
        return [item + 1 for item in items]

    @batched.dynamically(batch_size=4, timeout_ms=1)
    def outer(items: list[int]) -> list[int]:
        return inner.many(items)

    closing(cleanup, outer)
    closing(cleanup, inner)
    assert outer(1) == 2


# -- bounded queue ----------------------------------------------------------------------------


def test_queue_full_with_wait_false_is_rejected(cleanup: contextlib.ExitStack) -> None:
    @batched.dynamically(batch_size=2, timeout_ms=60_000, max_queue_size=1)
    def fn(items: list[Any]) -> list[Any]:
        return tag(items)

    closing(cleanup, fn)
    threads = Threads()
    threads.start("a", fn, "a")  # takes the only room, waits a minute for a batch-mate
    wait_until(lambda: fn.stats.queue_size == 1, "a to wait in the pool")
    with pytest.raises(batched.QueueFull) as info:
        fn("b", wait=False)
    assert isinstance(info.value, anyio.WouldBlock)
    assert isinstance(info.value, batched.BatchedError)
    with pytest.raises(batched.QueueFull):
        fn.many(["c", "d"], wait=False)
    assert fn.stats.rejected == 3
    threads.start("e", fn, "e")  # waits for room
    wait_until(lambda: fn.stats.submitted == 5, "e to wait for room")
    fn.close()  # a is drained; e, still waiting for room, is refused
    threads.join()
    assert threads.results == {"a": ("r", "a")}
    assert isinstance(threads.errors["e"], batched.BatcherClosed)
    stats = fn.stats
    assert (stats.submitted, stats.completed, stats.failed, stats.rejected) == (5, 1, 1, 3)
    assert_stats_add_up(fn)


# -- cache ------------------------------------------------------------------------------------


def test_cache_serves_repeated_items(cleanup: contextlib.ExitStack) -> None:
    from batched.cache import MemoryCache

    batches: list[list[Any]] = []

    @batched.dynamically(batch_size=2, timeout_ms=1, cache=MemoryCache(maxsize=16))
    def fn(items: list[Any]) -> list[Any]:
        batches.append(list(items))
        return tag(items)

    closing(cleanup, fn)
    assert fn.many([1, 2]) == tag([1, 2])
    assert fn(1) == ("r", 1)  # a hit: fn is not called again
    assert fn.many([2, 3]) == tag([2, 3])

    async def main() -> None:
        with anyio.fail_after(JOIN):
            assert await fn.acall(3) == ("r", 3)

    anyio.run(main, backend="trio")
    assert sorted(item for batch in batches for item in batch) == [1, 2, 3]
    stats = fn.stats
    assert stats.cache_stats is not None
    assert stats.cache_stats.hits == 3
    assert (stats.submitted, stats.completed) == (6, 6)
    assert_stats_add_up(fn)


def test_close_with_a_cache_drains_without_waiting_out_the_timeout(
    cleanup: contextlib.ExitStack,
) -> None:
    from batched.cache import MemoryCache

    @batched.dynamically(batch_size=2, timeout_ms=60_000, cache=MemoryCache(maxsize=16))
    def fn(items: list[Any]) -> list[Any]:
        return tag(items)

    closing(cleanup, fn)
    threads = Threads()
    threads.start("a", fn, "a")
    wait_until(lambda: fn.stats.queue_size == 1, "a to wait in the pool")
    closer = threading.Thread(target=fn.close, daemon=True)
    closer.start()
    closer.join(3.0)  # a drain takes milliseconds; the timeout is a minute
    assert not closer.is_alive(), "close() waits out timeout_ms"
    threads.join()
    assert threads.results == {"a": ("r", "a")}


# -- interpreter exit -------------------------------------------------------------------------


def spawn_python(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 30.0) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(
            f"the interpreter did not exit within {timeout} s\n{out}\n{err}"
        ) from None
    return process.returncode, out, err


def test_interpreter_exits_without_close() -> None:
    process = spawn_python(
        """
        import threading
        import batched

        @batched.dynamically(batch_size=4, timeout_ms=1)
        def fn(items):
            return [item * 2 for item in items]

        out = []
        threads = [threading.Thread(target=lambda i=i: out.append(fn(i))) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sorted(out) == [0, 2, 4, 6], out
        print("done")
        """
    )
    assert finish(process) == (0, "done\n", "")


def test_interpreter_exit_is_bounded_with_a_hung_call() -> None:
    """A daemon thread blocked in a call whose fn never returns cannot hold the exit."""
    script = """
        import threading
        import batched

        entered, never = threading.Event(), threading.Event()

        @batched.dynamically(batch_size=1, timeout_ms=0, max_concurrent_batches={mcb})
        def fn(items):
            entered.set()
            never.wait()
            return items

        threading.Thread(target=fn, args=(1,), daemon=True).start()
        assert entered.wait(10)
        print("held", flush=True)
        """
    # fn in the serving thread (one slot) and in a worker thread; run side by side.
    processes = [spawn_python(script.replace("{mcb}", str(mcb))) for mcb in (1, 2)]
    for process in processes:
        assert finish(process) == (0, "held\n", "")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_afresh() -> None:
    """A function used before ``os.fork()`` (gunicorn ``--preload``, multiprocessing with
    fork): the child has none of the parent's threads, so it serves its calls from a
    serving thread of its own, with counters of its own. Forked while another thread of
    the parent is inside a call, whose function's lock may be held then."""
    process = spawn_python(
        """
        import os, sys, threading, warnings
        import batched

        warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads
        entered, release = threading.Event(), threading.Event()

        @batched.dynamically(batch_size=4, timeout_ms=1)
        def fn(items):
            if "held" in items:
                entered.set()
                release.wait(10)
            return [item * 2 for item in items]

        assert fn(1) == 2
        held = threading.Thread(target=fn, args=("held",), daemon=True)
        held.start()
        assert entered.wait(10)
        pid = os.fork()
        if pid == 0:  # the child: its call must not wait for the parent's thread
            import signal
            signal.alarm(10)  # a hang guard: SIGALRM ends the child
            assert fn(3) == 6
            assert fn([4, 5]) == [8, 10]
            s = fn.stats
            assert (s.submitted, s.completed) == (3, 3), s
            print("child", flush=True)
            sys.exit(0)  # interpreter exit closes the child's serving thread
        _, status = os.waitpid(pid, 0)
        release.set()
        held.join(10)
        assert fn(5) == 10  # the parent goes on with its own serving thread
        print("parent", os.waitstatus_to_exitcode(status), flush=True)
        """
    )
    assert finish(process) == (0, "child\nparent 0\n", "")


def test_blocking_calls_while_another_thread_imports_trio() -> None:
    """The event-loop guard of a blocking call looks at trio only if it is imported: here
    another thread is inside ``import trio``, held where ``sys.modules["trio"]`` is a
    half-made module (no ``lowlevel`` yet)."""
    process = spawn_python(
        """
        import importlib.abc, importlib.machinery, sys, threading
        import batched

        entered, release = threading.Event(), threading.Event()

        class Held(importlib.abc.Loader):
            def __init__(self, loader):
                self.loader = loader

            def create_module(self, spec):
                return self.loader.create_module(spec)

            def exec_module(self, module):
                entered.set()
                release.wait(10)
                self.loader.exec_module(module)

        class HoldTrioImport(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name != "trio._core":  # trio/__init__.py's first import
                    return None
                spec = importlib.machinery.PathFinder.find_spec(name, path)
                spec.loader = Held(spec.loader)
                return spec

        sys.meta_path.insert(0, HoldTrioImport())
        importer = threading.Thread(target=__import__, args=("trio",), daemon=True)
        importer.start()
        assert entered.wait(10)
        assert not hasattr(sys.modules["trio"], "lowlevel")

        @batched.dynamically(batch_size=4, timeout_ms=1)
        def fn(items):
            return [item * 2 for item in items]

        try:
            print(fn(1), fn([2, 3]), flush=True)
        finally:
            release.set()
        importer.join(10)
        print(fn(4), flush=True)
        fn.close()
        """
    )
    assert finish(process) == (0, "2 [4, 6]\n8\n", "")


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill")
def test_interrupted_blocking_call_drops_its_item() -> None:
    """Ctrl-C in a thread blocked in a call: the item leaves the queue, counted cancelled."""
    process = spawn_python(
        """
        import signal, threading, time
        import batched

        # A parent started in the background may pass SIGINT down as ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        seen = []

        @batched.dynamically(batch_size=2, timeout_ms=60_000)
        def fn(items):
            seen.append(list(items))
            return items

        def wait_until(predicate):
            deadline = time.monotonic() + 10
            while not predicate():
                assert time.monotonic() < deadline, "timed out"
                time.sleep(0.001)

        def interrupt():
            wait_until(lambda: fn.stats.queue_size == 1)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
        try:
            fn("x")
        except KeyboardInterrupt:
            pass
        else:
            raise AssertionError("not interrupted")
        wait_until(lambda: fn.stats.cancelled == 1 and fn.stats.queue_size == 0)
        assert fn(["a", "b"]) == ["a", "b"]
        assert seen == [["a", "b"]], seen
        s = fn.stats
        assert (s.submitted, s.completed, s.cancelled) == (3, 2, 1), s
        fn.close()
        print("done")
        """
    )
    assert finish(process) == (0, "done\n", "")


# -- the seed's BatchProcessor ----------------------------------------------------------------


def test_batch_processor_seed_api(cleanup: contextlib.ExitStack) -> None:
    def double(items: list[int]) -> list[int]:
        return [item * 2 for item in items]

    assert batched.BatchProcessorStats is batched.BatchStats
    proc = closing(cleanup, batched.BatchProcessor(double, 4, 1.0, 2))
    assert serving_threads(proc) == []
    proc.start()  # starts the serving thread now, before any call
    [serving] = serving_threads(proc)
    proc.start()  # a second start is harmless
    assert serving_threads(proc) == [serving]
    assert proc(3) == 6
    assert proc([1, 2, 3]) == [2, 4, 6]

    async def main() -> None:
        with anyio.fail_after(JOIN):
            assert await proc.acall(5) == 10
            assert await proc.acall([6, 7]) == [12, 14]

    for backend in BACKENDS:
        anyio.run(main, backend=backend)
    stats = proc.stats
    assert isinstance(stats, batched.BatchProcessorStats)
    assert (stats.submitted, stats.completed) == (10, 10)
    proc.clear_stats()
    assert proc.stats == batched.BatchStats()
    assert proc(1) == 2
    assert proc.stats.completed == 1
    proc.shutdown()
    assert not serving.is_alive()
    with pytest.raises(batched.BatcherClosed):
        proc(1)
    with proc as entered:  # reopens after shutdown, closes at the end
        assert entered is proc
        assert proc(4) == 8
        [serving] = serving_threads(proc)
    assert not serving.is_alive()
    with pytest.raises(batched.BatcherClosed):
        proc(1)


def test_batch_processor_settings(cleanup: contextlib.ExitStack) -> None:
    def ident(items: list[int]) -> list[int]:
        return list(items)

    proc = closing(
        cleanup, batched.BatchProcessor(ident, batch_size=2, timeout_ms=1.0, max_queue_size=8)
    )
    assert proc.many([1, 2, 3]) == [1, 2, 3]
    assert proc.stats.total_batches == 2  # batch_size=2 honoured
    with pytest.raises(ValueError, match="batch_size"):
        batched.BatchProcessor(ident, 0)
    with pytest.raises(ValueError, match="timeout_ms"):
        batched.BatchProcessor(ident, 4, -1.0)
    with pytest.raises(ValueError, match="batch_size"):
        batched.dynamically(batch_size=0)(ident)


# -- stats ------------------------------------------------------------------------------------


def test_stats_add_up_over_mixed_outcomes(cleanup: contextlib.ExitStack) -> None:
    @batched.dynamically(batch_size=2, timeout_ms=60_000, max_queue_size=2)
    def fn(items: list[Any]) -> list[Any]:
        if "bad" in items:
            raise Boom
        return tag(items)

    closing(cleanup, fn)
    assert fn.many(["a", "b"]) == tag(["a", "b"])  # completed 2
    with pytest.raises(Boom):
        fn.many(["bad", "c"])  # failed 2
    with pytest.raises(TypeError):
        fn(1, priority=None)  # type: ignore[arg-type]  # failed 1

    async def cancelled() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(fn.acall, "z")
                await await_until(lambda: fn.stats.queue_size == 1, "z to wait")
                scope.cancel()
        await await_until(lambda: fn.stats.cancelled == 1, "z to be dropped")

    anyio.run(cancelled, backend="trio")  # cancelled 1
    threads = Threads()
    threads.start("w", fn, "w")
    wait_until(lambda: fn.stats.queue_size == 1, "w to wait")
    with pytest.raises(batched.QueueFull):
        fn.many(["x", "y"], wait=False)  # rejected 2
    assert fn("v") == ("r", "v")  # completed 2, with w
    threads.join()
    assert threads.results == {"w": ("r", "w")}
    stats = fn.stats
    assert (
        stats.submitted,
        stats.completed,
        stats.failed,
        stats.cancelled,
        stats.rejected,
        stats.queue_size,
    ) == (10, 4, 3, 1, 2, 0)
    assert (stats.total_processed, stats.total_batches) == (6, 3)
    assert stats.avg_batch_size == 2.0
    assert stats.latency_p50_ms > 0.0
    assert_stats_add_up(fn)


def test_a_call_whose_function_closes_as_it_is_sent_is_counted(
    cleanup: contextlib.ExitStack,
) -> None:
    """The function closes between the call's check and its hand-over to the serving
    thread (here, pinned: ``length_fn`` runs in the caller's thread in between): the
    caller gets ``BatcherClosed``, and the refusal is counted, so the stats add up."""

    def length(item: str) -> int:
        if item == "closes":
            fn.close()
        return 1

    @batched.dynamically(batch_size=2, timeout_ms=0, length_fn=length)
    def fn(items: list[str]) -> list[Any]:
        return tag(items)

    closing(cleanup, fn)
    assert fn("a") == ("r", "a")
    with pytest.raises(batched.BatcherClosed, match="closed"):
        fn("closes")
    with pytest.raises(batched.BatcherClosed, match="closed"):
        fn.many(["closes", "b"])
    stats = fn.stats
    assert (stats.submitted, stats.completed, stats.failed) == (4, 1, 3)
    assert_stats_add_up(fn)
