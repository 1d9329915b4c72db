"""When batches leave (full, timed out, slot freed), concurrency, and the kinds of ``fn``."""

from __future__ import annotations

import functools
import threading
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from _helpers import Recorder, settle, submit

import batched
from batched.testing import real_time

pytestmark = pytest.mark.anyio


@pytest.mark.virtual_time
async def test_full_batch_leaves_at_once() -> None:
    """A batch that reaches batch_size leaves when its last item arrives: no time passes."""
    rec = Recorder()
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with batched.Batcher(rec, batch_size=3, timeout_ms=1000) as b:
            start = anyio.current_time()
            async with anyio.create_task_group() as tg:
                await submit(tg, b, "a", out)
                await submit(tg, b, "b", out)
                assert rec.batches == []  # partial: it waits
                await submit(tg, b, "c", out)
                assert rec.batches == [["a", "b", "c"]]
            assert rec.times == [start]
    assert out == {"a": ("a", "r"), "b": ("b", "r"), "c": ("c", "r")}


@pytest.mark.virtual_time
async def test_batch_reaching_max_batch_length_leaves_at_once() -> None:
    """A batch whose summed length reaches max_batch_length is full: it leaves at once."""
    rec = Recorder()
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with batched.Batcher(
            rec, batch_size=10, timeout_ms=1000, max_batch_length=6, length_fn=len
        ) as b:
            start = anyio.current_time()
            async with anyio.create_task_group() as tg:
                await submit(tg, b, "aaa", out)
                assert rec.batches == []
                await submit(tg, b, "bbb", out)
                assert rec.batches == [["aaa", "bbb"]]
    assert rec.times == [start]
    assert out == {"aaa": ("aaa", "r"), "bbb": ("bbb", "r")}


@pytest.mark.virtual_time
async def test_partial_batch_leaves_when_oldest_item_waited_timeout() -> None:
    """A partial batch leaves timeout_ms after its oldest item; later items don't extend it."""
    rec = Recorder()
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with batched.Batcher(rec, batch_size=10, timeout_ms=50) as b:
            start = anyio.current_time()
            async with anyio.create_task_group() as tg:
                await submit(tg, b, "a", out)
                await anyio.sleep(0.03)
                await submit(tg, b, "b", out)
                await anyio.sleep(0.0199)
                assert rec.batches == []  # not one moment early
    assert rec.batches == [["a", "b"]]
    assert rec.times[0] == pytest.approx(start + 0.05, abs=1e-9)
    assert out == {"a": ("a", "r"), "b": ("b", "r")}


@pytest.mark.virtual_time
async def test_next_partial_batch_times_from_its_own_oldest_item() -> None:
    """After a timed-out batch leaves, the next one waits timeout_ms from its own oldest item."""
    rec = Recorder()
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with batched.Batcher(rec, batch_size=10, timeout_ms=50) as b:
            start = anyio.current_time()
            async with anyio.create_task_group() as tg:
                await submit(tg, b, "a", out)
                await anyio.sleep(0.07)
                await submit(tg, b, "b", out)
    assert rec.batches == [["a"], ["b"]]
    assert rec.times == pytest.approx([start + 0.05, start + 0.12], abs=1e-9)
    assert out == {"a": ("a", "r"), "b": ("b", "r")}


@pytest.mark.virtual_time
async def test_timeout_zero_sends_at_once() -> None:
    """With timeout_ms=0 an item leaves the moment it arrives, alone if nothing else waits."""
    rec = Recorder()
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with batched.Batcher(rec, batch_size=10, timeout_ms=0) as b:
            start = anyio.current_time()
            async with anyio.create_task_group() as tg:
                await submit(tg, b, "a", out)
                assert rec.batches == [["a"]]
                await submit(tg, b, "b", out)
                assert rec.batches == [["a"], ["b"]]
    assert rec.times == [start, start]
    assert out == {"a": ("a", "r"), "b": ("b", "r")}


@pytest.mark.virtual_time
async def test_items_accumulate_while_slot_busy_and_leave_when_it_frees() -> None:
    """While the only slot is busy items wait; when it frees, everything due is cut at once."""
    rec = Recorder(hold_first=True)
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with (
            batched.Batcher(rec, batch_size=4, timeout_ms=5) as b,
            anyio.create_task_group() as tg,
        ):
            await submit(tg, b, "hold", out)
            await rec.held.wait()
            for item in "abcdef":
                await submit(tg, b, item, out)
            await anyio.sleep(1)  # far past timeout_ms: the slot alone holds them back
            assert rec.batches == [["hold"]]
            freed = anyio.current_time()
            rec.release.set()
    assert rec.batches == [["hold"], ["a", "b", "c", "d"], ["e", "f"]]
    assert rec.times[1:] == [freed, freed]
    assert out == {x: (x, "r") for x in ["hold", *"abcdef"]}


