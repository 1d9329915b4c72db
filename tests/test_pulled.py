"""Pulled batches (``Batcher(fn=None).batches()``), ``batched.Batch`` and ``current_batch()``."""

from __future__ import annotations

import contextvars
import gc
import math
from typing import Any

import anyio
import anyio.abc
import pytest
from _helpers import JOIN, Boom, assert_stats_add_up

import batched
from batched import Batch, Batcher, BatcherClosed, BatchSizeMismatch, Failure

pytestmark = pytest.mark.anyio

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def answer_all(batches: Any, seen: list[Batch[Any]] | None = None) -> None:
    """A consumer that answers each batch with its items times ten."""
    async with batches:
        async for batch in batches:
            if seen is not None:
                seen.append(batch)
            batch.set_results([x * 10 for x in batch.items])


class Got:
    """What each caller got: its result or its exception."""

    def __init__(self) -> None:
        self.got: dict[Any, Any] = {}

    async def call(self, b: Batcher[Any, Any], item: Any) -> None:
        try:
            self.got[item] = await b(item)
        except Exception as exc:
            self.got[item] = exc


@pytest.mark.virtual_time
async def test_two_consumers_share_the_batches_each_to_one() -> None:
    seen: list[Batch[Any]] = []
    got = Got()
    with anyio.fail_after(JOIN):
        async with (
            anyio.create_task_group() as tg,
            Batcher[int, int](batch_size=3, timeout_ms=5) as b,
        ):
            tg.start_soon(answer_all, b.batches(), seen)
            tg.start_soon(answer_all, b.batches(), seen)
            async with anyio.create_task_group() as callers:
                for i in range(8):
                    callers.start_soon(got.call, b, i)
    assert got.got == {i: i * 10 for i in range(8)}
    items = [x for batch in seen for x in batch.items]
    assert sorted(items) == list(range(8))  # each item in exactly one batch
    assert len({id(batch) for batch in seen}) == len(seen)
    assert all(1 <= len(batch) <= 3 for batch in seen)
    stats = b.stats
    assert stats.total_batches == len(seen)
    assert stats.total_processed == 8
    assert stats.completed == 8
    assert_stats_add_up(b)


@pytest.mark.virtual_time
async def test_a_batch_is_cut_only_while_a_consumer_waits() -> None:
    """With no consumer waiting, items accumulate; the first receive takes a full cut."""
    got = Got()
    async with anyio.create_task_group() as tg, Batcher[int, int](batch_size=4, timeout_ms=1) as b:
        stream = b.batches()
        for i in range(6):
            tg.start_soon(got.call, b, i)
        await anyio.sleep(0.5)  # far past timeout_ms: nobody pulled, nothing was cut
        assert b.stats.queue_size == 6
        async with stream:
            first = await stream.receive()
            assert len(first) == 4
            assert first.reason == "full"
            first.set_results(first.items)
            second = await stream.receive()
            assert len(second) == 2
            assert second.reason == "timeout"
            second.fail(Boom("device lost"))
    assert [got.got[i] for i in first.items] == first.items
    assert all(isinstance(got.got[i], Boom) for i in second.items)


async def test_set_results_is_checked_like_fn_results() -> None:
    got = Got()
    async with anyio.create_task_group() as tg, Batcher[int, int](batch_size=2, timeout_ms=0) as b:
        stream = b.batches()
        async with stream:
            for i in range(2):
                tg.start_soon(got.call, b, i)
            await anyio.wait_all_tasks_blocked()
            batch = await stream.receive()
            with pytest.raises(BatchSizeMismatch, match="returned 1 results for a batch of 2"):
                batch.set_results([1])
            for i in range(2, 4):
                tg.start_soon(got.call, b, i)
            await anyio.wait_all_tasks_blocked()
            batch = await stream.receive()
            with pytest.raises(TypeError, match="not dict"):
                batch.set_results({0: 1, 1: 2})
            for i in range(4, 6):
                tg.start_soon(got.call, b, i)
            await anyio.wait_all_tasks_blocked()
            batch = await stream.receive()
            batch.set_results([Failure(Boom("one")), 50])
    assert isinstance(got.got[0], BatchSizeMismatch)
    assert got.got[0] is got.got[1]  # the consumer's error and the callers' are one
    assert isinstance(got.got[2], TypeError)
    assert isinstance(got.got[3], TypeError)
    failed = {i: v for i, v in got.got.items() if i >= 4}
    assert sorted(map(type, failed.values()), key=str) == sorted([Boom, int], key=str)


