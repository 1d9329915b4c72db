"""``timeout_ms="auto"``: each batch's wait chosen from the measured arrival rate and
``fn``'s measured cost (issue 16).

The policy's own arithmetic is tested as a core unit (no event loop); what a user sees
(a lone call leaves at once, batches fill under load, the cap) through the public API on
both backends, in virtual time.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from _helpers import echo
from hypothesis import given
from hypothesis import strategies as st

import batched
from batched._core.auto import CAP, Auto
from batched._core.cost import Cost
from batched.batch_generator import BatchGenerator

# -- the policy, as a core unit --------------------------------------------------------


def _cost(per_batch: float, per_item: float = 0.0) -> Cost:
    cost = Cost()
    for size in [1, 4, 16] * 10:
        cost.add(size, per_batch + per_item * size)
    return cost


def _busy(rate: float, seconds: float = 1.0) -> Auto:
    """An ``Auto`` that has seen ``rate`` items per second for ``seconds`` (one cut per
    millisecond), ending at ``seconds``."""
    auto = Auto()
    for ms in range(round(seconds * 1000) + 1):
        auto.observe(ms / 1000, round(rate * ms / 1000))
    return auto


def test_nothing_measured_means_no_wait() -> None:
    # Before fn has run, and before any cut: a batcher's first call never waits.
    assert Auto().wait(0.0, 1, 1, Cost(), math.inf) == 0.0
    assert _busy(5000).wait(1.0, 5000, 1, Cost(), math.inf) == 0.0
    assert Auto().wait(0.0, 1, 1, _cost(0.002), math.inf) == 0.0


def test_low_rate_sends_a_lone_item_at_once() -> None:
    # 100 items/s against 2 ms per batch: the next item is not expected before a batch
    # of this one would be done.
    assert _busy(100).wait(1.0, 100, 1, _cost(0.002, 0.0001), math.inf) == 0.0


def test_high_rate_waits_less_as_more_items_wait() -> None:
    auto, cost = _busy(5000), _cost(0.004)
    waits = [auto.wait(1.0, 5000, q, cost, math.inf) for q in (1, 5, 10, 20, 30)]
    # (4 ms - q x 0.2 ms) / 2: 1.9, 1.5, 1.0 ms, then none once 20 items wait (as many
    # as arrive during one batch's fixed cost).
    assert waits == pytest.approx([0.0019, 0.0015, 0.001, 0.0, 0.0], abs=1e-5)


def test_no_wait_when_another_slot_frees_up_at_once() -> None:
    auto, cost = _busy(5000), _cost(0.004)
    assert auto.wait(1.0, 5000, 1, cost, 0.0002) == 0.0
    assert auto.wait(1.0, 5000, 1, cost, 0.002) < auto.wait(1.0, 5000, 1, cost, math.inf)


def test_a_quiet_spell_is_seen_at_once() -> None:
    # 5,000 items/s for a second, then one item after a second of quiet: it leaves at
    # once, though no cut has happened since the busy spell.
    auto, cost = _busy(5000), _cost(0.004)
    assert auto.wait(1.0, 5000, 1, cost, math.inf) > 0.0
    assert auto.wait(2.0, 5001, 1, cost, math.inf) == 0.0


@given(
    rate=st.floats(0.0, 1e6),
    per_batch=st.floats(0.0, 10.0),
    per_item=st.floats(0.0, 1.0),
    waiting=st.integers(1, 10_000),
    free_in=st.floats(0.0, 100.0) | st.just(math.inf),
)
def test_the_wait_never_exceeds_the_cap(
    rate: float, per_batch: float, per_item: float, waiting: int, free_in: float
) -> None:
    auto, cost = _busy(rate, 0.2), _cost(per_batch, per_item)
    wait = auto.wait(0.2, round(rate * 0.2), waiting, cost, free_in)
    a, _ = cost.line()
    assert 0.0 <= wait <= min(CAP, a / 2)


def test_fill_waits_for_the_batch_size_that_keeps_up() -> None:
    # 2,000 items/s on 4 slots of 20 ms + 0.5 ms per item: batches keep up from
    # n = r·a / (k - r·b) = 40 / 3 items. With 5 waiting, the oldest there 1 ms, the rest
    # take (40/3 - 5) / 2000 s to arrive.
    auto, cost = _busy(2000), _cost(0.020, 0.0005)
    need = 2000 * 0.020 / (4 - 2000 * 0.0005)
    wait = auto.fill(1.0, 2000, 5, cost, 4, 32, 0.999)
    assert wait == pytest.approx(0.001 + (need - 5) / 2000, rel=1e-3)
    assert auto.fill(1.0, 2000, 14, cost, 4, 32, 0.999) == 0.0  # enough wait already
    assert auto.fill(1.0, 2000, 5, cost, 8, 32, 0.999) < wait  # more slots, smaller batches
    assert auto.fill(1.0, 2000, 5, cost, 4, 8, 1.0) == pytest.approx(3 / 2000, rel=1e-3)


def test_a_fill_wait_counts_from_the_last_arrival_not_from_each_wake_up() -> None:
    """Asked again later with no new arrival (the driver's timer fired), the wait is not
    pushed back: it is over once the rest were due (it shrinks a little as the rate,
    with nothing arriving, decays)."""
    auto, cost = _busy(2000), _cost(0.020, 0.0005)
    first = auto.fill(1.0, 2000, 5, cost, 4, 32, 0.999)
    again = auto.fill(0.999 + first, 2000, 5, cost, 4, 32, 0.999)
    assert 0.0 < again <= first  # its end is now or past: the batch leaves
    # A new arrival counts the rest from when it is first seen.
    later = auto.fill(1.002, 2001, 6, cost, 4, 32, 0.999)
    # (the rate read at 1.002 ms is a little below 2,000/s: a loose match)
    assert later == pytest.approx(0.003 + (2000 * 0.020 / 3 - 6) / 2000, rel=0.03)


def test_fill_waits_for_a_full_batch_when_nothing_smaller_keeps_up() -> None:
    # 2,000 items/s at 1 ms per item: 2 slots are busy with the items alone.
    auto, cost = _busy(2000), _cost(0.001, 0.001)
    assert auto.fill(1.0, 2000, 31, cost, 2, 32, 1.0) == pytest.approx(1 / 2000, rel=1e-3)


def test_fill_waits_for_nothing_unmeasured() -> None:
    assert Auto().fill(0.0, 1, 1, _cost(0.020), 4, 32, 0.0) == 0.0  # no rate yet
    assert _busy(2000).fill(1.0, 2000, 1, Cost(), 4, 32, 1.0) == 0.0  # fn never ran
    assert _busy(0).fill(1.0, 0, 1, _cost(0.020), 4, 32, 1.0) == 0.0  # nothing arrives


@given(
    rate=st.floats(0.0, 1e6),
    per_batch=st.floats(0.0, 10.0),
    per_item=st.floats(0.0, 1.0),
    waiting=st.integers(1, 10_000),
    slots=st.integers(2, 64),
    size=st.integers(1, 1024),
    waited=st.floats(0.0, 1.0),
)
def test_the_fill_wait_never_exceeds_the_cap(
    rate: float,
    per_batch: float,
    per_item: float,
    waiting: int,
    slots: int,
    size: int,
    waited: float,
) -> None:
    auto, cost = _busy(rate, 0.2), _cost(per_batch, per_item)
    wait = auto.fill(0.2, round(rate * 0.2), waiting, cost, slots, size, 0.2 - waited)
    assert 0.0 <= wait <= CAP
    if waiting >= size:
        assert wait == 0.0  # a full batch never waits


# -- through the public API, on both backends -------------------------------------------


class Device:
    """A batch function that takes ``per_batch`` seconds (virtual), plus ``per_item`` per
    item, and records each batch's size and start."""

    def __init__(self, per_batch: float, per_item: float = 0.0) -> None:
        self.per_batch = per_batch
        self.per_item = per_item
        self.batches: list[tuple[float, int]] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append((anyio.current_time(), len(items)))
        await anyio.sleep(self.per_batch + self.per_item * len(items))
        return items


async def _steady(b: Any, every: float, n: int) -> list[float]:
    """``n`` calls, one each ``every`` seconds; each call's latency."""
    latencies: list[float] = []

    async def call(i: int) -> None:
        start = anyio.current_time()
        assert await b(i) == i
        latencies.append(anyio.current_time() - start)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(call, i)
            await anyio.sleep(every)
    return latencies


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_a_lone_call_at_low_load_leaves_at_once() -> None:
    device = Device(0.002)
    with anyio.fail_after(60):
        async with batched.Batcher(device, batch_size=32, timeout_ms="auto") as b:
            # A busy spell first (1,000 calls/s against 2 ms per batch, where a slot
            # that frees up would wait for more), then quiet.
            await _steady(b, 0.001, 300)
            await anyio.sleep(1.0)
            for _ in range(3):
                start = anyio.current_time()
                assert await b(7) == 7
                # Only the batch's own cost: no wait for company that is not coming.
                assert anyio.current_time() - start == pytest.approx(0.002)
                await anyio.sleep(0.5)


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_under_steady_load_a_free_slot_waits_for_company() -> None:
    """Two slots, 10 ms per batch, a call each millisecond. Sent at once (timeout_ms=0),
    every other batch is a single item that took the slot freed a moment ago; "auto"
    waits on the last free slot, and no batch is a lone item once the rate is known."""
    sizes: dict[object, list[int]] = {}
    for timeout in (0, "auto"):
        device = Device(0.010)
        with anyio.fail_after(60):
            async with batched.Batcher(
                device, batch_size=32, timeout_ms=timeout, max_concurrent_batches=2
            ) as b:
                start = anyio.current_time()
                await _steady(b, 0.001, 400)
        sizes[timeout] = [n for at, n in device.batches if at - start >= 0.2]
    assert 1 in sizes[0]  # what the test tells apart
    assert min(sizes["auto"]) >= 2
    assert max(sizes["auto"]) < max(sizes[0])  # the slots share the load more evenly


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_with_several_slots_batches_keep_up_with_the_arrivals() -> None:
    """Four slots of 20 ms + 0.5 ms per item, a call each half millisecond: batches keep
    up from 40/3 items. Sent at once (timeout_ms=0), a free slot takes whatever waits,
    down to lone items, and spends its 20 ms on them; "auto" waits for about as many
    items as keep up, and every call is served sooner on average."""
    sizes: dict[object, list[int]] = {}
    latency: dict[object, float] = {}
    for timeout in (0, "auto"):
        device = Device(0.020, 0.0005)
        with anyio.fail_after(60):
            async with batched.Batcher(
                device, batch_size=32, timeout_ms=timeout, max_concurrent_batches=4
            ) as b:
                start = anyio.current_time()
                latencies = await _steady(b, 0.0005, 1000)
        sizes[timeout] = [n for at, n in device.batches if at - start >= 0.2]
        latency[timeout] = sum(latencies[200:]) / len(latencies[200:])
    assert min(sizes[0]) == 1  # what the test tells apart
    assert min(sizes["auto"]) >= 10
    assert latency["auto"] < latency[0]


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_pulled_batches_count_each_consumer_as_a_slot() -> None:
    """Four consumers of `batches()`, each 20 ms + 0.5 ms per item, a call each half
    millisecond: as with four slots, batches keep up from 40/3 items. (Counted by
    ``max_concurrent_batches``, which consumers do not use, "auto" saw one slot and sent
    batches of 3.)"""
    sizes: list[tuple[float, int]] = []
    with anyio.fail_after(60):
        async with batched.Batcher[int, int](batch_size=32, timeout_ms="auto") as b:

            async def consume() -> None:
                async for batch in b.batches():
                    sizes.append((anyio.current_time(), len(batch.items)))
                    await anyio.sleep(0.020 + 0.0005 * len(batch.items))
                    batch.set_results(list(batch.items))

            async with anyio.create_task_group() as consumers:
                for _ in range(4):
                    consumers.start_soon(consume)
                start = anyio.current_time()
                await _steady(b, 0.0005, 1000)
                consumers.cancel_scope.cancel()
    assert min(n for at, n in sizes if at - start >= 0.2) >= 10


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_after_a_busy_spell_a_late_pair_of_calls_does_not_wait_out_the_cap() -> None:
    """Two slots of 2 ms after 5,000 calls/s: the rate read still says "busy" 5 ms later,
    so two calls wait a little (about 0.3 ms) for company that does not come, then leave
    (a wait whose end moved with each wake-up of the driver held them the whole 10 ms)."""
    device = Device(0.002)
    with anyio.fail_after(60):
        async with batched.Batcher(
            device, batch_size=32, timeout_ms="auto", max_concurrent_batches=2
        ) as b:
            await _steady(b, 0.0002, 500)
            await anyio.sleep(0.005)
            start = anyio.current_time()
            async with anyio.create_task_group() as tg:
                for i in (1000, 1001):
                    tg.start_soon(b, i)
            took = anyio.current_time() - start
    assert took < 0.002 + CAP / 2


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_the_wait_is_capped() -> None:
    """A model measured as slow (1 s per batch) that turns fast: the rule wants long
    waits (half a second for a lone item at 1,000 calls/s), the cap gives 10 ms."""
    waits: list[float] = []
    slow = True

    async def fn(items: list[int]) -> list[int]:
        await anyio.sleep(1.0 if slow else 0.0)
        return items

    def on_batch(info: batched.BatchInfo) -> None:
        if not slow:
            waits.extend(info.waits_s)

    with anyio.fail_after(600):
        async with batched.Batcher(fn, timeout_ms="auto", on_batch=on_batch) as b:
            await _steady(b, 2.0, 3)  # three slow batches of one
            slow = False
            await _steady(b, 0.001, 200)
    assert max(waits) == pytest.approx(CAP)  # the cap, not the rule, set the wait
    assert all(wait <= CAP + 1e-9 for wait in waits)


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_configure_switches_to_auto_and_back() -> None:
    device = Device(0.002)
    with anyio.fail_after(60):
        async with batched.Batcher(device, timeout_ms=5) as b:
            start = anyio.current_time()
            await b(1)
            assert anyio.current_time() - start == pytest.approx(0.007)
            b.configure(timeout_ms="auto")
            assert b.settings.timeout_ms == "auto"
            start = anyio.current_time()
            await b(2)
            assert anyio.current_time() - start == pytest.approx(0.002)
            b.configure(timeout_ms=5)
            assert _timeout_of(b) == 5.0
            start = anyio.current_time()
            await b(3)
            assert anyio.current_time() - start == pytest.approx(0.007)


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_decorated_function_takes_auto() -> None:
    calls: list[float] = []

    @batched.dynamically(timeout_ms="auto")
    async def f(items: list[int]) -> list[int]:
        calls.append(anyio.current_time())
        return items

    with anyio.fail_after(60):
        assert f.settings.timeout_ms == "auto"
        start = anyio.current_time()
        assert await f(1) == 1  # caller-driven: it leaves at once too
        assert calls == [start]
        f.configure(timeout_ms=3)
        assert _timeout_of(f) == 3.0
        f.configure(timeout_ms="auto")
        assert f.settings.timeout_ms == "auto"


# -- validation ---------------------------------------------------------------------------


def _sync(items: list[int]) -> list[int]:
    return items


async def _last(states: list[int]) -> list[batched.Last[int]]:
    return [batched.Last(state) for state in states]


def _timeout_of(front: Any) -> object:
    """``front.settings.timeout_ms``, read afresh (not narrowed by an earlier read)."""
    return front.settings.timeout_ms


@pytest.mark.parametrize(
    "make",
    [
        lambda t: batched.Batcher(echo, timeout_ms=t),
        lambda t: batched.Batcher(timeout_ms=t),  # pulled batches
        lambda t: batched.dynamically(echo, timeout_ms=t),
        lambda t: batched.dynamically(_sync, timeout_ms=t),
        lambda t: batched.Continuous(_last, timeout_ms=t),
        lambda t: batched.aio.AsyncBatchProcessor(echo, timeout_ms=t),
        lambda t: batched.BatchProcessor(_sync, timeout_ms=t),
    ],
)
def test_every_front_takes_auto_and_refuses_other_strings(make: Any) -> None:
    front = make("auto")
    settings = getattr(front, "settings", None)
    if settings is not None:
        assert settings.timeout_ms == "auto"
    close = getattr(front, "close", None)
    if close is not None:
        close()
    for bad in ("Auto", "auto ", "5", ""):
        with pytest.raises(
            ValueError, match=r"'timeout_ms' must be a number of milliseconds or 'auto'"
        ):
            make(bad)
    with pytest.raises(TypeError, match="'timeout_ms'"):
        make(b"auto")


def test_configure_refuses_other_strings_and_keeps_the_setting() -> None:
    b = batched.Batcher(echo, timeout_ms="auto")
    with pytest.raises(ValueError, match=r"'timeout_ms' .* or 'auto': 'fast'"):
        b.configure(timeout_ms="fast")
    assert b.settings.timeout_ms == "auto"


def test_a_batch_generator_refuses_auto() -> None:
    # Its batches are answered by the user: no cost of fn is measured to choose from.
    with pytest.raises(ValueError, match="'timeout_ms' cannot be 'auto'"):
        BatchGenerator(timeout_ms="auto")  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_continuous_takes_auto_and_starts_a_lone_item_at_once() -> None:
    steps: list[float] = []

    async def step(states: list[int]) -> list[batched.Last[int]]:
        steps.append(anyio.current_time())
        await anyio.sleep(0.003)
        return [batched.Last(state * 2) for state in states]

    with anyio.fail_after(60):
        async with batched.Continuous(step, timeout_ms="auto") as c:
            await c(0)  # a first step measures its cost
            await anyio.sleep(1.0)
            start = anyio.current_time()
            assert await c(21) == [42]
            assert steps[-1] == start  # no wait for company at this rate
