"""``batched.Continuous`` observed and steered: ``on_batch`` (one ``BatchInfo`` per step),
``configure``/``settings`` and ``stop_accepting``/``accepting``, on asyncio and trio."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from _helpers import BACKENDS
from hypothesis import given, settings
from hypothesis import strategies as st
from test_continuous import STEP_S, Steps, assert_stats_add_up, collect, job, values

import batched
from batched import BatcherClosed, Continuous, QueueFull
from batched.testing import fresh_backend_options, settle

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio


class Hooked(Steps):
    """:class:`Steps` that calls ``hooks[i]()`` as step ``i`` starts: a change made
    while a known step runs, in the step loop's own task, with no sleep to time it."""

    def __init__(self, hooks: dict[int, Callable[[], object]], **options: Any) -> None:
        super().__init__(**options)
        self.hooks = hooks

    async def __call__(self, states: list[Any]) -> list[Any]:
        hook = self.hooks.get(len(self.seen))
        if hook is not None:
            hook()
        return await super().__call__(states)


# -- on_batch: one BatchInfo per step -------------------------------------------------------


@pytest.mark.virtual_time  # it reads exact waits and durations
async def test_each_step_is_reported_with_its_joiners_waits_and_the_items_that_ended() -> None:
    infos: list[batched.BatchInfo] = []
    steps = Steps(fail_items=frozenset({"c"}))
    got: dict[str, Any] = {}
    with anyio.fail_after(60):
        async with (
            Continuous(steps, batch_size=8, timeout_ms=100, on_batch=infos.append) as c,
            anyio.create_task_group() as tg,
        ):
            t0 = anyio.current_time()
            for name, n in (("a", 3), ("b", 1), ("c", 5)):
                tg.start_soon(collect, c, job(name, n), got)
                await settle()
    assert steps.seen == [["a", "b", "c"], ["a", "c"], ["a"]]
    assert [info.size for info in infos] == [3, 2, 1]
    # Each item's wait counts once, at the step it joined: here all three, after 100 ms.
    assert infos[0].waits_s == pytest.approx((0.1, 0.1, 0.1))
    assert [info.waits_s for info in infos[1:]] == [(), ()]
    assert infos[0].started == pytest.approx(t0 + 0.1)
    assert all(info.duration_s == pytest.approx(STEP_S) for info in infos)
    # b ends with Last at step 0, c with a Failure at step 1, a with Last at step 2.
    assert [info.outcome for info in infos] == [
        batched.OutcomeCounts(completed=1),
        batched.OutcomeCounts(failed=1),
        batched.OutcomeCounts(completed=1),
    ]
    assert [info.reason for info in infos] == ["timeout"] * 3
    assert all(len(info.contexts) == info.size and info.padded_size is None for info in infos)
    assert got["a"] == values("a", 3)
    assert_stats_add_up(c)


async def test_step_reasons_full_budget_and_closing() -> None:
    """``full``: ``batch_size`` items stepped; ``budget``: room was left, and the length
    budget kept an item waiting; ``closing``: the block was left, nothing waited for."""
    for options, names, reasons in (
        ({"batch_size": 2}, ["a", "b", "c"], ["full", "timeout"]),
        ({"batch_size": 8, "max_batch_length": 6}, ["a", "b", "c"], ["budget", "timeout"]),
    ):
        infos: list[batched.BatchInfo] = []
        with anyio.fail_after(60):
            async with Continuous(Steps(), timeout_ms=100, on_batch=infos.append, **options) as c:
                # All three wait before the first step. Each item is 3 long (a tuple):
                # two fit a budget of 6.
                streams = [c.stream(job(name, 1)) for name in names]
                for stream in streams:
                    async with stream:
                        assert len([value async for value in stream]) == 1
        assert [info.reason for info in infos] == reasons, options
        assert [info.waiting for info in infos] == [1, 0], options
    infos = []
    with anyio.fail_after(60):
        async with Continuous(Steps(), timeout_ms=10_000, on_batch=infos.append) as c:
            stream = c.stream(job("a", 1))  # waits out no timeout: the block ends
    async with stream:
        assert [value async for value in stream] == values("a", 1)
    assert [info.reason for info in infos] == ["closing"]