async def test_answering_twice_is_a_clear_error_and_callers_keep_the_first() -> None:
    got = Got()
    async with (
        anyio.create_task_group() as tg,
        Batcher[int, int](batch_size=1, timeout_ms=0) as b,
        b.batches() as stream,
    ):
        tg.start_soon(got.call, b, 7)
        batch = await stream.receive()
        batch.set_results([70])
        with pytest.raises(RuntimeError, match=r"answered already, by set_results\(\)"):
            batch.fail(Boom())
        with pytest.raises(RuntimeError, match=r"answered already, by set_results\(\)"):
            batch.set_results([1])
        tg.start_soon(got.call, b, 8)
        batch = await stream.receive()
        batch.fail(Boom("first"))
        with pytest.raises(RuntimeError, match=r"by fail\(\)"):
            batch.set_results([80])
    assert got.got[7] == 70
    assert isinstance(got.got[8], Boom)
    assert_stats_add_up(b)


@pytest.mark.parametrize("how", ["raises", "cancelled", "closes", "dropped"])
async def test_a_batch_left_unanswered_fails_its_callers_chained(how: str) -> None:
    got = Got()
    async with anyio.create_task_group() as tg, Batcher[int, int](batch_size=2, timeout_ms=0) as b:

        async def consumer(task_status: anyio.abc.TaskStatus[None]) -> None:
            stream = b.batches()
            if how == "dropped":
                await stream.receive()
                task_status.started()
                return  # neither answered nor closed: dropped
            async with stream:
                await stream.receive()
                task_status.started()
                if how == "raises":
                    raise Boom("the model crashed")
                if how == "cancelled":
                    await anyio.sleep_forever()

        async def guarded(task_status: anyio.abc.TaskStatus[None]) -> None:
            with pytest.raises(Boom) if how == "raises" else _nothing():
                await consumer(task_status=task_status)

        with anyio.CancelScope() as scope:
            tg.start_soon(got.call, b, 1)
            tg.start_soon(got.call, b, 2)
            if how == "dropped":
                await tg.start(guarded)
                await anyio.wait_all_tasks_blocked()
                gc.collect()  # (CPython drops it at once; PyPy would need this)
            else:
                async with anyio.create_task_group() as inner:
                    await inner.start(guarded)
                    if how == "cancelled":
                        inner.cancel_scope.cancel()
        assert not scope.cancel_called
        await anyio.wait_all_tasks_blocked()  # the released callers have returned
    for item in (1, 2):
        error = got.got[item]
        assert isinstance(error, BatcherClosed), error
        assert "without answering" in str(error)
        if how == "raises":
            assert isinstance(error.__cause__, Boom)
        elif how == "cancelled":
            assert isinstance(error.__cause__, anyio.get_cancelled_exc_class())
    assert_stats_add_up(b)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def test_a_caller_cancelled_while_its_batch_is_out_is_dropped_alone() -> None:
    got = Got()
    async with (
        anyio.create_task_group() as tg,
        Batcher[int, int](batch_size=2, timeout_ms=0) as b,
        b.batches() as stream,
    ):
        leaver = anyio.CancelScope()
        tg.start_soon(got.call, b, 1)

        async def leave() -> None:
            with leaver:
                await b(2)

        tg.start_soon(leave)
        await anyio.wait_all_tasks_blocked()
        batch = await stream.receive()
        leaver.cancel()
        await anyio.wait_all_tasks_blocked()
        batch.set_results([x * 10 for x in batch.items])
    assert got.got == {1: 10}
    assert b.stats.cancelled == 1
    assert_stats_add_up(b)


