"""Strategies and pools: the protocol on its own, and the order of cutting in a Batcher."""

from __future__ import annotations

import functools
import gc
import weakref
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import pytest
from _helpers import Recorder, settle

import batched

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskGroup

pytestmark = pytest.mark.anyio

STRATEGIES = [batched.Fifo(), batched.ByLength(), batched.ByPriority()]
INF = float("inf")


def entries(*specs: tuple[int, float]) -> list[batched.Entry]:
    """Entries e0, e1, ... in arrival order, from ``(length, priority)`` pairs."""
    return [
        batched.Entry(f"e{i}", length=length, priority=priority, arrival=float(i), seq=i)
        for i, (length, priority) in enumerate(specs)
    ]


def filled(strategy: batched.Strategy, es: list[batched.Entry]) -> batched.Pool:
    pool = strategy.new_pool()
    for entry in es:
        pool.add(entry)
    return pool


def names(es: list[batched.Entry]) -> list[str]:
    return [entry.item for entry in es]


# -- the pool protocol, unit by unit -------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_pool_add_len_oldest(strategy: batched.Strategy) -> None:
    """A new pool is fresh and empty; len counts what was added; oldest is the lowest seq."""
    pool = strategy.new_pool()
    assert isinstance(pool, batched.Pool)
    assert pool is not strategy.new_pool()
    assert len(pool) == 0
    assert pool.oldest() is None
    es = entries((3, 2), (1, 1), (2, 0))
    for entry in es:
        pool.add(entry)
    assert len(pool) == 3
    assert pool.oldest() is es[0]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cut_takes_at_most_max_items(strategy: batched.Strategy) -> None:
    """cut(max_items, budget) removes and returns at most max_items, in order."""
    pool = filled(strategy, entries((1, 0), (1, 0), (1, 0)))
    assert names(pool.cut(2, INF)) == ["e0", "e1"]
    assert len(pool) == 1
    assert names(pool.cut(5, INF)) == ["e2"]
    assert len(pool) == 0
    assert pool.oldest() is None
    assert pool.cut(5, INF) == []


