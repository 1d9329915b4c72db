"""Steering a running batcher: ``configure(**settings)``, ``settings``,
``stop_accepting()`` and ``accepting``, on every front, on asyncio and trio.

The property test plays arrivals and reconfigurations on virtual time: arrivals, batch
durations and timeouts are whole milliseconds, each reconfiguration is made at its own
fraction of a millisecond off them, so no batch is cut at the instant of a change it did
not cause, and the settings in force at each cut are known.
"""

from __future__ import annotations

import inspect
import math
import threading
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import pytest
from _helpers import (
    BACKENDS,
    JOIN,
    Rec,
    assert_stats_add_up,
    close_bounded,
    echo,
    launch,
    recorded,
    tag,
    wait_until,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import batched
from batched.testing import fresh_backend_options, settle

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio

TUNABLE = (
    "batch_size",
    "timeout_ms",
    "max_batch_length",
    "max_queue_size",
    "max_concurrent_batches",
    "small_batch_threshold",
    "max_wait_ms",
)


def _length(item: tuple[int, int]) -> int:
    return item[1]


# -- the property: configure under concurrent calls never breaks a limit ------------------

_change = st.fixed_dictionaries(
    {},
    optional={
        "batch_size": st.integers(1, 8),
        "timeout_ms": st.integers(0, 10),
        "max_batch_length": st.none() | st.integers(5, 30),
        "max_queue_size": st.none() | st.integers(1, 6),
        "max_concurrent_batches": st.integers(1, 3),
        "small_batch_threshold": st.integers(0, 3),
        "max_wait_ms": st.integers(0, 20),
    },
)


@st.composite
def _scripts(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 30))
    return {
        "arrivals": sorted(draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))),
        "lengths": draw(st.lists(st.integers(1, 8), min_size=n, max_size=n)),
        "durations": draw(st.lists(st.integers(0, 6), min_size=1, max_size=8)),
        "initial": {
            "batch_size": draw(st.integers(1, 8)),
            "timeout_ms": draw(st.integers(0, 10)),
            # Given, so that lengths are counted and the budget may change while open.
            "max_batch_length": draw(st.integers(5, 30)),
            "max_queue_size": draw(st.none() | st.integers(1, 6)),
            "max_concurrent_batches": draw(st.integers(1, 3)),
            "small_batch_threshold": draw(st.integers(0, 3)),
            "max_wait_ms": draw(st.integers(0, 20)),
        },
        "changes": sorted(
            draw(st.lists(st.tuples(st.integers(0, 60), _change), max_size=6)),
            key=lambda change: change[0],
        ),
    }


def _offset(i: int) -> float:
    """When change ``i`` is made, in ms past a whole millisecond. Arrivals, timeouts and
    durations are whole milliseconds, so a batch is cut on a whole millisecond, or a
    whole number of them after the change that let it start (more slots, a shorter
    timeout...): distinct offsets mean no batch is ever cut at the instant of another
    change, where the order of the two would be unknown."""
    return (i + 1) / 8