@pytest.mark.virtual_time
async def test_leaving_the_block_cuts_what_waits_then_ends_the_streams() -> None:
    seen: list[Batch[Any]] = []
    got = Got()
    with anyio.fail_after(JOIN):
        async with (
            anyio.create_task_group() as outside,
            Batcher[int, int](batch_size=10, timeout_ms=10_000) as b,
        ):
            for i in range(3):
                outside.start_soon(got.call, b, i)
            await anyio.wait_all_tasks_blocked()
            outside.start_soon(answer_all, b.batches(), seen)
            start = anyio.current_time()
        # the consumer outside the block finishes on its own once the stream ends
    assert got.got == {0: 0, 1: 10, 2: 20}
    assert [batch.reason for batch in seen] == ["closing"]
    assert anyio.current_time() - start < 1.0  # timeout_ms was not waited out


async def test_leaving_the_block_with_no_consumer_releases_the_callers() -> None:
    got = Got()
    async with (
        anyio.create_task_group() as outside,
        Batcher[int, int](batch_size=10, timeout_ms=0) as b,
    ):
        outside.start_soon(got.call, b, 1)
        await anyio.wait_all_tasks_blocked()
        assert not got.got  # without a consumer, callers just wait
    assert isinstance(got.got[1], BatcherClosed)


async def test_leaving_the_block_by_an_exception_releases_everyone_and_ends_streams() -> None:
    got = Got()
    ended = anyio.Event()

    async def consumer(stream: Any) -> None:
        async with stream:
            outstanding.extend([batch async for batch in stream])
        ended.set()

    outstanding: list[Batch[Any]] = []
    b = Batcher[int, int](batch_size=1, timeout_ms=0)

    async def fail_inside() -> None:
        async with b:
            outside.start_soon(consumer, b.batches())
            outside.start_soon(got.call, b, 1)
            outside.start_soon(got.call, b, 2)
            await anyio.wait_all_tasks_blocked()
            raise Boom

    async with anyio.create_task_group() as outside:
        with pytest.raises(Boom):
            await fail_inside()
        with anyio.fail_after(JOIN):
            await ended.wait()
    assert all(isinstance(v, BatcherClosed) for v in got.got.values())
    assert set(got.got) == {1, 2}
    for batch in outstanding:
        batch.set_results([0])  # too late: its callers were released; no error


async def test_batches_needs_a_batcher_without_fn_and_open() -> None:
    async def fn(xs: list[int]) -> list[int]:
        return xs

    with pytest.raises(RuntimeError, match="made without fn"):
        Batcher(fn).batches()
    b = Batcher[int, int]()
    with pytest.raises(BatcherClosed, match="inside its `async with`"):
        b.batches()
    async with b:
        b.batches().close()
    with pytest.raises(BatcherClosed):
        b.batches()
    with pytest.raises(ValueError, match="'cache' needs fn"):
        Batcher(cache=batched.cache.MemoryCache(10))
    with pytest.raises(ValueError, match="'isolate_errors' needs fn"):
        Batcher(isolate_errors=True)


async def test_a_fn_batch_cannot_be_answered_by_hand() -> None:
    async def fn(xs: list[int]) -> list[int]:
        with pytest.raises(RuntimeError, match="returns its results instead"):
            batched.current_batch().set_results(xs)
        return xs

    async with Batcher(fn, timeout_ms=0) as b:
        assert await b(3) == 3


# -- current_batch(), contexts, deadlines, reason -------------------------------------------


def test_current_batch_outside_fn_raises_lookup_error() -> None:
    with pytest.raises(LookupError, match="outside a running batch function"):
        batched.current_batch()


@pytest.mark.parametrize("sync_fn", [False, True])
@pytest.mark.parametrize("many", [False, True])
async def test_fn_reads_each_callers_context(sync_fn: bool, many: bool) -> None:
    seen: list[tuple[list[int], list[str], str]] = []

    def look(xs: list[int]) -> list[int]:
        batch = batched.current_batch()
        assert batch.items == xs
        seen.append((xs, [c.run(request_id.get) for c in batch.contexts], batch.reason))
        return xs

    async def afn(xs: list[int]) -> list[int]:
        return look(xs)

    fn: Any = look if sync_fn else afn
    results: dict[int, Any] = {}
    async with Batcher(fn, batch_size=4, timeout_ms=5) as b:

        async def call(i: int) -> None:
            request_id.set(f"req-{i}")
            if many:
                results[i] = await b.many([i, i + 100])
            else:
                results[i] = await b(i)

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(call, i)
    assert request_id.get() == "-"
    pairs = {x: rid for xs, rids, _ in seen for x, rid in zip(xs, rids, strict=True)}
    for i in range(4):
        assert pairs[i] == f"req-{i}"
        if many:
            assert pairs[i + 100] == f"req-{i}"  # one context per item: the call's
    with pytest.raises(LookupError):
        batched.current_batch()  # reset once fn returned