@pytest.mark.parametrize(
    ("strategy", "specs", "budget", "first", "rest"),
    [
        # Fifo: e1 does not fit; e2 would, but the cut never skips.
        (batched.Fifo(), [(2, 0), (3, 0), (1, 0)], 4, ["e0"], ["e1", "e2"]),
        # ByLength: 1, 2 fit (3 of 4); the 3 does not fit what is left, so it stops.
        (batched.ByLength(), [(5, 0), (1, 0), (3, 0), (2, 0)], 4, ["e1", "e3"], ["e2", "e0"]),
        # ByPriority: e2 (prio 0) fits; e0 (prio 1, length 4) does not; e1 never skips it.
        (batched.ByPriority(), [(4, 1), (1, 2), (3, 0)], 5, ["e2"], ["e0", "e1"]),
    ],
)
def test_cut_stops_at_first_entry_that_does_not_fit(
    strategy: batched.Strategy,
    specs: list[tuple[int, float]],
    budget: float,
    first: list[str],
    rest: list[str],
) -> None:
    """The cut stops at the first entry over the budget left; it stays first for the next cut."""
    pool = filled(strategy, entries(*specs))
    got = pool.cut(10, budget)
    assert names(got) == first
    assert sum(entry.length for entry in got) <= budget
    assert len(pool) == len(rest)
    assert names(pool.cut(10, INF)) == rest


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cut_with_first_entry_over_budget_takes_nothing(strategy: batched.Strategy) -> None:
    """A pool never exceeds its budget, even to send one entry alone; length 0 always fits."""
    es = entries((7, 0), (7, 0))
    pool = filled(strategy, es)
    assert pool.cut(10, 6) == []
    assert len(pool) == 2
    assert pool.oldest() is es[0]
    assert names(pool.cut(1, 7)) == ["e0"]
    zeros = filled(strategy, entries((0, 0), (0, 0), (1, 0)))
    assert names(zeros.cut(10, 0)) == ["e0", "e1"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_removed_entries_never_come_back(strategy: batched.Strategy) -> None:
    """remove() drops an entry from len, oldest and every later cut."""
    es = entries((1, 0), (1, 0), (1, 0), (1, 0), (1, 0))
    pool = filled(strategy, es)
    pool.remove(es[0])
    pool.remove(es[2])
    assert len(pool) == 3
    assert pool.oldest() is es[1]
    assert names(pool.cut(2, INF)) == ["e1", "e3"]
    pool.remove(es[4])
    assert len(pool) == 0
    assert pool.oldest() is None
    assert pool.cut(10, INF) == []


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_removed_entry_over_budget_does_not_block_the_cut(strategy: batched.Strategy) -> None:
    """A removed entry is gone: it neither stops a cut on the budget nor counts against it."""
    es = entries((1, 0), (9, 0), (1, 0))
    pool = filled(strategy, es)
    pool.remove(es[1])
    assert names(pool.cut(10, 2)) == ["e0", "e2"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_adding_after_cuts_and_removals(strategy: batched.Strategy) -> None:
    """A pool keeps working after it was emptied: later entries are cut, old ones are not."""
    es = entries((1, 0), (1, 0), (1, 0), (1, 0))
    pool = filled(strategy, es[:2])
    pool.remove(es[0])
    assert names(pool.cut(10, INF)) == ["e1"]
    pool.add(es[2])
    pool.add(es[3])
    assert pool.oldest() is es[2]
    assert names(pool.cut(10, INF)) == ["e2", "e3"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_equal_keys_leave_in_seq_order(strategy: batched.Strategy) -> None:
    """With equal length and priority, every strategy keeps arrival (seq) order."""
    pool = filled(strategy, entries(*[(2, 1)] * 12))
    got = pool.cut(5, INF) + pool.cut(100, INF)
    assert names(got) == [f"e{i}" for i in range(12)]


class _Tracked(batched.Entry):
    """An entry that a weak reference can follow."""

    __slots__ = ("__weakref__",)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("live", [1, 50])
def test_removed_entries_are_freed_while_live_ones_stay_first(
    strategy: batched.Strategy, live: int
) -> None:
    """Removed entries behind live ones (first in every order) are let go of promptly:
    the pool never holds more removed entries than live ones, however many come and go."""
    pool = filled(strategy, entries(*[(1, -1)] * live))
    refs = []
    for seq in range(live, live + 1000):
        entry = _Tracked(seq, length=2, priority=0, arrival=float(seq), seq=seq)
        pool.add(entry)
        pool.remove(entry)
        refs.append(weakref.ref(entry))
    del entry
    held = sum(ref() is not None for ref in refs)
    assert held <= live, f"{held} removed entries still held beside {live} live ones"
    assert len(pool) == live
    assert names(pool.cut(1000, INF)) == [f"e{i}" for i in range(live)]


@pytest.mark.parametrize("strategy", [batched.ByLength(), batched.ByPriority()])
def test_cut_entries_are_freed_behind_an_old_live_one(strategy: batched.Strategy) -> None:
    """An old entry that its order keeps last stays the oldest: the entries cut before it
    are let go of all the same."""
    pool = filled(strategy, entries((9, 9)))
    refs = []
    for seq in range(1, 1001):
        entry = _Tracked(seq, length=1, priority=0, arrival=float(seq), seq=seq)
        pool.add(entry)
        assert pool.cut(1, INF) == [entry]
        assert pool.oldest() is not None
        refs.append(weakref.ref(entry))
    del entry
    held = sum(ref() is not None for ref in refs)
    assert held <= 2, f"{held} cut entries still held"
    assert names(pool.cut(10, INF)) == ["e0"]


def test_by_priority_orders_by_priority_then_seq() -> None:
    """ByPriority: lowest priority value first; ties in seq order; oldest ignores priority."""
    pool = filled(batched.ByPriority(), entries((1, 1), (1, 0), (1, 1), (1, -2), (1, 0)))
    assert pool.oldest() is not None
    assert pool.oldest().item == "e0"
    assert names(pool.cut(10, INF)) == ["e3", "e1", "e4", "e0", "e2"]


def test_by_length_orders_by_length_then_seq() -> None:
    """ByLength: shortest first; equal lengths in seq order."""
    pool = filled(batched.ByLength(), entries((3, 0), (1, 0), (2, 0), (1, 0), (3, 0)))
    assert names(pool.cut(10, INF)) == ["e1", "e3", "e2", "e0", "e4"]


def test_built_in_strategies_are_frozen_and_comparable() -> None:
    """Strategies are configuration: frozen, equal by value, hashable."""
    for strategy in STRATEGIES:
        assert isinstance(strategy, batched.Strategy)
        assert strategy == type(strategy)()
        assert hash(strategy) == hash(type(strategy)())
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            strategy.x = 1  # type: ignore[attr-defined]


# -- user-written strategies ---------------------------------------------------------------


class NewestFirstPool:
    """A user's pool: last in, first out."""

    def __init__(self) -> None:
        self.entries: list[batched.Entry] = []

    def add(self, entry: batched.Entry) -> None:
        self.entries.append(entry)

    def remove(self, entry: batched.Entry) -> None:
        self.entries.remove(entry)

    def __len__(self) -> int:
        return len(self.entries)

    def oldest(self) -> batched.Entry | None:
        return min(self.entries, key=lambda e: e.seq, default=None)

    def cut(self, max_items: int, budget: float) -> list[batched.Entry]:
        out: list[batched.Entry] = []
        while self.entries and len(out) < max_items and self.entries[-1].length <= budget:
            budget -= self.entries[-1].length
            out.append(self.entries.pop())
        return out


@attrs.frozen
class NewestFirst:
    """A user's strategy."""

    def new_pool(self) -> NewestFirstPool:
        return NewestFirstPool()


def test_user_written_pool_and_strategy_satisfy_the_protocols() -> None:
    """A class with the documented methods is a batched.Pool / batched.Strategy."""
    assert isinstance(NewestFirstPool(), batched.Pool)
    assert isinstance(NewestFirst(), batched.Strategy)
    assert not isinstance(object(), batched.Pool)
    assert not isinstance(object(), batched.Strategy)


# -- cutting order through a Batcher -------------------------------------------------------


async def accumulate(
    fn: Recorder, calls: list[Any], *, age: float = 1.0, **settings: Any
) -> list[Any]:
    """Hold the slot with ``calls[0]``, queue the rest in order, let them age, then release.

    Each entry of ``calls`` makes one caller's awaitable from the batcher, or is a number
    of seconds to sleep before the next caller. Returns the callers' results in order.
    """
    out: list[Any] = [None] * len(calls)

    async def run(tg: TaskGroup, b: batched.Batcher[Any, Any], index: int) -> None:
        async def caller() -> None:
            out[index] = await calls[index](b)

        tg.start_soon(caller)
        await settle()

    with anyio.fail_after(600):
        async with batched.Batcher(fn, **settings) as b, anyio.create_task_group() as tg:
            await run(tg, b, 0)
            await fn.held.wait()
            for index in range(1, len(calls)):
                if isinstance(calls[index], int | float):
                    await anyio.sleep(calls[index])
                else:
                    await run(tg, b, index)
            await anyio.sleep(age)
            assert len(fn.batches) == 1, "a batch left while the only slot was busy"
            fn.release.set()
    return out


def one(item: Any, priority: float = 0) -> Callable[[batched.Batcher[Any, Any]], Any]:
    """A caller of one item."""
    return lambda b: b(item, priority=priority)


def many(items: list[Any], priority: float = 0) -> Callable[[batched.Batcher[Any, Any]], Any]:
    """A caller of many items in one call."""
    return lambda b: b.many(items, priority=priority)


@pytest.mark.virtual_time
@pytest.mark.parametrize("strategy", [batched.ByPriority(), batched.PriorityStrategy.PRIORITY])
async def test_by_priority_order_through_batcher(strategy: Any) -> None:
    """Waiting items leave lowest priority value first, equal priorities in arrival order."""
    fn = Recorder(hold_first=True)
    calls = [one("h"), one("a", 5), one("b", 1), one("c", 3), one("d", 1), one("e", -1)]
    out = await accumulate(fn, calls, strategy=strategy, batch_size=2, timeout_ms=5)
    assert fn.batches == [["h"], ["e", "b"], ["d", "c"], ["a"]]
    assert out == [(x, "r") for x in "habcde"]


@pytest.mark.virtual_time
@pytest.mark.parametrize("strategy", [batched.ByLength(), batched.PriorityStrategy.LENGTH])
async def test_by_length_order_through_batcher(strategy: Any) -> None:
    """Waiting items leave shortest first (default length: len), equal lengths in arrival order."""
    fn = Recorder(hold_first=True)
    items = ["h", "xxxx", "x", "xxx", "yy", "z"]
    out = await accumulate(fn, [one(i) for i in items], strategy=strategy, timeout_ms=5)
    assert fn.batches == [["h"], ["x", "z", "yy", "xxx", "xxxx"]]
    assert out == [(i, "r") for i in items]


class _Item:
    """An item that a weak reference can follow."""

    __slots__ = ("__weakref__", "n")

    def __init__(self, n: int) -> None:
        self.n = n


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_cancelled_callers_items_are_freed_under_overload(strategy: Any) -> None:
    """The only slot is busy and the first waiting item stays first; callers behind it
    come and are cancelled, again and again: their items are let go of while they wait,
    not when the first item leaves."""
    fn = Recorder(hold_first=True)
    refs: list[weakref.ref[_Item]] = []

    async def caller(n: int) -> None:
        item = _Item(n)
        refs.append(weakref.ref(item))
        await b(item, priority=0)

    with anyio.fail_after(600):
        async with (
            batched.Batcher(fn, strategy=strategy, batch_size=2) as b,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(b, "held")
            await fn.held.wait()
            first = _Item(-1)
            tg.start_soon(functools.partial(b, first, priority=-1))
            await settle()
            for _ in range(10):
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as callers:
                        for n in range(100):
                            callers.start_soon(caller, n)
                        await settle()
                        scope.cancel()
            gc.collect()
            held = sum(ref() is not None for ref in refs)
            assert held <= 2, f"{held} of {len(refs)} cancelled callers' items still held"
            assert b.stats.queue_size == 1
            fn.release.set()
    assert fn.batches == [["held"], [first]]


@pytest.mark.parametrize("strategy", [batched.Fifo(), batched.PriorityStrategy.NONE])
async def test_fifo_order_through_batcher(strategy: Any) -> None:
    """Fifo (and PriorityStrategy.NONE) ignore priority and length: arrival order."""
    fn = Recorder(hold_first=True)
    calls = [one("h"), one("xxx", 3), one("x", 1), one("xx", -5)]
    await accumulate(fn, calls, strategy=strategy, timeout_ms=5)
    assert fn.batches == [["h"], ["xxx", "x", "xx"]]


@pytest.mark.virtual_time
async def test_user_strategy_orders_a_batcher() -> None:
    """A user-written strategy decides the order of the items that wait."""
    fn = Recorder(hold_first=True)
    calls = [one("h"), one("a"), one("b"), one("c"), one("d")]
    out = await accumulate(fn, calls, strategy=NewestFirst(), batch_size=3, timeout_ms=5)
    assert fn.batches == [["h"], ["d", "c", "b"], ["a"]]
    assert out == [(x, "r") for x in "habcd"]


@pytest.mark.parametrize(("age", "overdue"), [(0.2, True), (0.05, False)])
async def test_overdue_item_leaves_before_later_arrivals(age: float, overdue: bool) -> None:
    """Rule 1: an item that waited max_wait_ms leaves before anything that arrived after it."""
    fn = Recorder(hold_first=True)
    calls = [one("h"), one("late", 9), age, many(["u1", "u2"], priority=0)]
    settings = {"strategy": batched.ByPriority(), "batch_size": 1, "max_wait_ms": 100}
    out = await accumulate(fn, calls, age=0, timeout_ms=5, **settings)
    expected = [["late"], ["u1"], ["u2"]] if overdue else [["u1"], ["u2"], ["late"]]
    assert fn.batches == [["h"], *expected]
    assert out[1] == ("late", "r")
    assert out[3] == [("u1", "r"), ("u2", "r")]


@pytest.mark.parametrize(("age", "overdue"), [(0.2, True), (0.05, False)])
async def test_overdue_bulk_items_leave_before_later_small_calls(age: float, overdue: bool) -> None:
    """Rule 1 before rule 2: overdue items of a large call beat a small call that came later."""
    fn = Recorder(hold_first=True)
    bulk = [f"m{i}" for i in range(9)]  # 9 > small_batch_threshold=8
    calls = [one("h"), many(bulk), age, one("s")]
    out = await accumulate(fn, calls, age=0, batch_size=4, max_wait_ms=100, timeout_ms=5)
    if overdue:
        expected = [bulk[0:4], bulk[4:8], ["m8", "s"]]
    else:
        expected = [["s", *bulk[0:3]], bulk[3:7], bulk[7:9]]
    assert fn.batches == [["h"], *expected]
    assert out[1] == [(m, "r") for m in bulk]
    assert out[3] == ("s", "r")


@pytest.mark.virtual_time
async def test_small_calls_leave_before_large_calls() -> None:
    """Rule 2: items of calls with <= small_batch_threshold items leave before larger calls'."""
    fn = Recorder(hold_first=True)
    calls = [one("h"), many(["b0", "b1", "b2"]), one("s0"), many(["t0", "t1"]), one("s1")]
    await accumulate(fn, calls, small_batch_threshold=2, batch_size=10, timeout_ms=5)
    assert fn.batches == [["h"], ["s0", "t0", "t1", "s1", "b0", "b1", "b2"]]


@pytest.mark.virtual_time
async def test_strategy_orders_within_small_and_within_large_calls() -> None:
    """Rule 3 after rule 2: priority orders small calls, then large calls, not across them."""
    fn = Recorder(hold_first=True)
    calls = [
        one("h"),
        many(["x0", "x1", "x2"], priority=0),
        one("a", 5),
        many(["y0", "y1", "y2"], priority=-1),
        one("b", 1),
    ]
    settings = {"strategy": batched.ByPriority(), "small_batch_threshold": 1}
    await accumulate(fn, calls, batch_size=10, timeout_ms=5, **settings)
    assert fn.batches == [["h"], ["b", "a", "y0", "y1", "y2", "x0", "x1", "x2"]]


@pytest.mark.parametrize(
    ("hold", "items", "length_fn", "expected"),
    [
        ("h0", ["a3", "b2", "c4", "d1"], lambda s: int(s[1:]), [["a3", "b2"], ["c4", "d1"]]),
        ("h", ["ab", "cd", "e", "fgh", "ijk"], None, [["ab", "cd", "e"], ["fgh"], ["ijk"]]),
        (
            {"h": [0]},
            [{"k": [1, 2, 3], "z": []}, {"k": [1, 2]}, {"k": "x"}, {"k": [1, 2, 3, 4]}],
            None,
            [[{"k": [1, 2, 3], "z": []}, {"k": [1, 2]}], [{"k": "x"}, {"k": [1, 2, 3, 4]}]],
        ),
        (0, [10, 20, 30, 40, 50, 60], None, [[10, 20, 30, 40, 50], [60]]),
    ],
    ids=["length_fn", "default-len", "default-mapping-first-value", "default-1"],
)
async def test_max_batch_length_caps_summed_length(
    hold: Any, items: list[Any], length_fn: Any, expected: list[list[Any]]
) -> None:
    """max_batch_length caps the summed length: length_fn, else len / first value's len / 1."""
    fn = Recorder(hold_first=True)
    calls = [one(hold), *[one(i) for i in items]]
    settings = {"max_batch_length": 5, "length_fn": length_fn}
    out = await accumulate(fn, calls, batch_size=10, timeout_ms=5, **settings)
    assert fn.batches == [[hold], *expected]
    assert out[1:] == [(i, "r") for i in items]


async def test_item_longer_than_max_batch_length_travels_alone() -> None:
    """An item longer than max_batch_length leaves alone, and not before what waited before it."""
    fn = Recorder(hold_first=True)
    items = ["ab", "toolong", "c", "d", "waytoolong", "e"]
    calls = [one("h"), *[one(i) for i in items]]
    out = await accumulate(fn, calls, max_batch_length=3, batch_size=10, timeout_ms=5)
    assert fn.batches == [["h"], ["ab"], ["toolong"], ["c", "d"], ["waytoolong"], ["e"]]
    assert out == [("h", "r"), *[(i, "r") for i in items]]


@pytest.mark.virtual_time
async def test_oversize_item_alone_leaves_at_once() -> None:
    """An oversize item with an empty pool is a full batch: it leaves without waiting."""
    fn = Recorder(hold_first=True)
    fn.release.set()
    with anyio.fail_after(60):
        async with batched.Batcher(fn, max_batch_length=3, timeout_ms=1000) as b:
            start = anyio.current_time()
            assert await b("toolong") == ("toolong", "r")
            assert anyio.current_time() == start
    assert fn.batches == [["toolong"]]


@pytest.mark.parametrize("strategy", [batched.Fifo(), batched.ByPriority()])
async def test_budget_deferral_keeps_arrival_order(strategy: batched.Strategy) -> None:
    """The item that did not fit is first in the next batch; nothing behind it jumps ahead."""
    fn = Recorder(hold_first=True)
    calls = [one("h0"), one("a3"), one("b3"), one("c1"), one("d1")]
    settings = {"max_batch_length": 5, "length_fn": lambda s: int(s[1:]), "strategy": strategy}
    await accumulate(fn, calls, batch_size=10, timeout_ms=5, **settings)
    assert fn.batches == [["h0"], ["a3"], ["b3", "c1", "d1"]]
