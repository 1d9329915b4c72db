"""Callers' deadlines: ``batched.ByDeadline`` (EDF), early dispatch of a partial batch for
a deadline, and items whose deadline has passed never reaching ``fn``.

A caller's deadline is its own cancel scopes' (``anyio.fail_after``, ``CancelScope``).
Everything here reads exact virtual times: marked ``virtual_time``.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from _helpers import assert_stats_add_up, trio_only
from hypothesis import example, given, settings
from hypothesis import strategies as st

import batched
from batched.testing import fresh_backend_options, settle

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]

GUARD = 100.0  # the hang guard's seconds: every caller's deadline is at most this far


class Log:
    """A batch function that sleeps ``cost`` seconds (virtual) per batch and records each
    batch: when it started, its items, its reason, and each caller's deadline."""

    def __init__(self, cost: float = 0.0, hold: anyio.Event | None = None) -> None:
        self.cost = cost
        self.hold = hold
        self.batches: list[tuple[float, list[Any], str, list[float]]] = []

    async def __call__(self, items: list[Any]) -> list[Any]:
        batch = batched.current_batch()
        self.batches.append((anyio.current_time(), list(items), batch.reason, batch.deadlines))
        if self.hold is not None and "hold" in items:
            await self.hold.wait()
        await anyio.sleep(self.cost)
        return [("r", item) for item in items]

    @property
    def items(self) -> list[list[Any]]:
        return [items for _, items, _, _ in self.batches]


async def call_by(b: Any, item: Any, deadline: float | None, out: dict[Any, Any]) -> None:
    """Call with an absolute deadline (None: none); the outcome goes to ``out``."""
    try:
        with anyio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
            out[item] = await b(item)
        if scope.cancelled_caught:
            out[item] = "cancelled"
    except BaseException as exc:  # recorded for the assertions below
        out[item] = exc
        raise


async def send(tg: Any, b: Any, calls: list[tuple[Any, float | None]], out: dict[Any, Any]) -> None:
    # One at a time, in order: trio shuffles start_soon's order.
    for item, deadline in calls:
        tg.start_soon(call_by, b, item, deadline, out)
        await settle()


# -- ByDeadline ---------------------------------------------------------------------------


def test_by_deadline_is_a_frozen_public_strategy() -> None:
    strategy = batched.ByDeadline()
    assert "ByDeadline" in batched.__all__
    assert strategy == batched.ByDeadline()
    assert isinstance(strategy, batched.Strategy)
    assert isinstance(strategy.new_pool(), batched.Pool)
    with pytest.raises(AttributeError):
        strategy.x = 1  # type: ignore[attr-defined]


def test_by_deadline_pool_orders_by_deadline_then_arrival_and_frees_removed() -> None:
    pool = batched.ByDeadline().new_pool()
    entries = [
        batched.Entry(name, seq=seq, deadline=deadline)
        for seq, (name, deadline) in enumerate(
            [("none1", math.inf), ("late", 9.0), ("soon", 1.0), ("late2", 9.0), ("none2", math.inf)]
        )
    ]
    for entry in entries:
        pool.add(entry)
    assert pool.oldest() is entries[0]
    got = pool.cut(10, math.inf)
    assert [e.item for e in got] == ["soon", "late", "late2", "none1", "none2"]
    # Removal frees the entries at once: a pool of removed entries holds none of them.
    many = [batched.Entry(i, seq=i, deadline=float(i)) for i in range(1000)]
    for entry in many:
        pool.add(entry)
    for entry in many[:-1]:
        pool.remove(entry)
    assert len(pool) == 1
    assert pool.cut(5, math.inf) == [many[-1]]


async def test_by_deadline_sends_waiting_items_earliest_deadline_first() -> None:
    hold = anyio.Event()
    fn = Log(hold=hold)
    out: dict[Any, Any] = {}
    with anyio.fail_after(GUARD):
        t0 = anyio.current_time()
        async with (
            batched.Batcher(fn, batch_size=2, timeout_ms=0, strategy=batched.ByDeadline()) as b,
            anyio.create_task_group() as tg,
        ):
            await send(tg, b, [("hold", None)], out)  # takes the only slot
            await send(
                tg,
                b,
                [
                    ("none-a", None),
                    ("t50", t0 + 50),
                    ("t20", t0 + 20),
                    ("t50-b", t0 + 50),  # equal deadlines: arrival order
                    ("none-b", None),
                    ("t30", t0 + 30),
                ],
                out,
            )
            hold.set()
    assert fn.items == [["hold"], ["t20", "t30"], ["t50", "t50-b"], ["none-a", "none-b"]]
    assert all(out[item] == ("r", item) for item in out)
    assert_stats_add_up(b)


