"""``batched.Continuous``: steps, joins, departures, errors, lifecycle and stats."""

from __future__ import annotations

import gc
import math
import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from _helpers import Boom, Fatal, settled

import batched
from batched import BatcherClosed, BatchSizeMismatch, Continuous, Failure, Last, Next, QueueFull
from batched.testing import real_time, settle

pytestmark = pytest.mark.anyio

STEP_S = 0.01


def job(name: str, n: int) -> tuple[str, int, int]:
    """An item that emits ``n`` values: its state is (name, values emitted, n)."""
    return (name, 0, n)


def values(name: str, n: int) -> list[tuple[str, int]]:
    return [(name, k) for k in range(n)]


class Steps:
    """A step function over :func:`job` items that records each step's names.

    ``fail_items`` end with ``Failure(Boom(name))`` at their second value; a step whose
    index is in ``raise_at`` raises :class:`Boom`.
    """

    def __init__(
        self,
        duration: float = STEP_S,
        fail_items: frozenset[str] = frozenset(),
        raise_at: frozenset[int] = frozenset(),
    ) -> None:
        self.duration = duration
        self.fail_items = fail_items
        self.raise_at = raise_at
        self.seen: list[list[str]] = []
        self.errors: dict[str, BaseException] = {}

    async def __call__(self, states: list[Any]) -> list[Any]:
        index = len(self.seen)
        self.seen.append([state[0] for state in states])
        await anyio.sleep(self.duration)
        if index in self.raise_at:
            raise Boom(index)
        return [self.outcome(state) for state in states]

    def outcome(self, state: Any) -> Any:
        name, k, n = state
        if name in self.fail_items and k == 1:
            self.errors[name] = error = Boom(name)
            return Failure(error)
        value = (name, k)
        return Last(value) if k + 1 >= n else Next(value, (name, k + 1, n))

    def names(self) -> set[str]:
        return {name for step in self.seen for name in step}


async def collect(c: Continuous[Any, Any], item: Any, got: dict[Any, Any]) -> None:
    """Await all of ``item``'s values into ``got[name]``, or the exception."""
    try:
        got[item[0]] = await c(item)
    except Exception as exc:
        got[item[0]] = exc


async def read_into(stream: Any, seen: list[Any]) -> None:
    """Read ``stream`` into ``seen`` until it ends (or raises)."""
    async for value in stream:
        seen.append(value)  # noqa: PERF401 - what was read before an error counts


def assert_stats_add_up(c: Continuous[Any, Any]) -> None:
    s = c.stats
    assert s.queue_size == 0, s
    assert s.submitted == settled(s), s


# -- values and steps ---------------------------------------------------------------------


async def test_each_reader_gets_its_own_values_in_order() -> None:
    """Items of different lengths: each caller gets exactly its item's values, in order;
    ended items leave and the rest go on."""
    steps = Steps()
    got: dict[str, Any] = {}
    with anyio.fail_after(60):
        async with (
            Continuous(steps, batch_size=8, timeout_ms=100) as c,
            anyio.create_task_group() as tg,
        ):
            for name, n in (("a", 3), ("b", 1), ("c", 5)):
                tg.start_soon(collect, c, job(name, n), got)
                await settle()
    assert got == {"a": values("a", 3), "b": values("b", 1), "c": values("c", 5)}
    assert steps.seen == [["a", "b", "c"], ["a", "c"], ["a", "c"], ["c"], ["c"]]
    assert c.stats.total_batches == 5
    assert c.stats.completed == 3
    assert c.stats.total_processed == 3 + 2 + 2 + 1 + 1
    assert_stats_add_up(c)