async def test_isolate_errors_retries_show_the_subset() -> None:
    sizes: list[list[int]] = []

    async def fn(xs: list[int]) -> list[int]:
        batch = batched.current_batch()
        sizes.append(list(batch.items))
        assert batch.items == xs
        if 3 in xs:
            raise Boom
        return xs

    got = Got()
    async with (
        Batcher(fn, batch_size=4, timeout_ms=5, isolate_errors=True) as b,
        anyio.create_task_group() as tg,
    ):
        for i in range(4):
            tg.start_soon(got.call, b, i)
    assert [3] in sizes
    assert isinstance(got.got[3], Boom)
    assert sorted(len(s) for s in sizes)[-1] == 4


@pytest.mark.virtual_time
async def test_deadlines_are_each_callers_effective_deadline() -> None:
    seen: list[tuple[list[int], list[float]]] = []
    expected: dict[int, float] = {}

    async def fn(xs: list[int]) -> list[int]:
        seen.append((xs, batched.current_batch().deadlines))
        return xs

    async with Batcher(fn, batch_size=3, timeout_ms=5) as b:

        async def call(i: int) -> None:
            if i == 0:
                expected[i] = anyio.current_effective_deadline()
                await b(i)
                return
            with anyio.fail_after(10 + i):
                with anyio.CancelScope(deadline=anyio.current_time() + 100):
                    expected[i] = anyio.current_effective_deadline()
                    await b.many([i]) if i == 2 else await b(i)

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(call, i)
    ((xs, deadlines),) = seen
    got = dict(zip(xs, deadlines, strict=True))
    assert got == expected
    assert got[0] == math.inf
    assert got[1] < got[2] < math.inf


@pytest.mark.virtual_time
async def test_pulled_batch_deadlines_and_contexts() -> None:
    async with anyio.create_task_group() as tg, Batcher[int, int](batch_size=2, timeout_ms=5) as b:
        expected: dict[int, float] = {}

        async def call(i: int) -> None:
            request_id.set(f"r{i}")
            with anyio.move_on_after(50 * (i + 1)):
                expected[i] = anyio.current_effective_deadline()
                await b(i)

        tg.start_soon(call, 0)
        tg.start_soon(call, 1)
        async with b.batches() as stream:
            batch = await stream.receive()
            assert dict(zip(batch.items, batch.deadlines, strict=True)) == expected
            assert [c.run(request_id.get) for c in batch.contexts] == [f"r{i}" for i in batch.items]
            assert batch.reason == "full"
            batch.set_results(batch.items)


@pytest.mark.virtual_time
async def test_reasons() -> None:
    reasons: list[str] = []

    async def fn(xs: list[str]) -> list[str]:
        reasons.append(batched.current_batch().reason)
        return xs

    async with Batcher(fn, batch_size=2, timeout_ms=5, max_batch_length=4) as b:
        async with anyio.create_task_group() as tg:
            tg.start_soon(b, "a")
            tg.start_soon(b, "b")
        assert reasons == ["full"]
        async with anyio.create_task_group() as tg:
            tg.start_soon(b, "abcd")
        assert reasons[-1] == "budget"
        await b("c")
        assert reasons[-1] == "timeout"
    async with Batcher(fn, batch_size=8, timeout_ms=50, max_wait_ms=1) as slow:
        await slow("x")
        assert reasons[-1] == "overdue"  # its item had waited max_wait_ms
    async with anyio.create_task_group() as tg, Batcher(fn, batch_size=8, timeout_ms=50) as closing:
        tg.start_soon(closing, "z")
        await anyio.wait_all_tasks_blocked()
    assert reasons[-1] == "closing"