def _play(backend: str, front: str, script: dict[str, Any]) -> None:
    arrivals, lengths, durations = script["arrivals"], script["lengths"], script["durations"]
    # (when it took effect, in ms from the start; the settings from then on)
    history: list[tuple[float, batched.BatcherSettings]] = []
    batches: list[tuple[float, list[Any], int]] = []  # (start in ms, items, running)
    results: dict[int, Any] = {}

    async def main() -> None:
        t0 = anyio.current_time()
        running = 0

        async def fn(items: list[Any]) -> list[Any]:
            nonlocal running
            running += 1
            batches.append(((anyio.current_time() - t0) * 1000, list(items), running))
            try:
                await anyio.sleep(durations[len(batches) % len(durations)] / 1000)
            finally:
                running -= 1
            return tag(items)

        target: Any
        if front == "batcher":
            target = batched.Batcher(fn, length_fn=_length, **script["initial"])
        else:  # the decorator outside `async with`: its callers run the batches
            target = batched.dynamically(length_fn=_length, **script["initial"])(fn)
        history.append((-math.inf, target.settings))

        async def caller(i: int, at: int) -> None:
            await anyio.sleep_until(t0 + at / 1000)
            results[i] = await target((i, lengths[i]))

        async def steer() -> None:
            for i, (at, change) in enumerate(script["changes"]):
                when = at + _offset(i)
                await anyio.sleep_until(t0 + when / 1000)
                target.configure(**change)
                history.append((when, target.settings))

        async def play() -> None:
            with anyio.fail_after(3600):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(steer)
                    for i, at in enumerate(arrivals):
                        tg.start_soon(caller, i, at)

        if front == "batcher":
            async with target:
                await play()
        else:
            await play()
        assert_stats_add_up(target)
        assert target.stats.completed == len(arrivals)

    anyio.run(main, backend=backend, backend_options=fresh_backend_options(backend))

    assert results == {i: ("r", (i, lengths[i])) for i in range(len(arrivals))}
    for start, items, running in batches:
        # The settings in force when the batch was cut. A batch starting when a change
        # was made was cut by it (see _offset).
        s = [s for at, s in history if at <= start + 0.05][-1]
        assert 1 <= len(items) <= s.batch_size, (start, items, s)
        summed = sum(length for _, length in items)
        budget = math.inf if s.max_batch_length is None else s.max_batch_length
        assert summed <= budget or len(items) == 1, (start, items, s)
        assert running <= s.max_concurrent_batches, (start, items, running, s)


@pytest.mark.parametrize("front", ["batcher", "decorator"])
@pytest.mark.parametrize("backend", BACKENDS)
@settings(deadline=None, max_examples=60)
@given(script=_scripts())
def test_configure_never_breaks_a_limit_for_a_later_cut(
    backend: str, front: str, script: dict[str, Any]
) -> None:
    _play(backend, front, script)


# -- configure: checked like the constructor, all or nothing -------------------------------

BAD = [
    {"batch_size": 0},
    {"batch_size": True},
    {"batch_size": 2.5},
    {"timeout_ms": -1},
    {"timeout_ms": math.nan},
    {"max_wait_ms": "1"},
    {"max_batch_length": 0},
    {"max_queue_size": 0},
    {"max_concurrent_batches": 0},
    {"small_batch_threshold": -1},
]


@pytest.mark.parametrize("bad", BAD, ids=lambda bad: f"{next(iter(bad))}={bad[next(iter(bad))]!r}")
def test_configure_refuses_what_the_constructor_refuses_with_its_message(
    bad: dict[str, Any],
) -> None:
    with pytest.raises((TypeError, ValueError)) as made:
        batched.Batcher(echo, **bad)
    b = batched.Batcher(echo, batch_size=4)
    before = b.settings
    with pytest.raises(made.type) as configured:
        b.configure(**{"batch_size": 2, **bad})  # a good change beside it is not applied
    assert str(configured.value) == str(made.value)
    assert b.settings == before


def test_configure_names_what_it_does_not_change() -> None:
    b = batched.Batcher(echo)
    with pytest.raises(TypeError, match=r"'bogus'.*batch_size") as refused:
        b.configure(bogus=1, batch_size=2)
    assert "fixed" not in str(refused.value)
    with pytest.raises(TypeError, match=r"'strategy', 'fn'.*fixed"):
        b.configure(strategy=batched.ByLength(), fn=echo)
    assert b.settings.batch_size == 32