@pytest.mark.virtual_time  # exact clock readings or long steps
async def test_stream_yields_values_as_they_are_emitted() -> None:
    """``stream()`` gives each value when its step ends, not when the item ends."""
    steps = Steps(duration=1.0)
    async with Continuous(steps, batch_size=4) as c:
        start = anyio.current_time()
        seen: list[tuple[Any, float]] = []
        async with c.stream(job("a", 3)) as stream:
            seen += [(value, anyio.current_time() - start) async for value in stream]
    assert seen == [(("a", 0), 1.0), (("a", 1), 2.0), (("a", 2), 3.0)]


@pytest.mark.virtual_time  # exact clock readings or long steps
async def test_arrivals_join_at_the_next_step_without_waiting() -> None:
    """With nothing active the first item waits ``timeout_ms`` for others; while steps
    run, a new item joins the very next step, whatever ``timeout_ms``."""
    steps = Steps(duration=1.0)
    got: dict[str, Any] = {}
    async with Continuous(steps, batch_size=8, timeout_ms=500) as c:
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, c, job("a", 4), got)
            await anyio.sleep(0.75)  # the first step starts at 0.5, ends at 1.5
            assert steps.seen == [["a"]]
            tg.start_soon(collect, c, job("b", 2), got)
        assert anyio.current_time() - start == 0.5 + 4 * 1.0
    assert steps.seen == [["a"], ["a", "b"], ["a", "b"], ["a"]]
    assert got == {"a": values("a", 4), "b": values("b", 2)}


@pytest.mark.virtual_time  # exact clock readings or long steps
async def test_timeout_zero_steps_at_once_and_a_full_set_does_not_wait() -> None:
    """``timeout_ms=0`` (the default) starts the first step at once; with a timeout, a
    full ``batch_size`` of waiting items starts it at once too."""
    for timeout_ms, n in ((0.0, 1), (10_000.0, 3)):
        steps = Steps(duration=1.0)
        async with Continuous(steps, batch_size=3, timeout_ms=timeout_ms) as c:
            start = anyio.current_time()
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(c, job(f"x{i}", 1))
                    await settle()
            assert anyio.current_time() - start == 1.0
        assert len(steps.seen) == 1, steps.seen


async def test_batch_size_caps_the_active_set_and_waiting_items_fill_freed_slots() -> None:
    """No step holds more than ``batch_size`` items; a slot freed by an ended item is
    taken at the next step, in arrival order."""
    steps = Steps()
    got: dict[str, Any] = {}
    lengths = {"a": 1, "b": 3, "c": 2, "d": 1, "e": 1}
    async with (
        Continuous(steps, batch_size=2, timeout_ms=100) as c,
        anyio.create_task_group() as tg,
    ):
        for name, n in lengths.items():
            tg.start_soon(collect, c, job(name, n), got)
            await settle()
    assert steps.seen == [["a", "b"], ["b", "c"], ["b", "c"], ["d", "e"]]
    assert got == {name: values(name, n) for name, n in lengths.items()}


async def test_length_budget_counts_current_states_and_an_oversize_item_runs_alone() -> None:
    """``max_batch_length`` caps the summed ``length_fn(state)`` of the set an item joins,
    read from the states after each step; an item over the whole budget runs alone,
    once the set is empty."""
    steps = Steps()

    def length(state: Any) -> int:
        name, k, _ = state
        return {"a": 2, "b": 2, "big": 9, "c": 1}[name] + k  # grows by one per step

    got: dict[str, Any] = {}
    async with (
        Continuous(steps, batch_size=8, max_batch_length=6, length_fn=length, timeout_ms=100) as c,
        anyio.create_task_group() as tg,
    ):
        for name, n in (("a", 3), ("b", 1), ("big", 2), ("c", 1)):
            tg.start_soon(collect, c, job(name, n), got)
            await settle()
    # step 0: a(2) + b(2) = 4; big (9) waits, and c waits behind it (rule order).
    # step 1: a is 3 long; big cannot join a non-empty set. step 2: a is 4 long.
    # step 3: big alone; c (1) does not fit beside it (9 + 1 > 6). step 4: big, then c.
    assert steps.seen == [["a", "b"], ["a"], ["a"], ["big"], ["big"], ["c"]]
    assert got["big"] == values("big", 2)