# -- early dispatch -------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [batched.Fifo(), batched.ByDeadline()])
async def test_a_partial_batch_leaves_early_so_that_its_caller_meets_its_deadline(
    strategy: batched.Strategy,
) -> None:
    fn = Log(cost=0.05)
    infos: list[batched.BatchInfo] = []
    out: dict[Any, Any] = {}
    with anyio.fail_after(GUARD):
        async with (
            batched.Batcher(
                fn, batch_size=8, timeout_ms=900, strategy=strategy, on_batch=infos.append
            ) as b,
            anyio.create_task_group() as tg,
        ):
            await send(tg, b, [("warm", None)], out)  # fn's cost is learned from it
            await anyio.sleep(2)
            t0 = anyio.current_time()
            # timeout_ms alone would send it at t0 + 0.9 s, long after its deadline.
            await send(tg, b, [("urgent", t0 + 0.2), ("mate", None)], out)
    assert out["urgent"] == ("r", "urgent")  # its result, not a cancellation
    start, items, reason, deadlines = fn.batches[1]
    assert items == ["urgent", "mate"]
    assert reason == "deadline"
    assert deadlines[0] == pytest.approx(t0 + 0.2)
    # It left in time for fn's 50 ms (estimated at 100 ms for two items, the runs so far
    # having had one: it errs slow), plus the margin; and not much earlier.
    assert t0 + 0.2 - 0.1 * 1.25 - 0.002 <= start <= t0 + 0.2 - 0.05
    assert [info.reason for info in infos] == ["timeout", "deadline"]
    assert_stats_add_up(b)


async def test_a_deadline_later_than_the_timeout_changes_nothing() -> None:
    fn = Log(cost=0.01)
    infos: list[batched.BatchInfo] = []
    out: dict[Any, Any] = {}
    with anyio.fail_after(GUARD):
        async with (
            batched.Batcher(fn, batch_size=8, timeout_ms=10, on_batch=infos.append) as b,
            anyio.create_task_group() as tg,
        ):
            t0 = anyio.current_time()
            await send(tg, b, [("a", t0 + 5)], out)
    assert fn.batches[0][0] == pytest.approx(t0 + 0.010)
    assert [info.reason for info in infos] == ["timeout"]


async def test_an_arrival_with_a_tight_deadline_wakes_a_batcher_waiting_out_its_timeout() -> None:
    fn = Log()
    out: dict[Any, Any] = {}
    with anyio.fail_after(GUARD):
        async with (
            batched.Batcher(fn, batch_size=8, timeout_ms=900) as b,
            anyio.create_task_group() as tg,
        ):
            t0 = anyio.current_time()
            await send(tg, b, [("slow", None)], out)  # the batcher sleeps until t0 + 0.9
            await anyio.sleep(0.5)
            await send(tg, b, [("urgent", t0 + 0.8)], out)
    start, items, reason, _ = fn.batches[0]
    assert items == ["slow", "urgent"]
    assert reason == "deadline"
    assert t0 + 0.7 <= start < t0 + 0.8
    assert out["urgent"] == ("r", "urgent")


# -- expiry -----------------------------------------------------------------------------------


async def test_an_item_whose_deadline_passes_while_it_waits_never_reaches_fn() -> None:
    hold = anyio.Event()
    fn = Log(hold=hold)
    out: dict[Any, Any] = {}
    with anyio.fail_after(GUARD):
        async with (
            anyio.create_task_group() as tg,
            batched.Batcher(fn, batch_size=4, timeout_ms=0) as b,
        ):
            t0 = anyio.current_time()
            await send(tg, b, [("hold", None)], out)
            await send(tg, b, [("doomed", t0 + 1), ("ok", None)], out)
            await anyio.sleep(1)  # "doomed" expires while the slot is busy
            hold.set()
    assert out["doomed"] == "cancelled"
    assert out["ok"] == ("r", "ok")
    assert "doomed" not in [item for items in fn.items for item in items]
    stats = b.stats
    assert (stats.completed, stats.cancelled) == (2, 1)
    assert_stats_add_up(b)


async def test_an_item_whose_deadline_is_the_instant_the_slot_frees_never_reaches_fn() -> None:
    # fn returns at the very instant the caller's deadline passes: the batcher cuts the
    # next batch then, before the caller's scope has delivered its cancellation.
    fn = Log(cost=1.0)
    out: dict[Any, Any] = {}
    with anyio.fail_after(GUARD):
        async with (
            anyio.create_task_group() as tg,
            batched.Batcher(fn, batch_size=4, timeout_ms=0) as b,
        ):
            t0 = anyio.current_time()
            await send(tg, b, [("first", None)], out)
            await send(tg, b, [("doomed", t0 + 1.0), ("ok", None)], out)
    assert out["doomed"] == "cancelled"
    assert fn.items == [["first"], ["ok"]]
    assert (b.stats.completed, b.stats.cancelled) == (2, 1)
    assert_stats_add_up(b)