def test_settings_hold_every_constructor_setting() -> None:
    constructor = set(inspect.signature(batched.Batcher).parameters)
    assert {field.name for field in attrs.fields(batched.BatcherSettings)} == constructor
    b = batched.Batcher(echo, batch_size=3, max_queue_size=7, strategy=batched.ByPriority())
    s = b.settings
    assert (s.fn, s.batch_size, s.max_queue_size) == (echo, 3, 7)
    assert s.strategy == batched.ByPriority()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.batch_size = 5  # type: ignore[misc]
    b.configure(batch_size=5, max_queue_size=None)
    assert (b.settings.batch_size, b.settings.max_queue_size) == (5, None)
    assert s.batch_size == 3  # a snapshot


async def test_configure_while_closed_applies_from_the_next_open() -> None:
    rec = Rec()
    b = batched.Batcher(rec, batch_size=8, timeout_ms=1)
    b.configure(batch_size=2)
    async with b:
        assert await b.many(range(5)) == tag(range(5))
    assert [len(batch) for batch in rec.batches] == [2, 2, 1]


async def test_a_budget_cannot_be_set_on_an_open_batcher_made_without_one() -> None:
    # Its waiting items have no lengths counted: the new budget could not be kept.
    b = batched.Batcher(echo, batch_size=8)
    async with b:
        with pytest.raises(ValueError, match="'max_batch_length' cannot be set while"):
            b.configure(max_batch_length=10, batch_size=4)
        assert b.settings.batch_size == 8
    b.configure(max_batch_length=10)  # closed: from the next open
    assert b.settings.max_batch_length == 10
    async with b:
        assert await b("abc") == ("r", "abc")
        b.configure(max_batch_length=None)
        b.configure(max_batch_length=4)  # counted since this open: it may come back


# -- configure: effective at once, for waiting calls too ------------------------------------

FRONTS = ["batcher", "decorator", "owned decorator"]


async def _with_front(front: str, rec: Rec, run: Callable[[Any], Any], **options: Any) -> None:
    """Run ``run(target)`` with ``rec`` behind the front named ``front``."""
    if front == "batcher":
        async with batched.Batcher(rec, **options) as b:
            await run(b)
        return
    f = recorded(rec, **options)
    if front == "decorator":
        await run(f)
        return
    async with f:
        await run(f)


@pytest.mark.virtual_time  # it reads exact times
@pytest.mark.parametrize("front", FRONTS)
async def test_a_shorter_timeout_sends_what_waits_at_once(front: str) -> None:
    rec = Rec()

    async def run(target: Any) -> None:
        t0 = anyio.current_time()
        async with anyio.create_task_group() as tg:
            caller = await launch(tg, target, "a")
            await anyio.sleep(0.001)
            target.configure(timeout_ms=0)
        assert caller.result == ("r", "a")
        assert rec.times[0] - t0 == pytest.approx(0.001)  # not after the first 10 s

    await _with_front(front, rec, run, timeout_ms=10_000)


@pytest.mark.parametrize("front", FRONTS)
async def test_more_concurrent_batches_start_at_once_fewer_cancel_none(front: str) -> None:
    rec = Rec(hold={0, 1})

    async def run(target: Any) -> None:
        async with anyio.create_task_group() as tg:
            first = await launch(tg, target, 0)
            second = await launch(tg, target, 1)
            assert rec.batches == [[0]]  # one slot: 1 waits
            target.configure(max_concurrent_batches=2)
            await settle()
            assert rec.batches == [[0], [1]]  # started beside the held one
            target.configure(max_concurrent_batches=1)
            third = await launch(tg, target, 2)
            assert rec.batches == [[0], [1]]  # two run: no third may start
            rec.release.set()
        assert rec.cancelled == 0
        assert [c.result for c in (first, second, third)] == tag([0, 1, 2])
        assert_stats_add_up(target)

    await _with_front(front, rec, run, batch_size=1, timeout_ms=0)