async def test_a_failure_ends_that_item_alone() -> None:
    """``Failure(exc)`` for one state: its reader gets ``exc`` after the values before
    it; the other items go on."""
    steps = Steps(fail_items=frozenset({"b"}))
    async with Continuous(steps, batch_size=4, timeout_ms=100) as c:
        seen: list[Any] = []
        got: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, c, job("a", 4), got)
            await settle()
            stream = c.stream(job("b", 4))
            with pytest.raises(Boom) as info:
                await read_into(stream, seen)
    assert info.value is steps.errors["b"]
    assert seen == [("b", 0)]
    assert got["a"] == values("a", 4)
    assert [len(step) for step in steps.seen] == [2, 2, 1, 1]
    assert c.stats.failed == 1
    assert c.stats.completed == 1


async def test_a_step_exception_fails_every_active_item_and_later_items_are_served() -> None:
    """``step`` raising: every item of that step gets the exception; items waiting to
    join are not touched and are served by later steps."""
    steps = Steps(raise_at=frozenset({1}))
    got: dict[str, Any] = {}
    async with (
        Continuous(steps, batch_size=2, timeout_ms=100) as c,
        anyio.create_task_group() as tg,
    ):
        for name in ("a", "b", "c"):
            tg.start_soon(collect, c, job(name, 3), got)
            await settle()
    assert isinstance(got["a"], Boom)
    assert got["a"] is got["b"]
    assert got["c"] == values("c", 3)
    assert steps.seen == [["a", "b"], ["a", "b"], ["c"], ["c"], ["c"]]
    assert (c.stats.failed, c.stats.completed) == (2, 1)
    assert_stats_add_up(c)