@pytest.mark.virtual_time
async def test_full_batch_leaves_when_slot_frees_and_rest_waits_its_timeout() -> None:
    """A full batch leaves the moment the slot frees; the fresh remainder waits timeout_ms."""
    rec = Recorder(hold_first=True)
    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with (
            batched.Batcher(rec, batch_size=4, timeout_ms=1000) as b,
            anyio.create_task_group() as tg,
        ):
            await submit(tg, b, "hold", out)
            await rec.held.wait()
            freed = anyio.current_time()
            for item in "abcde":
                await submit(tg, b, item, out)
            rec.release.set()
    assert rec.batches == [["hold"], ["a", "b", "c", "d"], ["e"]]
    assert rec.times[1:] == pytest.approx([freed, freed + 1.0], abs=1e-9)
    assert out == {x: (x, "r") for x in ["hold", *"abcde"]}


async def test_two_concurrent_batches_never_three() -> None:
    """max_concurrent_batches=2 runs two batches at once and starts a third only when one ends."""
    gates: dict[str, anyio.Event] = {}
    batches: list[list[str]] = []
    running = peak = 0

    async def fn(items: list[str]) -> list[tuple[str, str]]:
        nonlocal running, peak
        batches.append(list(items))
        running += 1
        peak = max(peak, running)
        try:
            await gates[items[0]].wait()
        finally:
            running -= 1
        return [(item, "r") for item in items]

    out: dict[Any, Any] = {}
    with anyio.fail_after(60):
        async with (
            batched.Batcher(fn, batch_size=1, timeout_ms=0, max_concurrent_batches=2) as b,
            anyio.create_task_group() as tg,
        ):
            for item in "abc":
                gates[item] = anyio.Event()
                await submit(tg, b, item, out)
            assert batches == [["a"], ["b"]]
            assert running == 2
            gates["b"].set()
            await settle()
            assert batches == [["a"], ["b"], ["c"]]
            assert running == 2
            gates["a"].set()
            gates["c"].set()
    assert peak == 2
    assert out == {x: (x, "r") for x in "abc"}


async def test_sync_fn_runs_in_worker_thread() -> None:
    """A plain def fn runs in a worker thread, not in the event loop's thread."""
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def fn(items: list[int]) -> list[tuple[int, str]]:
        threads.append(threading.get_ident())
        return [(item, "r") for item in items]

    with real_time(), anyio.fail_after(5):
        async with batched.Batcher(fn, batch_size=4, timeout_ms=1) as b:
            assert await b(7) == (7, "r")
            assert await b.many([1, 2]) == [(1, "r"), (2, "r")]
    assert threads
    assert loop_thread not in threads


async def test_partial_of_sync_fn_runs_in_worker_thread() -> None:
    """A functools.partial of a plain def fn also runs in a worker thread."""
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def fn(items: list[int], *, tag: str) -> list[tuple[int, str]]:
        threads.append(threading.get_ident())
        return [(item, tag) for item in items]

    with real_time(), anyio.fail_after(5):
        async with batched.Batcher(functools.partial(fn, tag="p"), timeout_ms=1) as b:
            assert await b(3) == (3, "p")
    assert threads
    assert loop_thread not in threads


@pytest.mark.parametrize("mode", ["owned", "driven"])
async def test_a_plain_callable_returning_a_coroutine_is_awaited(mode: str) -> None:
    """``Batcher(lambda xs: embed(xs))``: a plain callable (run in a worker thread) whose
    result is a coroutine; it is awaited in the loop, alike on asyncio and trio."""

    async def embed(items: list[int]) -> list[tuple[int, str]]:
        await anyio.lowlevel.checkpoint()
        return [(item, "r") for item in items]

    f: Any
    with real_time(), anyio.fail_after(5):
        if mode == "owned":
            async with batched.Batcher(lambda xs: embed(xs), batch_size=4, timeout_ms=1) as f:
                assert await f(1) == (1, "r")
                assert await f.many([2, 3]) == [(2, "r"), (3, "r")]
        else:
            f = batched.aio.dynamically(batch_size=4, timeout_ms=1)(lambda xs: embed(xs))
            assert await f(1) == (1, "r")
            assert await f.many([2, 3]) == [(2, "r"), (3, "r")]
    assert f.stats.completed == 3


@pytest.fixture
def thread_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every ``anyio.to_thread.run_sync`` call (still running it)."""
    calls: list[Any] = []
    original = anyio.to_thread.run_sync

    async def spy(func: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(func)
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", spy)
    return calls


class AsyncCallable:
    """An object whose ``__call__`` is ``async def``."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    async def __call__(self, items: list[int]) -> list[tuple[int, str]]:
        self.threads.append(threading.get_ident())
        await anyio.lowlevel.checkpoint()
        return [(item, "obj") for item in items]


async def test_object_with_async_call_runs_in_event_loop(thread_calls: list[Any]) -> None:
    """An object with ``async def __call__`` is async: awaited in the loop, no worker thread."""
    fn = AsyncCallable()
    with anyio.fail_after(60):
        async with batched.Batcher(fn, batch_size=2, timeout_ms=5) as b:
            assert await b(1) == (1, "obj")
            assert await b.many([2, 3]) == [(2, "obj"), (3, "obj")]
    assert fn.threads == [threading.get_ident()] * 2
    assert thread_calls == []