class _Jumping:
    """A Fifo pool whose ``add`` moves trio's MockClock on by ``jump`` seconds: in the
    batcher's own task, just before it decides (it moves new calls into a user's pool
    first), so that a caller's deadline passes in the middle of a scheduler step."""

    def __init__(self, jump: float) -> None:
        self.pool = batched.Fifo().new_pool()
        self.jump = jump

    def add(self, entry: batched.Entry) -> None:
        import trio

        self.pool.add(entry)
        clock = trio.lowlevel.current_clock()
        assert isinstance(clock, trio.testing.MockClock)
        clock.jump(self.jump)

    def remove(self, entry: batched.Entry) -> None:
        self.pool.remove(entry)

    def __len__(self) -> int:
        return len(self.pool)

    def oldest(self) -> batched.Entry | None:
        return self.pool.oldest()

    def cut(self, max_items: int, budget: float) -> list[batched.Entry]:
        return self.pool.cut(max_items, budget)


class _JumpingStrategy:
    def new_pool(self) -> batched.Pool:
        return _Jumping(0.5)


@trio_only
async def test_an_item_whose_deadline_passed_before_its_caller_was_cancelled_is_dropped() -> None:
    # trio cancels the scopes whose deadline has passed at the start of a scheduler
    # step; here the clock moves past the caller's deadline within one, before the
    # batcher decides: the batcher itself must not send the item (its caller is about to
    # be cancelled), and count it cancelled once.
    fn = Log()
    out: dict[Any, Any] = {}
    with anyio.fail_after(GUARD):
        async with batched.Batcher(
            fn, batch_size=4, timeout_ms=1000, strategy=_JumpingStrategy()
        ) as b, anyio.create_task_group() as tg:
            t0 = anyio.current_time()
            await send(tg, b, [("doomed", t0 + 0.2)], out)
            await anyio.sleep(1)
            await send(tg, b, [("ok", None)], out)
    assert out["doomed"] == "cancelled"
    assert out["ok"] == ("r", "ok")
    assert fn.items == [["ok"]]
    assert (b.stats.completed, b.stats.cancelled) == (1, 1)
    assert_stats_add_up(b)


async def test_pulled_batches_never_hold_an_expired_item_and_leave_early() -> None:
    out: dict[Any, Any] = {}
    seen: list[tuple[float, list[Any], str]] = []
    release = anyio.Event()

    async def worker(batches: Any) -> None:
        async with batches:
            async for batch in batches:
                seen.append((anyio.current_time(), list(batch.items), batch.reason))
                if "hold" in batch.items:
                    await release.wait()
                batch.set_results([("r", x) for x in batch.items])

    with anyio.fail_after(GUARD):
        async with (
            anyio.create_task_group() as tg,
            batched.Batcher(batch_size=4, timeout_ms=1000) as b,
        ):
            tg.start_soon(worker, b.batches())
            t0 = anyio.current_time()
            await send(tg, b, [("hold", None)], out)
            await anyio.sleep(1.5)  # "hold" leaves by its timeout, then waits
            await send(tg, b, [("doomed", t0 + 2)], out)
            await anyio.sleep(1)
            release.set()
            await send(tg, b, [("urgent", anyio.current_time() + 0.5)], out)
    assert [items for _, items, _ in seen] == [["hold"], ["urgent"]]
    assert seen[1][2] == "deadline"
    assert out["doomed"] == "cancelled"
    assert out["urgent"] == ("r", "urgent")
    assert_stats_add_up(b)


async def test_decorated_function_outside_async_with_honours_deadlines() -> None:
    hold = anyio.Event()
    fn = Log(hold=hold)
    f = batched.dynamically(batch_size=2, timeout_ms=0, strategy=batched.ByDeadline())(fn)
    out: dict[Any, Any] = {}
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            t0 = anyio.current_time()
            await send(tg, f, [("hold", None)], out)
            await send(
                tg,
                f,
                [("late", t0 + 50), ("doomed", t0 + 0.3), ("soon", t0 + 20), ("none", None)],
                out,
            )
            # "doomed" expires while the slot is busy (and nothing waits max_wait_ms: an
            # overdue item would leave first, in arrival order).
            await anyio.sleep(0.5)
            hold.set()
    assert fn.items == [["hold"], ["soon", "late"], ["none"]]
    assert out["doomed"] == "cancelled"
    assert_stats_add_up(f)


# -- properties --------------------------------------------------------------------------------