@pytest.mark.parametrize(
    ("bad", "error", "text"),
    [
        (lambda states: [Last(1)] * (len(states) + 1), BatchSizeMismatch, "returned 3 results"),
        (lambda states: {i: Last(1) for i in range(len(states))}, TypeError, "not dict"),
        (lambda states: [Last(1), 42][: len(states)], TypeError, "not int (at index 1)"),
        (lambda states: [Last(1), "xy"][: len(states)], TypeError, "not str (at index 1)"),
    ],
    ids=["count", "mapping", "int-outcome", "str-outcome"],
)
async def test_bad_step_output_fails_that_step_only(bad: Any, error: type, text: str) -> None:
    """A wrong count, a non-sequence, or an element that is not Next/Last/Failure: every
    item of that step gets a clear error; the next step works."""
    calls = 0

    async def step(states: list[Any]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            return bad(states)
        return [Last(state) for state in states]

    async with Continuous(step, batch_size=2, timeout_ms=100) as c, anyio.create_task_group() as tg:
        got: dict[str, Any] = {}
        tg.start_soon(collect, c, ("a",), got)
        tg.start_soon(collect, c, ("b",), got)
        await settle()
        with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
            raise got["a"]
        assert got["b"] is got["a"]
        assert await c(("later",)) == [("later",)]


# -- readers that leave -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["aclose", "break", "cancel", "call-cancelled"])
async def test_a_reader_that_leaves_is_not_stepped_again(how: str) -> None:
    """A reader that closes its stream, breaks out of ``async for``, or is cancelled
    leaves before the next step; the others go on; it counts as cancelled."""
    steps = Steps()
    got: dict[str, Any] = {}

    async def reader(c: Continuous[Any, Any], task_status: anyio.abc.TaskStatus[None]) -> None:
        if how == "call-cancelled":
            with anyio.CancelScope() as scope:
                task_status.started(scope)
                await c(job("x", 100))
            return
        stream = c.stream(job("x", 100))
        if how == "cancel":
            with anyio.CancelScope() as scope:
                task_status.started(scope)
                async with stream:
                    async for _ in stream:
                        pass
            return
        task_status.started(None)
        async for value in stream:
            if value == ("x", 1):
                break
        if how == "aclose":
            await stream.aclose()
        else:
            del stream  # dropped: the reader is gone
            gc.collect()

    async with (
        Continuous(steps, batch_size=4, timeout_ms=100) as c,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(collect, c, job("a", 6), got)
        await settle()
        scope = await tg.start(reader, c)
        if scope is not None:
            await anyio.sleep(STEP_S * 2.5)
            scope.cancel()
    stepped = [i for i, step in enumerate(steps.seen) if "x" in step]
    assert stepped == list(range(len(stepped)))  # from the first step, then never again
    assert len(stepped) <= 3
    assert got["a"] == values("a", 6)
    assert c.stats.cancelled == 1
    assert c.stats.completed == 1
    assert_stats_add_up(c)


@pytest.mark.virtual_time  # exact clock readings or long steps
async def test_a_waiting_reader_that_leaves_never_reaches_step() -> None:
    """An item whose reader leaves before it joins is dropped from the queue."""
    steps = Steps(duration=1.0)
    async with Continuous(steps, batch_size=1) as c, anyio.create_task_group() as tg:
        tg.start_soon(c, job("a", 2))
        await settle()
        stream = c.stream(job("gone", 2))
        assert c.stats.queue_size == 1
        await stream.aclose()
        assert c.stats.queue_size == 0
    assert "gone" not in steps.names()
    assert c.stats.cancelled == 1


async def test_a_slow_reader_holds_up_nobody() -> None:
    """Backpressure: the steps never wait for a reader. One that reads nothing while
    others finish still gets every value afterwards, in order."""
    steps = Steps()
    got: dict[str, Any] = {}
    async with Continuous(steps, batch_size=4, timeout_ms=100) as c:
        slow = c.stream(job("slow", 5))
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, c, job("a", 5), got)
        assert got["a"] == values("a", 5)
        assert steps.seen == [["slow", "a"]] * 5
        async with slow:
            assert [value async for value in slow] == values("slow", 5)


# -- lifecycle ----------------------------------------------------------------------------


async def test_calls_before_enter_and_after_exit_are_closed() -> None:
    c = Continuous(Steps())
    with pytest.raises(BatcherClosed):
        c.stream(job("a", 1))
    with pytest.raises(BatcherClosed):
        await c(job("a", 1))
    async with c:
        assert await c(job("a", 2)) == values("a", 2)
        with pytest.raises(RuntimeError, match="already open"):
            await c.__aenter__()
    with pytest.raises(BatcherClosed):
        await c(job("a", 1))
    async with c:  # afresh, stats kept
        assert await c(job("b", 1)) == values("b", 1)
    assert c.stats.completed == 2
    assert c.stats.failed == 3
    assert_stats_add_up(c)


@pytest.mark.virtual_time  # exact clock readings or long steps
async def test_normal_exit_runs_active_and_waiting_items_to_the_end() -> None:
    """Leaving the block normally stops intake and runs every accepted item to its end
    (waiting ones join without waiting out ``timeout_ms``); later calls are refused."""
    steps = Steps()
    streams = {}
    async with Continuous(steps, batch_size=1, timeout_ms=60_000) as c:
        for name in ("a", "b", "c"):
            streams[name] = c.stream(job(name, 3))
        start = anyio.current_time()
    assert anyio.current_time() - start == pytest.approx(9 * STEP_S)
    for name, stream in streams.items():
        async with stream:
            assert [value async for value in stream] == values(name, 3)
    with pytest.raises(BatcherClosed):
        c.stream(job("d", 1))


@pytest.mark.virtual_time  # exact clock readings or long steps
async def test_exit_by_exception_ends_every_stream_with_batcher_closed_at_once() -> None:
    """An exception out of the block: active and waiting streams end with BatcherClosed
    (after the values already emitted), the running step is cancelled, and the
    exception propagates unchanged."""
    steps = Steps(duration=10.0)
    c: Continuous[Any, Any] = Continuous(steps, batch_size=1)
    streams: list[Any] = []

    async def body() -> float:
        async with c:
            streams.extend([c.stream(job("a", 5)), c.stream(job("b", 5))])
            await anyio.sleep(15.0)  # a emitted one value; the second step runs
            raise Boom("body", anyio.current_time())

    with pytest.raises(Boom) as info:
        await body()
    active, waiting = streams
    start = info.value.args[1]
    assert info.value.args[0] == "body"
    assert anyio.current_time() == start
    async with active:
        assert await active.receive() == ("a", 0)
        with pytest.raises(BatcherClosed):
            await active.receive()
    async with waiting:
        with pytest.raises(BatcherClosed):
            await waiting.receive()
    assert steps.seen == [["a"], ["a"]]
    assert c.stats.failed == 2
    assert_stats_add_up(c)


@pytest.mark.virtual_time  # exact clock readings or long steps
async def test_a_base_exception_from_step_closes_everything_and_propagates() -> None:
    """A BaseException from ``step`` (not a cancellation): every stream ends with
    BatcherClosed chained to it, and it propagates out of ``async with``."""
    fatal = Fatal("stop")

    async def step(states: list[Any]) -> list[Any]:
        await anyio.sleep(1)
        raise fatal

    c: Continuous[Any, Any] = Continuous(step, batch_size=1)
    streams: list[Any] = []

    async def body() -> None:
        async with c:
            streams.extend([c.stream(job("a", 2)), c.stream(job("b", 2))])
            await anyio.sleep_forever()

    with pytest.raises(Fatal) as info:
        await body()
    assert info.value is fatal
    for stream in streams:
        async with stream:
            with pytest.raises(BatcherClosed) as closed:
                await stream.receive()
            assert closed.value.__cause__ is fatal


@pytest.mark.virtual_time  # exact clock readings or long steps
async def test_max_queue_size_bounds_waiting_items() -> None:
    """``max_queue_size`` counts the items waiting to join (not the active ones):
    ``wait=False`` raises QueueFull when it is full; a waiting call gets room when an
    item joins."""
    steps = Steps(duration=1.0)
    async with Continuous(steps, batch_size=1, max_queue_size=1) as c:
        a = c.stream(job("a", 2))
        await settle()  # a joined the first step: the queue is empty again
        b = c.stream(job("b", 1))
        with pytest.raises(QueueFull):
            c.stream(job("x", 1), wait=False)
        late = c.stream(job("c", 1))  # waits for room
        assert c.stats.queue_size == 1
        for stream, name, n in ((a, "a", 2), (b, "b", 1), (late, "c", 1)):
            async with stream:
                assert [value async for value in stream] == values(name, n)
    assert c.stats.rejected == 1
    assert_stats_add_up(c)


async def test_a_sync_step_runs_in_a_worker_thread() -> None:
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def step(states: list[Any]) -> list[Any]:
        threads.add(threading.get_ident())
        return [Last(state * 2) for state in states]

    with real_time(), anyio.fail_after(10):
        async with Continuous(step, batch_size=4) as c:
            assert await c(21) == [42]
    assert threads
    assert loop_thread not in threads


async def test_length_fn_raising_on_a_state_fails_that_item_alone() -> None:
    def length(state: Any) -> int:
        name, k, _ = state
        if name == "bad" and k == 1:
            raise Boom(name)
        return 1

    steps = Steps()
    got: dict[str, Any] = {}
    async with (
        Continuous(steps, max_batch_length=10, length_fn=length, timeout_ms=100) as c,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(collect, c, job("bad", 3), got)
        tg.start_soon(collect, c, job("ok", 3), got)
    assert isinstance(got["bad"], Boom)
    assert "length_fn" in "".join(got["bad"].__notes__)
    assert got["ok"] == values("ok", 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"batch_size": 0}, ValueError, "'batch_size' must be >= 1: 0"),
        ({"batch_size": True}, TypeError, "'batch_size' must be an int"),
        ({"timeout_ms": -1}, ValueError, "'timeout_ms'"),
        ({"timeout_ms": math.nan}, ValueError, "'timeout_ms'"),
        ({"max_batch_length": 0}, ValueError, "'max_batch_length'"),
        ({"max_queue_size": 0}, ValueError, "'max_queue_size'"),
        ({"length_fn": 3}, TypeError, "'length_fn'"),
        ({"strategy": batched.Fifo}, TypeError, "'strategy'"),
    ],
)
def test_bad_settings_name_the_setting(kwargs: dict[str, Any], error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        Continuous(Steps(), **kwargs)


def test_a_step_that_is_not_a_step_function_is_refused() -> None:
    async def agen(states: list[Any]) -> Any:
        yield states

    with pytest.raises(TypeError, match="'step' must be callable"):
        Continuous(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="generator function"):
        Continuous(agen)  # type: ignore[arg-type]


def test_next_and_last_are_frozen() -> None:
    assert Next(1, "s") == Next(value=1, state="s")
    assert Last(2).value == 2
    with pytest.raises(AttributeError):
        Last(1).value = 3  # type: ignore[misc]


@pytest.mark.virtual_time  # exact clock readings or long steps
@pytest.mark.parametrize("body_first", [True, False])
async def test_exit_by_exception_as_a_step_returns(body_first: bool) -> None:
    """The block raises at the instant a step returns (its outcomes not yet handed out):
    the exception still propagates unchanged and the stream ends with BatcherClosed."""

    async def step(states: list[Any]) -> list[Any]:
        await anyio.sleep(1.0)
        return [Next(0, state) for state in states]

    c: Continuous[Any, Any] = Continuous(step)

    async def body() -> None:
        async with c:
            if body_first:
                stream = c.stream(1)
                await anyio.sleep(1.0)
            else:
                await anyio.lowlevel.checkpoint()
                stream = c.stream(1)
                await settle()  # the step began: its timer is set before this one
                await anyio.sleep(1.0)
            streams.append(stream)
            raise Boom("body")

    streams: list[Any] = []
    for _ in range(5):  # trio shuffles which runnable task goes first
        with pytest.raises(Boom):
            await body()
        async with streams[-1] as stream:
            with pytest.raises(BatcherClosed):
                async for _ in stream:
                    pass


async def test_waiting_items_join_in_the_strategys_order() -> None:
    """With ``ByPriority()``, a freed slot goes to the most urgent waiting item; equal
    priorities keep their arrival order."""
    steps = Steps()
    got: dict[str, Any] = {}

    async def call(name: str, priority: int) -> None:
        got[name] = await c(job(name, 1), priority=priority)

    async with (
        Continuous(steps, batch_size=1, strategy=batched.ByPriority()) as c,
        anyio.create_task_group() as tg,
    ):
        for name, priority in (("first", 5), ("low", 3), ("urgent", 0), ("low2", 3)):
            tg.start_soon(call, name, priority)
            await settle()
    assert steps.seen == [["first"], ["urgent"], ["low"], ["low2"]]


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_reading_always_checkpoints() -> None:
    """``receive()``, ``aclose()`` and ``await c(item)`` are checkpoints on every call,
    also when a value waits already, and when the call is refused."""
    import trio.testing

    async def step(states: list[Any]) -> list[Any]:
        return [Last(state) for state in states]

    c: Continuous[Any, Any] = Continuous(step)
    with trio.testing.assert_checkpoints(), pytest.raises(BatcherClosed):
        await c(1)
    async with c:
        stream = c.stream(1)
        await settle()  # its value waits in the buffer
        with trio.testing.assert_checkpoints():
            assert await stream.receive() == 1
        with trio.testing.assert_checkpoints():
            await stream.aclose()