async def test_a_step_error_and_a_departed_reader_are_counted_in_the_steps_outcome() -> None:
    infos: list[batched.BatchInfo] = []
    streams: list[Any] = []
    steps = Hooked({0: lambda: streams[0].close()}, raise_at=frozenset({1}))
    got: dict[str, Any] = {}
    with anyio.fail_after(60):
        async with (
            Continuous(steps, batch_size=4, timeout_ms=100, on_batch=infos.append) as c,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(collect, c, job("a", 5), got)
            await settle()
            streams.append(c.stream(job("x", 5)))  # its reader leaves during step 0
    assert steps.seen == [["a", "x"], ["a"]]
    assert [info.outcome for info in infos] == [
        batched.OutcomeCounts(cancelled=1),
        batched.OutcomeCounts(failed=1),
    ]
    assert isinstance(got["a"], Exception)
    assert_stats_add_up(c)


async def test_a_raising_on_batch_is_logged_and_steps_go_on(caplog: Any) -> None:
    def bad(info: batched.BatchInfo) -> None:
        raise ZeroDivisionError

    with caplog.at_level(logging.ERROR, logger="batched"), anyio.fail_after(60):
        async with Continuous(Steps(), on_batch=bad) as c:
            assert await c(job("a", 3)) == values("a", 3)
    assert sum("on_batch raised" in r.getMessage() for r in caplog.records) == 3


def test_on_batch_is_checked_like_every_fronts() -> None:
    async def observer(info: batched.BatchInfo) -> None: ...

    with pytest.raises(TypeError, match="'on_batch' must be callable or None"):
        Continuous(Steps(), on_batch=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'on_batch' must be a plain"):
        Continuous(Steps(), on_batch=observer)  # type: ignore[arg-type]


# -- configure and settings -------------------------------------------------------------------


async def test_configure_changes_batch_size_from_the_next_join_and_evicts_nobody() -> None:
    got: dict[str, Any] = {}
    c: Continuous[Any, Any]

    def lower() -> None:  # as step 0 runs: a, b, c stay active; d arrives, cannot join
        c.configure(batch_size=1)
        tg.start_soon(collect, c, job("d", 1), got)

    steps = Hooked({0: lower, 2: lambda: c.configure(batch_size=4)})
    with anyio.fail_after(60):
        async with (
            Continuous(steps, batch_size=3, timeout_ms=100) as c,
            anyio.create_task_group() as tg,
        ):
            for name, n in (("a", 4), ("b", 4), ("c", 2)):
                tg.start_soon(collect, c, job(name, n), got)
                await settle()
    # Raised as step 2 runs: d joins step 3, beside a and b.
    assert steps.seen == [["a", "b", "c"], ["a", "b", "c"], ["a", "b"], ["a", "b", "d"]]
    assert c.settings.batch_size == 4
    assert got["d"] == values("d", 1)
    assert_stats_add_up(c)


@pytest.mark.virtual_time  # exact clock readings
async def test_a_shorter_timeout_starts_the_first_step_at_once() -> None:
    steps = Steps(duration=1.0)
    async with Continuous(steps, timeout_ms=60_000) as c:
        start = anyio.current_time()
        stream = c.stream(job("a", 1))
        await anyio.sleep(5)
        assert not steps.seen
        c.configure(timeout_ms=0)
        async with stream:
            assert [value async for value in stream] == values("a", 1)
        assert anyio.current_time() - start == 5 + 1.0


async def test_a_larger_queue_admits_calls_waiting_for_room() -> None:
    steps = Steps(duration=STEP_S)
    with anyio.fail_after(60):
        async with Continuous(steps, batch_size=1, timeout_ms=60_000, max_queue_size=1) as c:
            first = c.stream(job("a", 1))  # waits (the timeout) and fills the queue
            late = c.stream(job("b", 1))  # waits for room
            assert c.stats.queue_size == 1
            c.configure(max_queue_size=2, timeout_ms=0)
            assert c.stats.queue_size == 2
            for stream, name in ((first, "a"), (late, "b")):
                async with stream:
                    assert [value async for value in stream] == values(name, 1)
    assert_stats_add_up(c)


def test_configure_refuses_what_continuous_lacks_and_checks_like_the_constructor() -> None:
    c = Continuous(Steps(), batch_size=4, max_batch_length=10)
    for name in ("max_concurrent_batches", "small_batch_threshold", "max_wait_ms", "strategy"):
        refused = f"configure\\(\\) of a Continuous cannot change '{name}'"
        with pytest.raises(TypeError, match=refused):
            c.configure(**{name: 1})
    with pytest.raises(ValueError, match="'batch_size' must be >= 1: 0"):
        c.configure(timeout_ms=1, batch_size=0)
    with pytest.raises(TypeError, match="'timeout_ms' must be a number"):
        c.configure(timeout_ms=None)
    assert (c.settings.batch_size, c.settings.timeout_ms) == (4, 0.0)  # all or nothing
    c.configure(batch_size=2, timeout_ms=5, max_batch_length=None, max_queue_size=3)
    s = c.settings
    assert (s.batch_size, s.timeout_ms, s.max_batch_length, s.max_queue_size) == (2, 5.0, None, 3)


async def test_a_budget_cannot_be_turned_on_while_open_without_one() -> None:
    async with Continuous(Steps()) as c:
        with pytest.raises(ValueError, match="'max_batch_length' cannot be set while"):
            c.configure(max_batch_length=5)
        assert c.settings.max_batch_length is None
        assert await c(job("a", 2)) == values("a", 2)


async def test_configure_while_closed_applies_from_the_next_open() -> None:
    steps = Steps()
    c = Continuous(steps, batch_size=4)
    c.configure(batch_size=1)
    with anyio.fail_after(60):
        async with c, anyio.create_task_group() as tg:
            for name in ("a", "b"):
                tg.start_soon(c, job(name, 1))
                await settle()
    assert steps.seen == [["a"], ["b"]]


# -- stop_accepting and accepting -------------------------------------------------------------


async def test_stop_accepting_serves_active_and_waiting_items_and_refuses_the_rest() -> None:
    steps = Steps()
    got: dict[str, Any] = {}
    c = Continuous(steps, batch_size=1, max_queue_size=1)
    assert not c.accepting
    c.stop_accepting()  # closed: nothing to stop
    with anyio.fail_after(60):
        async with c, anyio.create_task_group() as tg:
            assert c.accepting
            tg.start_soon(collect, c, job("a", 3), got)  # active
            await settle()
            tg.start_soon(collect, c, job("b", 2), got)  # waiting to join
            await settle()
            tg.start_soon(collect, c, job("room", 1), got)  # waiting for room
            await settle()
            c.stop_accepting()
            assert not c.accepting
            with pytest.raises(BatcherClosed, match="stopped accepting"):
                c.stream(job("x", 1))
            with pytest.raises(BatcherClosed, match="stopped accepting"):
                await c(job("y", 1))
            with pytest.raises(BatcherClosed):
                c.stream(job("z", 1), wait=False)  # refused before any QueueFull
    assert got["a"] == values("a", 3)
    assert got["b"] == values("b", 2)
    assert isinstance(got["room"], BatcherClosed)
    assert "room" not in steps.names()
    assert c.stats.failed == 4  # room, x, y, z: refusals are failures, as for Batcher
    assert c.stats.rejected == 0
    assert_stats_add_up(c)
    async with c:  # entering again accepts again
        assert c.accepting
        assert await c(job("again", 1)) == values("again", 1)


async def test_a_full_queue_still_says_queue_full_until_stopped() -> None:
    async with Continuous(Steps(), batch_size=1, timeout_ms=60_000, max_queue_size=1) as c:
        stream = c.stream(job("a", 1))
        with pytest.raises(QueueFull):
            c.stream(job("b", 1), wait=False)
        c.stop_accepting()
        with pytest.raises(BatcherClosed):
            c.stream(job("b", 1), wait=False)
        async with stream:
            assert [value async for value in stream] == values("a", 1)


# -- property: configure while steps run binds every later join --------------------------------


@st.composite
def _scripts(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 10))
    return {
        # (values, arrival in ms) per item
        "items": draw(
            st.lists(st.tuples(st.integers(1, 4), st.integers(0, 6)), min_size=n, max_size=n)
        ),
        "batch_size": draw(st.integers(1, 4)),
        # step index -> the batch_size configured as that step starts
        "changes": draw(st.dictionaries(st.integers(0, 12), st.integers(1, 4), max_size=4)),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@settings(deadline=None, max_examples=50)
@given(script=_scripts())
def test_configure_while_steps_run_binds_every_later_join(
    backend: str, script: dict[str, Any]
) -> None:
    """A step that items joined holds at most the ``batch_size`` in force at its join
    (set by a ``configure`` during an earlier step); items already active stay; every
    reader still reads its own values; ``on_batch`` says ``full`` exactly at that size."""
    changes: dict[int, int] = script["changes"]
    seen: list[tuple[list[str], int]] = []  # each step's items, and the size at its join
    infos: list[batched.BatchInfo] = []
    got: dict[str, Any] = {}
    in_force = [script["batch_size"]]

    async def main() -> None:
        async def step(states: list[Any]) -> list[Any]:
            index = len(seen)
            seen.append(([state[0] for state in states], in_force[-1]))
            if index in changes:
                c.configure(batch_size=changes[index])
                in_force.append(changes[index])
            await anyio.sleep(0.001)
            return [Steps().outcome(state) for state in states]

        async def one(name: str, n: int, at_ms: int) -> None:
            await anyio.sleep(at_ms / 1000)
            await collect(c, job(name, n), got)

        c = Continuous(step, batch_size=script["batch_size"], on_batch=infos.append)
        with anyio.fail_after(3600):
            async with c, anyio.create_task_group() as tg:
                for index, (n, at_ms) in enumerate(script["items"]):
                    tg.start_soon(one, f"i{index}", n, at_ms)
        assert_stats_add_up(c)

    anyio.run(main, backend=backend, backend_options=fresh_backend_options(backend))
    for index, (n, _) in enumerate(script["items"]):
        assert got[f"i{index}"] == values(f"i{index}", n)
    previous: list[str] = []
    for (names, size), info in zip(seen, infos, strict=True):
        if set(names) - set(previous):  # someone joined this step
            assert len(names) <= size, (names, size, seen)
        assert (info.reason == "full") == (len(names) >= size), (info, size)
        previous = names
    for index, (n, _) in enumerate(script["items"]):
        # Never evicted: an item of n values is in n steps in a row, however the size fell.
        steps_in = [i for i, (names, _) in enumerate(seen) if f"i{index}" in names]
        assert steps_in == list(range(steps_in[0], steps_in[0] + n)), (index, seen)