@pytest.mark.parametrize("front", ["batcher", "owned decorator"])
async def test_a_larger_queue_admits_waiting_calls_at_once(front: str) -> None:
    rec = Rec(hold={0})

    async def run(target: Any) -> None:
        async with anyio.create_task_group() as tg:
            await launch(tg, target, 0)  # runs, held
            await launch(tg, target, 1)  # takes the room
            waiting = await launch(tg, target, 2)  # waits for room
            assert target.stats.queue_size == 1
            with pytest.raises(batched.QueueFull):
                await target(3, wait=False)
            target.configure(max_queue_size=3)
            assert target.stats.queue_size == 2  # let in by configure itself
            late = await launch(tg, target, 4, wait=False)
            rec.release.set()
        assert (waiting.result, late.result) == (("r", 2), ("r", 4))
        assert_stats_add_up(target)

    await _with_front(front, rec, run, batch_size=1, timeout_ms=0, max_queue_size=1)


async def test_a_smaller_batch_size_binds_items_already_waiting() -> None:
    rec = Rec(hold={0})
    b = batched.Batcher(rec, batch_size=8, timeout_ms=0)
    async with b, anyio.create_task_group() as tg:
        await launch(tg, b, 0)
        for i in range(1, 8):
            await launch(tg, b, i)
        b.configure(batch_size=3)
        rec.release.set()
    assert rec.batches == [[0], [1, 2, 3], [4, 5, 6], [7]]


# -- stop_accepting ---------------------------------------------------------------------------


@pytest.mark.parametrize("front", FRONTS)
async def test_stop_accepting_serves_what_was_accepted_and_refuses_the_rest(front: str) -> None:
    rec = Rec(hold={0})

    async def run(target: Any) -> None:
        async with anyio.create_task_group() as tg:
            held = await launch(tg, target, 0)
            accepted = [await launch(tg, target, i) for i in (1, 2)]
            many = await launch(tg, target.many, [3, 4])
            assert target.accepting
            target.stop_accepting()
            assert not target.accepting
            with pytest.raises(batched.BatcherClosed, match="stop_accepting"):
                await target(5)
            with pytest.raises(batched.BatcherClosed, match="stop_accepting"):
                await target.many([6, 7])
            rec.release.set()
        assert [c.result for c in (held, *accepted)] == tag([0, 1, 2])
        assert many.result == tag([3, 4])
        assert sorted(rec.seen()) == [0, 1, 2, 3, 4]
        stats = target.stats
        assert (stats.completed, stats.failed) == (5, 3)
        assert_stats_add_up(target)

    await _with_front(front, rec, run, batch_size=8, timeout_ms=5)


async def test_stop_accepting_refuses_calls_still_waiting_for_room() -> None:
    rec = Rec(hold={0})
    async with batched.Batcher(rec, batch_size=1, timeout_ms=0, max_queue_size=1) as b:
        async with anyio.create_task_group() as tg:
            held = await launch(tg, b, 0)
            accepted = await launch(tg, b, 1)
            for_room = await launch(tg, b, 2)
            b.stop_accepting()
            await settle()
            assert isinstance(for_room.error, batched.BatcherClosed)
            assert "queue room" in str(for_room.error)
            rec.release.set()
        assert [held.result, accepted.result] == tag([0, 1])
    assert rec.seen() == [0, 1]
    assert_stats_add_up(b)


@pytest.mark.parametrize("front", ["batcher", "owned decorator"])
async def test_entering_again_accepts_again(front: str) -> None:
    rec = Rec()
    target: Any = (
        batched.Batcher(rec, timeout_ms=0) if front == "batcher" else recorded(rec, timeout_ms=0)
    )
    async with target:
        target.stop_accepting()
        with pytest.raises(batched.BatcherClosed):
            await target(1)
    assert not target.accepting  # closed; a decorated function stays stopped
    async with target:
        assert target.accepting
        assert await target(2) == ("r", 2)