async def test_partial_of_async_fn_runs_in_event_loop(thread_calls: list[Any]) -> None:
    """A functools.partial of an ``async def`` is async: awaited in the loop, no worker thread."""
    threads: list[int] = []

    async def fn(items: list[int], *, tag: str) -> list[tuple[int, str]]:
        threads.append(threading.get_ident())
        await anyio.lowlevel.checkpoint()
        return [(item, tag) for item in items]

    with anyio.fail_after(60):
        async with batched.Batcher(functools.partial(fn, tag="p"), timeout_ms=5) as b:
            assert await b(1) == (1, "p")
    assert threads == [threading.get_ident()]
    assert thread_calls == []


async def test_many_keeps_input_order_and_splits_across_batches() -> None:
    """many() with more items than batch_size spans batches; results keep input order."""
    rec = Recorder()
    with anyio.fail_after(60):
        async with batched.Batcher(rec, batch_size=3, timeout_ms=5) as b:
            got = await b.many([1, 2, 3, 4, 5, 6, 7])
    assert got == [(i, "r") for i in range(1, 8)]
    assert rec.batches == [[1, 2, 3], [4, 5, 6], [7]]


async def test_many_results_follow_input_order_when_fn_sees_another_order() -> None:
    """many() maps results back to input positions even when the strategy reorders items."""
    rec = Recorder()
    items = ["cccc", "a", "bbb", "dd"]
    with anyio.fail_after(60):
        async with batched.Batcher(
            rec, batch_size=2, timeout_ms=5, strategy=batched.ByLength()
        ) as b:
            got = await b.many(items)
    assert rec.batches == [["a", "dd"], ["bbb", "cccc"]]
    assert got == [(item, "r") for item in items]


async def test_many_of_nothing_returns_empty_list() -> None:
    """many([]) returns [] and calls fn with nothing."""
    rec = Recorder()
    with anyio.fail_after(60):
        async with batched.Batcher(rec, timeout_ms=5) as b:
            assert await b.many([]) == []
    assert rec.batches == []


async def test_each_caller_gets_fn_of_its_own_item() -> None:
    """Mixed single and many() callers in shared batches each get fn of their own items."""
    rec = Recorder()
    singles: dict[Any, Any] = {}
    manys: dict[int, list[Any]] = {}

    async def call_many(k: int) -> None:
        manys[k] = await b.many([(k, j) for j in range(k)])

    with anyio.fail_after(60):
        async with (
            batched.Batcher(rec, batch_size=5, timeout_ms=5) as b,
            anyio.create_task_group() as tg,
        ):
            for i in range(12):
                tg.start_soon(call_many, i % 4)
                await submit(tg, b, f"s{i}", singles)
    assert singles == {f"s{i}": (f"s{i}", "r") for i in range(12)}
    assert manys == {k: [((k, j), "r") for j in range(k)] for k in range(4)}
    assert all(1 <= len(batch) <= 5 for batch in rec.batches)
    assert sum(len(batch) for batch in rec.batches) == 12 + 3 * (0 + 1 + 2 + 3)


class Log:
    """A batch function that logs each batch; the first one waits for ``release``."""

    def __init__(self, *, yields: bool) -> None:
        self.log: list[tuple[str, Any]] = []
        self.yields = yields
        self.held = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, items: list[int]) -> list[int]:
        self.log.append(("fn", list(items)))
        if not self.held.is_set():
            self.held.set()
            await self.release.wait()
        elif self.yields:
            await anyio.lowlevel.checkpoint()
        return [item * 10 for item in items]


async def _backlog(fn: Log, n: int, batch_size: int) -> None:
    """``n`` callers whose items wait behind a held first batch; then release it."""
    async with batched.Batcher(fn, batch_size=batch_size, timeout_ms=50.0) as b:

        async def call(i: int) -> None:
            assert await b(i) == i * 10
            fn.log.append(("got", i))

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(call, i)
                await settle()  # in arrival order: trio runs new tasks in any order
            assert fn.held.is_set()  # the first batch holds the only slot
            fn.release.set()


async def test_next_batch_starts_before_the_previous_callers_resume() -> None:
    # The device must not idle while the callers of the batch it just finished run: a
    # due batch is cut and its fn started before those callers are woken.
    fn = Log(yields=True)
    await _backlog(fn, n=4, batch_size=2)
    log = fn.log
    assert log[:2] == [("fn", [0, 1]), ("fn", [2, 3])], log
    assert sorted(log[2:]) == [("got", 0), ("got", 1), ("got", 2), ("got", 3)], log


async def test_a_backlog_of_batches_lets_callers_run_on_the_way() -> None:
    # A fn that never awaits, with a backlog of 40 batches: the slot takes due batches
    # itself, but not all of them in a row, or no caller would run until the backlog is
    # gone (and nothing else on the event loop either).
    fn = Log(yields=False)
    await _backlog(fn, n=40, batch_size=1)
    log = fn.log
    assert [entry for entry in log if entry[0] == "fn"] == [("fn", [i]) for i in range(40)]
    assert log.index(("got", 0)) < log.index(("fn", [39])), log