calls = st.lists(
    st.tuples(
        st.integers(0, 40),  # arrival, ms after the start
        st.none() | st.integers(0, 60),  # deadline, ms after the arrival
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60)
# Two items of a full batch, one of them expired at once: the other waits out its timeout
# (a due() that judged fullness before dropping the expired one sent it at once).
@example(
    schedule=[(0, None)] * 6 + [(1, None), (1, 0)],
    batch_size=2,
    timeout_ms=1,
    cost_ms=0,
    edf=False,
    backend="asyncio",
)
@given(
    schedule=calls,
    batch_size=st.integers(1, 4),
    timeout_ms=st.one_of(st.integers(0, 30), st.just("auto")),
    cost_ms=st.integers(0, 10),
    edf=st.booleans(),
    backend=st.sampled_from(["asyncio", "trio"]),
)
def test_deadline_properties(
    schedule: list[tuple[int, int | None]],
    batch_size: int,
    timeout_ms: int | str,
    cost_ms: int,
    edf: bool,
    backend: str,
) -> None:
    """No item reaches fn at or after its deadline; with ByDeadline (one slot, calls of
    one item, nothing overdue) every batch's deadlines are <= those of every item that
    waited as it was cut and was sent later; each batch's reason is what it was cut for;
    every caller gets its result or its cancellation; the stats add up. With
    ``timeout_ms="auto"`` a batch's wait is the rule's own, at most its 10 ms cap."""
    # The longest a partial batch may wait for its timeout.
    wait_s = 0.010 if timeout_ms == "auto" else int(timeout_ms) / 1000
    arrivals: dict[int, float] = {}
    deadlines: dict[int, float] = {}
    batches: list[tuple[float, list[int]]] = []
    infos: list[batched.BatchInfo] = []
    out: dict[int, Any] = {}

    async def fn(items: list[int]) -> list[int]:
        now = anyio.current_time()
        assert all(now < deadlines[i] for i in items), (now, [deadlines[i] for i in items])
        batches.append((now, list(items)))
        await anyio.sleep(cost_ms / 1000)
        return items

    async def caller(b: Any, i: int, at: int, within: int | None) -> None:
        await anyio.sleep(at / 1000)
        arrivals[i] = anyio.current_time()
        deadlines[i] = math.inf if within is None else arrivals[i] + within / 1000
        with anyio.CancelScope(deadline=deadlines[i]) as scope:
            out[i] = await b(i)
        if scope.cancelled_caught:
            out[i] = "cancelled"

    async def main() -> None:
        with anyio.fail_after(GUARD):
            async with (
                batched.Batcher(
                    fn,
                    batch_size=batch_size,
                    timeout_ms=timeout_ms,
                    strategy=batched.ByDeadline() if edf else batched.Fifo(),
                    on_batch=infos.append,
                ) as b,
                anyio.create_task_group() as tg,
            ):
                for i, (at, within) in enumerate(schedule):
                    tg.start_soon(caller, b, i, at, within)
        stats = b.stats
        assert stats.submitted == stats.completed + stats.cancelled
        assert stats.cancelled == sum(1 for v in out.values() if v == "cancelled")

    anyio.run(main, backend=backend, backend_options=fresh_backend_options(backend))

    assert set(out) == set(range(len(schedule)))  # everyone settled
    assert all(out[i] in (i, "cancelled") for i in out)
    sent = [i for _, items in batches for i in items]
    assert len(sent) == len(set(sent))
    for start, items in batches:  # a caller sent in time is cancelled only if fn overran
        assert all(out[i] == i or start + cost_ms / 1000 >= deadlines[i] for i in items)
    assert len(infos) == len(batches)
    for (start, items), info in zip(batches, infos, strict=True):
        assert info.size == len(items)
        oldest = min(arrivals[i] for i in items)
        if info.reason == "full":
            assert len(items) == batch_size
        elif info.reason == "timeout":
            if timeout_ms != "auto":  # the auto rule's wait may be anything up to its cap
                assert start >= oldest + wait_s - 1e-9
        elif info.reason == "deadline":
            # Sent early for the earliest deadline among what waited (all of it: the
            # batch is partial): not before that deadline less fn's cost (estimated at
            # most 1.25 x what it took, x items / 1) and the margin, and before the timeout.
            assert len(items) < batch_size
            first = min(deadlines[i] for i in items)
            slack = 1.25 * cost_ms / 1000 * batch_size + 0.001
            assert first - slack - 1e-9 <= start
            assert first - slack < oldest + wait_s
        else:
            raise AssertionError(info.reason)  # nothing is overdue, nothing is closing
    if edf:
        for k, (start, items) in enumerate(batches):
            top = max(deadlines[i] for i in items)
            for _, later in batches[k + 1 :]:
                for j in later:
                    if arrivals[j] < start:  # it waited as this batch was cut
                        assert top <= deadlines[j], (items, j)