async def test_stopped_pulled_batcher_still_hands_out_what_it_accepted() -> None:
    async with anyio.create_task_group() as tg, batched.Batcher(batch_size=4, timeout_ms=1) as b:
        caller = await launch(tg, b, "x")
        b.stop_accepting()
        with pytest.raises(batched.BatcherClosed):
            await b("y")
        async with b.batches() as batches:  # a consumer may still come for it
            batch = await batches.receive()
            batch.set_results([item.upper() for item in batch.items])
            await settle()
    assert caller.result == "X"


async def test_a_decorated_function_stopped_outside_a_block_refuses_until_entered() -> None:
    rec = Rec()
    f = recorded(rec, timeout_ms=0)
    f.stop_accepting()
    with pytest.raises(batched.BatcherClosed, match="stop_accepting"):
        await f(1)
    assert not f.accepting
    async with f:
        assert await f(2) == ("r", 2)
    assert await f(3) == ("r", 3)  # and outside the block too
    assert_stats_add_up(f)


# -- sync functions, from threads (real time, small) -----------------------------------------


def test_sync_function_configured_and_stopped_from_other_threads() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    # Two slots: a batch then runs off the serving thread, which keeps taking calls while
    # the gate holds fn (with one slot fn runs in the serving thread, and calls from other
    # threads are taken in only when it returns: the wait below would end by the gate's
    # timeout, not by the calls).
    @batched.dynamically(batch_size=8, timeout_ms=50, max_concurrent_batches=2)
    def double(xs: list[int]) -> list[int]:
        gate.wait(JOIN)
        sizes.append(len(xs))
        return [2 * x for x in xs]

    try:
        double.configure(batch_size=2)  # before the serving thread starts
        results: dict[int, Any] = {}

        def call(x: int) -> None:
            try:
                results[x] = double(x)
            except batched.BatcherClosed as exc:
                results[x] = exc

        configurer = threading.Thread(target=double.configure, kwargs={"timeout_ms": 0})
        configurer.start()
        configurer.join(JOIN)
        assert double.settings.timeout_ms == 0
        threads = [threading.Thread(target=call, args=(x,)) for x in range(5)]
        for thread in threads:
            thread.start()
        wait_until(lambda: double.stats.submitted == 5, "5 calls accepted")
        stopper = threading.Thread(target=double.stop_accepting)
        stopper.start()
        stopper.join(JOIN)
        assert not double.accepting
        with pytest.raises(batched.BatcherClosed, match="stop_accepting"):
            double(9)
        gate.set()
        for thread in threads:
            thread.join(JOIN)
        assert results == {x: 2 * x for x in range(5)}
        assert max(sizes) <= 2
        with double:  # reopened: accepting again
            assert double.accepting
            assert double(6) == 12
    finally:
        gate.set()
        close_bounded(double)
    assert_stats_add_up(double)


def test_sync_function_runs_more_batches_at_once_after_configure() -> None:
    started = threading.Semaphore(0)
    gate = threading.Event()

    @batched.dynamically(batch_size=1, timeout_ms=0)
    def held(xs: list[int]) -> list[int]:
        started.release()
        gate.wait(JOIN)
        return xs

    try:
        gate.set()
        assert held(0) == 0  # one slot, in the serving thread
        assert started.acquire(timeout=JOIN)
        gate.clear()
        held.configure(max_concurrent_batches=2)
        threads = [threading.Thread(target=held, args=(x,)) for x in (1, 2)]
        for thread in threads:
            thread.start()
        # Both batches run at once: with one slot the second would wait for the gate.
        assert started.acquire(timeout=JOIN)
        assert started.acquire(timeout=JOIN)
        gate.set()
        for thread in threads:
            thread.join(JOIN)
    finally:
        gate.set()
        close_bounded(held)
    assert_stats_add_up(held)


async def test_seed_processors_are_steered_too() -> None:
    processor = batched.aio.AsyncBatchProcessor(echo, batch_size=4)
    processor.configure(batch_size=2)
    assert processor.settings.batch_size == 2
    processor.stop_accepting()
    with pytest.raises(batched.BatcherClosed):
        await processor(1)
