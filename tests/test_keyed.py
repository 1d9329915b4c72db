"""Cache and in-flight dedupe: ``cache=``, ``cache_key=`` and ``dedupe=`` of a batcher.

Every async test runs on asyncio (virtual-time loop) and trio (``MockClock``), and where
it applies in both modes of use: a ``batched.Batcher`` owned by ``async with`` ("owned")
and the decorator's caller-driven mode, ``batched.dynamically(...)`` called outside
``async with`` ("driven"). The sync front-end (threads) runs in real time at small scale
with bounded waits. The property test at the end runs each hypothesis example in its own
``anyio.run`` on both backends.

Tests marked ``xfail(strict=True, reason="BUG: ...")`` document defects found while
writing this file; each reason names the suspected cause.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import attrs
import pytest
from _helpers import (
    BACKENDS,
    JOIN,
    Caller,
    ItemBoom,
    Rec,
    assert_nothing_left,
    close_bounded,
    launch,
    recorded,
    run_releases_its_loop,
    running_tasks,
    settle,
    settled,
    sync_calls_not_taken_in,
    tag,
    wait_until,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import batched
from batched.cache import MISS, CacheStats, DiskCache, MemoryCache
from batched.testing import (
    Arrival,
    BatchOutcome,
    Schedule,
    ScheduleResult,
    check_invariants,
    real_time,
    run_schedule,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from anyio.abc import TaskGroup

pytestmark = pytest.mark.anyio

MODES = ["owned", "driven"]


@asynccontextmanager
async def front(mode: str, rec: Rec, **settings: Any) -> AsyncIterator[Any]:
    """A callable batching ``rec``: an open ``Batcher`` (owned) or a decorated function
    called outside ``async with`` (driven). Either has ``f(item)``, ``f.many`` and
    ``f.stats``; in both, every cache write is done once the block has exited (owned)
    or every call has returned (driven)."""
    with anyio.fail_after(3600):  # a hang guard on virtual time
        if mode == "owned":
            async with batched.Batcher(rec, **settings) as b:
                yield b
        else:
            yield recorded(rec, **settings)


class SlowCache:
    """A ``MemoryCache`` whose ``get`` and/or ``set`` first sleep (virtual seconds)."""

    def __init__(self, get_delay: float = 0.0, set_delay: float = 0.0) -> None:
        self.inner: MemoryCache[Any, Any] = MemoryCache(64)
        self.get_delay = get_delay
        self.set_delay = set_delay

    async def get(self, key: Any) -> Any:
        await anyio.sleep(self.get_delay)
        return await self.inner.get(key)

    async def set(self, key: Any, value: Any) -> None:
        await anyio.sleep(self.set_delay)
        await self.inner.set(key, value)

    async def clear(self) -> None:
        await self.inner.clear()

    def stats(self) -> CacheStats:
        return self.inner.stats()


class HeldWriteCache:
    """A ``MemoryCache`` whose ``set`` waits for ``release`` (``writing`` is set then), and
    whose ``get`` cancels ``cancel_on_get`` when set, returning without a checkpoint (so
    that the caller's cancellation lands on its next one)."""

    def __init__(self) -> None:
        self.inner: MemoryCache[Any, Any] = MemoryCache(64)
        self.writing = anyio.Event()
        self.release = anyio.Event()
        self.cancel_on_get: anyio.CancelScope | None = None

    async def get(self, key: Any) -> Any:
        if self.cancel_on_get is not None:
            self.cancel_on_get.cancel()
            return MISS
        return await self.inner.get(key)

    async def set(self, key: Any, value: Any) -> None:
        self.writing.set()
        await self.release.wait()
        await self.inner.set(key, value)

    async def clear(self) -> None:
        await self.inner.clear()

    def stats(self) -> CacheStats:
        return self.inner.stats()


class FaultyCache:
    """A cache whose ``get`` and/or ``set`` raise ``OSError``; counts nothing itself."""

    def __init__(self, *, get_fails: bool, set_fails: bool) -> None:
        self.data: dict[Any, Any] = {}
        self.get_fails = get_fails
        self.set_fails = set_fails
        self.get_calls = 0
        self.set_calls = 0

    async def get(self, key: Any) -> Any:
        await anyio.lowlevel.checkpoint()
        self.get_calls += 1
        if self.get_fails:
            raise OSError("the cache is down (get)")
        return self.data.get(key, MISS)

    async def set(self, key: Any, value: Any) -> None:
        await anyio.lowlevel.checkpoint()
        self.set_calls += 1
        if self.set_fails:
            raise OSError("the cache is down (set)")
        self.data[key] = value

    async def clear(self) -> None:
        self.data.clear()

    def stats(self) -> CacheStats:
        return CacheStats(size=len(self.data))


class SeedCache:
    """A cache written for mixedbread's ``batched``: ``get`` returns None on a miss, and
    ``stats()`` is not a ``CacheStats`` but an object with some of its counters."""

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self.hits = self.misses = 0

    async def get(self, key: Any) -> Any:
        await anyio.lowlevel.checkpoint()
        if key in self.data:
            self.hits += 1
            return self.data[key]
        self.misses += 1
        return None

    async def set(self, key: Any, value: Any) -> None:
        await anyio.lowlevel.checkpoint()
        self.data[key] = value

    async def clear(self) -> None:
        self.data.clear()

    def stats(self) -> SimpleNamespace:
        return SimpleNamespace(hits=self.hits, misses=self.misses, size=len(self.data))


def batched_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "batched"]


# -- 1. cache hits -----------------------------------------------------------------------


@pytest.mark.virtual_time
@pytest.mark.parametrize("mode", MODES)
async def test_a_hit_returns_at_once_and_fn_never_sees_it(mode: str) -> None:
    rec = Rec()
    cache: MemoryCache[Any, Any] = MemoryCache(16)
    async with front(mode, rec, cache=cache, timeout_ms=50) as f:
        start = anyio.current_time()
        assert await f(1) == ("r", 1)
        assert anyio.current_time() == pytest.approx(start + 0.05)  # a miss waits the window
        await settle()  # the write is done (no time passes)
        before = anyio.current_time()
        assert await f(1) == ("r", 1)
        assert anyio.current_time() == before  # a hit: no window, no time
        assert await f(1) == ("r", 1)
    stats = f.stats
    assert rec.batches == [[1]]
    assert (stats.submitted, stats.completed, stats.total_processed) == (3, 3, 1)
    assert stats.cache_stats == CacheStats(gets=3, hits=2, misses=1, sets=1, size=1)
    assert stats.queue_size == 0


@pytest.mark.parametrize("mode", MODES)
async def test_a_result_is_in_the_cache_when_its_call_returns(mode: str) -> None:
    """Read your writes: ``await f(1)`` then ``await f(1)`` is a hit, with no pause
    between, and the cache holds the result (before, the write ran after the hand-back:
    the second call counted a miss)."""
    rec = Rec()
    cache: MemoryCache[Any, Any] = MemoryCache(16)
    async with front(mode, rec, cache=cache, timeout_ms=0) as f:
        assert await f(1) == ("r", 1)
        assert cache.stats().sets == 1
        assert await f(1) == ("r", 1)
        assert await f.many([2, 3]) == tag([2, 3])
        assert cache.stats().sets == 3
        assert await f.many([2, 3]) == tag([2, 3])
    assert rec.batches == [[1], [2, 3]]
    assert f.stats.cache_stats == CacheStats(gets=6, hits=3, misses=3, sets=3, size=3)


@pytest.mark.virtual_time
async def test_results_are_written_before_their_callers_get_them_not_the_next_batch() -> None:
    """A slow ``set`` holds the callers of its batch until their results are written, but
    not the next batch, which runs meanwhile; ``__aexit__`` waits for every write."""
    rec = Rec()
    cache = SlowCache(set_delay=1.0)
    async with batched.Batcher(rec, cache=cache, timeout_ms=0) as b:
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            first = await launch(tg, b.many, [1, 2])
            second = await launch(tg, b, 3)  # arrives while the first batch's writes run
            assert rec.times == [start, start]  # the next batch did not wait for them
        assert first.result == tag([1, 2])
        assert first.at == start + 2.0  # two writes of one second each
        assert second.result == ("r", 3)
        assert second.at == start + 1.0
        assert cache.inner.stats().sets == 3
        assert await b(3) == ("r", 3)  # a hit
    assert rec.batches == [[1, 2], [3]]


@pytest.mark.virtual_time
@pytest.mark.parametrize("mode", MODES)
async def test_a_hung_cache_write_holds_its_callers_for_a_bounded_time(mode: str) -> None:
    """A ``set`` that never returns: its callers get their results once the batch's
    bounded wait for its writes (10 s) is over, and later calls still work."""
    rec = Rec()
    cache = SlowCache(set_delay=math.inf)
    async with front(mode, rec, cache=cache, timeout_ms=0) as f:
        start = anyio.current_time()
        assert await f(1) == ("r", 1)
        assert anyio.current_time() == pytest.approx(start + 10.0)
        assert await f(2) == ("r", 2)
    assert rec.batches == [[1], [2]]
    assert f.stats.completed == 2


async def test_driven_writes_are_done_when_the_calls_return() -> None:
    """Caller-driven: the caller that ran the batch writes its results before returning."""
    rec = Rec()
    cache = SlowCache(set_delay=1.0)
    f = recorded(rec, cache=cache, timeout_ms=0)
    with anyio.fail_after(3600):
        assert await f.many([1, 2]) == tag([1, 2])
        assert cache.inner.stats().sets == 2
        assert await f(1) == ("r", 1)  # a hit
    assert rec.batches == [[1, 2]]
    assert f.stats.cache_stats == CacheStats(gets=3, hits=1, misses=2, sets=2, size=2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("value", [0, "", [], 0.0, False], ids=repr)
async def test_falsy_results_are_cached_and_served(mode: str, value: Any) -> None:
    rec = Rec(out=lambda item: value)
    cache: MemoryCache[Any, Any] = MemoryCache(4)
    async with front(mode, rec, cache=cache) as f:
        first = await f("k")
        await settle()
        second = await f("k")
    stats = f.stats
    assert first == second == value
    assert type(second) is type(value)
    assert rec.batches == [["k"]]
    assert stats.cache_stats is not None
    assert (stats.cache_stats.hits, stats.cache_stats.sets) == (1, 1)
    assert stats.completed == 2


@pytest.mark.parametrize("mode", MODES)
async def test_a_none_result_is_recomputed_every_time(mode: str) -> None:
    rec = Rec(out=lambda item: None)
    cache: MemoryCache[Any, Any] = MemoryCache(4)
    async with front(mode, rec, cache=cache) as f:
        for _ in range(3):
            assert await f("k") is None
            await settle()
    stats = f.stats
    assert rec.batches == [["k"]] * 3
    assert stats.cache_stats == CacheStats(gets=3, hits=0, misses=3, sets=0, size=0)
    assert stats.completed == 3


@pytest.mark.parametrize("mode", MODES)
async def test_errors_are_never_cached(mode: str) -> None:
    """``fn`` raising, and a ``Failure`` slot: recomputed each time; results beside a
    ``Failure`` in the same batch are cached."""
    rec = Rec(raise_on={"bad"}, fail_on={"slot"})
    cache: MemoryCache[Any, Any] = MemoryCache(8)
    async with front(mode, rec, cache=cache) as f:
        for _ in range(2):
            with pytest.raises(ItemBoom) as raised:
                await f("bad")
            assert raised.value == ItemBoom("bad")
            await settle()
        async with anyio.create_task_group() as tg:
            ok = await launch(tg, f, "ok")
            slot = await launch(tg, f, "slot")
        assert ok.result == ("r", "ok")
        assert slot.error == ItemBoom("slot")
        await settle()
        async with anyio.create_task_group() as tg:
            ok2 = await launch(tg, f, "ok")
            slot2 = await launch(tg, f, "slot")
        assert ok2.result == ("r", "ok")
        assert slot2.error == ItemBoom("slot")
    stats = f.stats
    assert rec.batches == [["bad"], ["bad"], ["ok", "slot"], ["slot"]]
    assert stats.cache_stats is not None
    assert (stats.cache_stats.sets, stats.cache_stats.size) == (1, 1)  # only "ok"
    assert (stats.completed, stats.failed) == (2, 4)
    assert stats.submitted == settled(stats) == 6


@pytest.mark.parametrize("mode", MODES)
async def test_a_seed_style_cache_returning_none_reads_as_a_miss(mode: str) -> None:
    rec = Rec()
    cache = SeedCache()
    async with front(mode, rec, cache=cache) as f:
        assert await f(1) == ("r", 1)
        await settle()
        assert await f(1) == ("r", 1)
        assert await f(2) == ("r", 2)
    stats = f.stats
    assert rec.batches == [[1], [2]]
    assert cache.data == {1: ("r", 1), 2: ("r", 2)}
    # Its counters are read into a CacheStats; the ones it lacks are 0.
    assert stats.cache_stats == CacheStats(hits=1, misses=2, size=2)
    assert stats.completed == 3


# -- 2. a faulty cache -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fails", ["get", "set", "both"])
async def test_a_faulty_cache_never_fails_a_call(
    mode: str, fails: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="batched")
    cache = FaultyCache(get_fails=fails in {"get", "both"}, set_fails=fails in {"set", "both"})
    rec = Rec()
    async with front(mode, rec, cache=cache, batch_size=4) as f:
        for _ in range(3):
            assert await f(1) == ("r", 1)
            await settle()
        assert await f.many([2, 3, 2]) == tag([2, 3, 2])
    stats = f.stats
    # Reads that fail miss; writes that fail store nothing: 1 is computed each time.
    assert rec.batches == [[1], [1], [1], [2, 3]]
    errors = (cache.get_calls if cache.get_fails else 0) + (
        cache.set_calls if cache.set_fails else 0
    )
    assert cache.get_calls == 6
    assert cache.set_calls == 5  # one per computed key (dedupe merged the two 2s)
    assert stats.cache_stats is not None
    assert stats.cache_stats.errors == errors
    assert stats.completed == stats.submitted == 6
    records = batched_records(caplog)
    assert len(records) == 1, records  # logged once, however many failures
    assert records[0].levelno == logging.WARNING
    assert "cache" in records[0].getMessage()
    assert isinstance(records[0].exc_info[1], OSError)  # type: ignore[index]


async def _stray_cancellation() -> BaseException:
    """A cancellation carried out of the cancel scope that raised it: what a cache gets
    from awaiting something cancelled elsewhere. Its task is not being cancelled."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.lowlevel.checkpoint()
        except anyio.get_cancelled_exc_class() as exc:
            return exc
    raise AssertionError("the scope did not cancel")


class StrayCancelCache(FaultyCache):
    """``get`` and ``set`` raise a cancellation that is not their caller's."""

    async def get(self, key: Any) -> Any:
        self.get_calls += 1
        raise await _stray_cancellation()

    async def set(self, key: Any, value: Any) -> None:
        self.set_calls += 1
        raise await _stray_cancellation()


@pytest.mark.parametrize("mode", MODES)
async def test_a_cancellation_the_cache_raises_is_a_cache_error_not_the_callers(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The DESIGN's rule for ``fn`` (a cancellation that is not the batcher's own is an
    error) applied to the cache, which is user code: its caller was not cancelled, so it
    is not cancelled; the cache failed, so the item is computed, and the error counted."""
    caplog.set_level(logging.WARNING, logger="batched")
    cache = StrayCancelCache(get_fails=True, set_fails=True)
    rec = Rec()
    async with front(mode, rec, cache=cache, batch_size=4) as f:
        assert await f(1) == ("r", 1)
        await settle()
        assert await f.many([2, 3]) == tag([2, 3])
    stats = f.stats
    assert rec.batches == [[1], [2, 3]]
    assert (cache.get_calls, cache.set_calls) == (3, 3)
    assert stats.cache_stats is not None
    assert stats.cache_stats.errors == 6
    assert (stats.completed, stats.cancelled) == (3, 0)
    assert stats.submitted == settled(stats)
    (record,) = batched_records(caplog)
    assert isinstance(record.exc_info[1], anyio.get_cancelled_exc_class())  # type: ignore[index]
    # (Its counterpart, a caller cancelled while get() awaits, stays a cancellation:
    # test_a_caller_cancelled_during_the_cache_read_counts_as_cancelled.)


# -- 3. cache_key ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_cache_key_maps_items_to_keys(mode: str) -> None:
    rec = Rec(out=lambda d: ("r", d["id"], d["text"]))
    cache: MemoryCache[Any, Any] = MemoryCache(8)
    async with front(mode, rec, cache=cache, cache_key=lambda d: d["id"]) as f:
        assert await f({"id": 1, "text": "a"}) == ("r", 1, "a")
        await settle()
        # A different item with the same key: served from the cache.
        assert await f({"id": 1, "text": "b"}) == ("r", 1, "a")
        # Equal keys waiting at once: computed once, from the first item.
        async with anyio.create_task_group() as tg:
            x = await launch(tg, f, {"id": 2, "text": "x"})
            y = await launch(tg, f, {"id": 2, "text": "y"})
        assert x.result == y.result == ("r", 2, "x")
    stats = f.stats
    assert rec.batches == [[{"id": 1, "text": "a"}], [{"id": 2, "text": "x"}]]
    assert await cache.get(1) == ("r", 1, "a")
    assert await cache.get(2) == ("r", 2, "x")
    assert stats.completed == stats.submitted == 4


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("keyed", ["cache", "dedupe"])
async def test_an_unhashable_item_without_cache_key_fails_only_its_caller(
    mode: str, keyed: str
) -> None:
    rec = Rec()
    settings: dict[str, Any] = {"cache": MemoryCache(8)} if keyed == "cache" else {"dedupe": True}
    async with front(mode, rec, timeout_ms=10, **settings) as f, anyio.create_task_group() as tg:
        a = await launch(tg, f, "a")
        bad = await launch(tg, f, {"no": "hash"})
        c = await launch(tg, f, "c")
    stats = f.stats
    assert isinstance(bad.error, TypeError)
    assert "cache_key" in str(bad.error)
    assert (a.result, c.result) == (("r", "a"), ("r", "c"))
    assert rec.batches == [["a", "c"]]
    assert (stats.completed, stats.failed) == (2, 1)
    assert stats.submitted == settled(stats) == 3


@pytest.mark.parametrize("mode", MODES)
async def test_a_cache_key_that_raises_fails_only_its_caller(mode: str) -> None:
    rec = Rec(out=lambda d: ("r", d["id"]))
    async with (
        front(mode, rec, cache=MemoryCache(8), cache_key=lambda d: d["id"]) as f,
        anyio.create_task_group() as tg,
    ):
        a = await launch(tg, f, {"id": "a"})
        bad = await launch(tg, f, {"name": "no id"})
        c = await launch(tg, f, {"id": "c"})
    stats = f.stats
    assert isinstance(bad.error, KeyError)
    assert any("cache_key" in note for note in getattr(bad.error, "__notes__", []))
    assert (a.result, c.result) == (("r", "a"), ("r", "c"))
    assert rec.batches == [[{"id": "a"}, {"id": "c"}]]
    assert (stats.completed, stats.failed) == (2, 1)
    assert stats.submitted == settled(stats) == 3


async def test_a_cache_key_returning_an_unhashable_key_names_it() -> None:
    rec = Rec()
    async with batched.Batcher(rec, dedupe=True, cache_key=lambda item: [item]) as b:
        with pytest.raises(TypeError, match="cache_key"):
            await b(1)
    assert rec.batches == []
    assert b.stats.failed == b.stats.submitted == 1


# -- 4. MemoryCache ttl ------------------------------------------------------------------


@pytest.mark.virtual_time
@pytest.mark.parametrize("mode", MODES)
async def test_memory_cache_ttl_expires_on_the_virtual_clock(mode: str) -> None:
    rec = Rec()
    cache: MemoryCache[Any, Any] = MemoryCache(8, ttl=10.0)
    async with front(mode, rec, cache=cache, timeout_ms=0) as f:
        assert await f(1) == ("r", 1)  # written at t0
        await settle()
        await anyio.sleep(9.5)
        assert await f(1) == ("r", 1)  # a hit before the ttl
        assert rec.batches == [[1]]
        await anyio.sleep(1.0)  # past t0 + 10 s
        assert await f(1) == ("r", 1)  # expired: recomputed
        assert rec.batches == [[1], [1]]
        await settle()
        assert await f(1) == ("r", 1)  # the fresh write is served again
    stats = f.stats
    assert rec.batches == [[1], [1]]
    assert stats.cache_stats is not None
    assert (stats.cache_stats.hits, stats.cache_stats.sets) == (2, 2)


# -- 5. DiskCache ------------------------------------------------------------------------


async def test_disk_cache_round_trip_through_a_batcher(tmp_path: Path) -> None:
    """Results written by one batcher are served to another from the same directory.

    In real time: DiskCache works in worker threads, and virtual time jumps while a
    thread is busy (it would fire the batcher's bound on its writes at once).
    """
    rec = Rec()
    directory = tmp_path / "cache"
    with real_time(), DiskCache(directory) as cache:
        async with batched.Batcher(rec, cache=cache) as b:
            assert await b.many([1, "two", (3, 3)]) == tag([1, "two", (3, 3)])
        assert cache.stats().sets == 3  # written by the time the block exited
        counted = b.stats.cache_stats
        assert counted is not None
        # DiskCache times its operations (the seed's timing figures): real seconds here.
        assert counted.total_get_time > 0.0
        assert counted.total_set_time > 0.0
        untimed = attrs.evolve(counted, total_get_time=0.0, total_set_time=0.0)
        assert untimed == CacheStats(gets=3, hits=0, misses=3, sets=3, size=3)
    with real_time(), DiskCache(directory) as cache:
        async with batched.Batcher(rec, cache=cache) as b:
            assert await b.many([(3, 3), 4, 1, "two"]) == tag([(3, 3), 4, 1, "two"])
        stats = b.stats
        assert cache.stats().sets == 1
    assert rec.batches == [[1, "two", (3, 3)], [4]]
    assert stats.cache_stats is not None
    untimed = attrs.evolve(
        stats.cache_stats, total_get_time=0.0, total_hit_time=0.0, total_set_time=0.0
    )
    assert untimed == CacheStats(gets=4, hits=3, misses=1, sets=1, size=4)
    assert stats.completed == stats.submitted == 4


# -- 6. dedupe ---------------------------------------------------------------------------

DEDUPE_SETTINGS = {
    "cache": lambda: {"cache": MemoryCache(16)},
    "dedupe-only": lambda: {"dedupe": True},
}


@pytest.mark.virtual_time  # its callers must all be waiting before timeout_ms
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("keyed", list(DEDUPE_SETTINGS))
async def test_equal_keys_waiting_at_once_are_computed_once(mode: str, keyed: str) -> None:
    rec = Rec()
    async with (
        front(mode, rec, timeout_ms=10, **DEDUPE_SETTINGS[keyed]()) as f,
        anyio.create_task_group() as tg,
    ):
        callers = [await launch(tg, f, item) for item in (1, 2, 1, 1, 2, 3)]
        assert f.stats.queue_size == 3  # one per key
    stats = f.stats
    assert [c.result for c in callers] == tag([1, 2, 1, 1, 2, 3])
    assert rec.batches == [[1, 2, 3]]
    # The callers of one key get the very same result object.
    assert callers[0].result is callers[2].result is callers[3].result
    assert (stats.completed, stats.total_processed) == (6, 3)
    assert stats.submitted == settled(stats) == 6


@pytest.mark.parametrize("mode", MODES)
async def test_dedupe_false_with_a_cache_computes_duplicates(mode: str) -> None:
    rec = Rec()
    cache: MemoryCache[Any, Any] = MemoryCache(16)
    async with front(mode, rec, timeout_ms=10, cache=cache, dedupe=False) as f:
        async with anyio.create_task_group() as tg:
            callers = [await launch(tg, f, item) for item in (1, 1, 2)]
        await settle()
        assert await f(1) == ("r", 1)  # still served from the cache
    stats = f.stats
    assert [c.result for c in callers] == tag([1, 1, 2])
    assert rec.batches == [[1, 1, 2]]
    assert (stats.completed, stats.total_processed) == (4, 3)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("keyed", list(DEDUPE_SETTINGS))
async def test_a_cancelled_duplicate_leaves_the_shared_item_to_the_others(
    mode: str, keyed: str
) -> None:
    """The caller that sent the shared item leaves while it waits: the rest still get it."""
    rec = Rec()
    async with (
        front(mode, rec, timeout_ms=10, **DEDUPE_SETTINGS[keyed]()) as f,
        anyio.create_task_group() as tg,
    ):
        first = await launch(tg, f, 1)
        second = await launch(tg, f, 1)
        third = await launch(tg, f, 1)
        first.scope.cancel()
        await settle()
        assert f.stats.queue_size == 1  # the shared item stays
        second.scope.cancel()
        await settle()
        assert f.stats.queue_size == 1
    stats = f.stats
    assert first.outcome == second.outcome == ("cancelled", None)
    assert third.result == ("r", 1)
    assert rec.batches == [[1]]
    assert (stats.completed, stats.cancelled) == (1, 2)
    assert stats.submitted == settled(stats) == 3


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("keyed", list(DEDUPE_SETTINGS))
async def test_all_duplicates_cancelled_before_dispatch_drop_the_item(
    mode: str, keyed: str
) -> None:
    rec = Rec()
    async with front(mode, rec, timeout_ms=10, **DEDUPE_SETTINGS[keyed]()) as f:
        async with anyio.create_task_group() as tg:
            gone = [await launch(tg, f, "gone") for _ in range(3)]
            kept = await launch(tg, f, "kept")
            assert f.stats.queue_size == 2
            for caller in gone:
                caller.scope.cancel()
            await settle()
            assert f.stats.queue_size == 1
        # A later equal call starts afresh.
        assert await f("gone") == ("r", "gone")
    stats = f.stats
    assert all(c.outcome == ("cancelled", None) for c in gone)
    assert kept.result == ("r", "kept")
    assert rec.batches == [["kept"], ["gone"]]
    assert (stats.completed, stats.cancelled) == (2, 3)
    assert stats.submitted == settled(stats) == 5


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("keyed", list(DEDUPE_SETTINGS))
async def test_a_duplicate_cancelled_while_the_batch_runs_spares_the_others(
    mode: str, keyed: str
) -> None:
    rec = Rec(hold={1})
    async with (
        front(mode, rec, timeout_ms=10, **DEDUPE_SETTINGS[keyed]()) as f,
        anyio.create_task_group() as tg,
    ):
        first = await launch(tg, f, 1)
        second = await launch(tg, f, 1)
        await rec.running.wait()
        first.scope.cancel()  # in driven mode it may be running the batch: shielded
        await settle()
        rec.release.set()
    stats = f.stats
    assert first.outcome == ("cancelled", None)
    assert second.result == ("r", 1)
    assert rec.batches == [[1]]
    assert (stats.completed, stats.cancelled) == (1, 1)
    assert stats.submitted == settled(stats) == 2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("keyed", list(DEDUPE_SETTINGS))
async def test_dedupe_joins_an_item_already_running(mode: str, keyed: str) -> None:
    rec = Rec(hold={1})
    async with (
        front(mode, rec, timeout_ms=0, **DEDUPE_SETTINGS[keyed]()) as f,
        anyio.create_task_group() as tg,
    ):
        first = await launch(tg, f, 1)
        await rec.running.wait()
        joined = await launch(tg, f, 1)
        other = await launch(tg, f, 2)  # a new key waits for the next batch
        assert f.stats.queue_size == 1
        rec.release.set()
    stats = f.stats
    assert first.result == joined.result == ("r", 1)
    assert first.result is joined.result
    assert other.result == ("r", 2)
    assert rec.batches == [[1], [2]]
    assert (stats.completed, stats.total_processed) == (3, 2)
    assert stats.submitted == settled(stats) == 3


@pytest.mark.parametrize("mode", MODES)
async def test_dedupe_callers_of_a_failing_item_all_get_its_error(mode: str) -> None:
    rec = Rec(fail_on={"f"})
    async with front(mode, rec, timeout_ms=10, dedupe=True) as f, anyio.create_task_group() as tg:
        callers = [await launch(tg, f, "f") for _ in range(3)]
        ok = await launch(tg, f, "ok")
    stats = f.stats
    assert all(c.error == ItemBoom("f") for c in callers)
    assert ok.result == ("r", "ok")
    assert rec.batches == [["f", "ok"]]
    assert (stats.completed, stats.failed) == (1, 3)
    assert stats.submitted == settled(stats) == 4


@pytest.mark.parametrize("mode", MODES)
async def test_stats_count_every_caller_hits_and_joins_included(mode: str) -> None:
    rec = Rec(hold={"slow"}, fail_on={"bad"})
    cache: MemoryCache[Any, Any] = MemoryCache(16)
    async with front(mode, rec, timeout_ms=0, cache=cache) as f:
        assert await f("hit") == ("r", "hit")
        await settle()
        async with anyio.create_task_group() as tg:
            slow = await launch(tg, f, "slow")
            await rec.running.wait()
            joins = [await launch(tg, f, "slow") for _ in range(2)]
            hits = [await launch(tg, f, "hit") for _ in range(3)]
            bad = await launch(tg, f, "bad")
            gone = await launch(tg, f, "bad")  # joins "bad", then leaves
            gone.scope.cancel()
            await settle()
            rec.release.set()
    stats = f.stats
    assert all(c.result == ("r", "slow") for c in [slow, *joins])
    assert all(c.result == ("r", "hit") for c in hits)
    assert bad.error == ItemBoom("bad")
    assert gone.outcome == ("cancelled", None)
    assert rec.batches == [["hit"], ["slow"], ["bad"]]
    # completed: the first "hit", 3 hits, "slow" and its 2 joins.
    assert (stats.completed, stats.failed, stats.cancelled, stats.rejected) == (7, 1, 1, 0)
    assert stats.submitted == settled(stats) == 9
    assert stats.total_processed == 3
    assert stats.queue_size == 0


# -- 7. many() with a cache --------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_many_mixes_hits_misses_and_duplicates_in_input_order(mode: str) -> None:
    rec = Rec()
    cache: MemoryCache[Any, Any] = MemoryCache(16)
    async with front(mode, rec, timeout_ms=10, cache=cache) as f:
        assert await f.many([1, 2]) == tag([1, 2])
        await settle()
        items = [3, 1, 4, 3, 2, 4, 4, 5]
        async with anyio.create_task_group() as tg:
            lone = await launch(tg, f, 5)  # a single call of 5 waits already
            big = await launch(tg, f.many, items)
        assert big.result == tag(items)
        assert lone.result == ("r", 5)
    stats = f.stats
    assert rec.batches == [[1, 2], [5, 3, 4]]
    assert stats.completed == stats.submitted == 2 + 1 + len(items)
    assert stats.cache_stats is not None
    assert stats.cache_stats.hits == 2  # 1 and 2 inside the big call


@pytest.mark.parametrize("mode", MODES)
async def test_many_raises_the_first_failing_item_once_all_settle(mode: str) -> None:
    """Items in different batches: the error comes only when the held item is done, and
    it is the first failing one in input order."""
    rec = Rec(hold={"slow"}, fail_on={"x", "y"})
    cache: MemoryCache[Any, Any] = MemoryCache(16)
    async with front(mode, rec, batch_size=2, timeout_ms=0, cache=cache) as f:
        async with anyio.create_task_group() as tg:
            call = await launch(tg, f.many, ["ok", "y", "slow", "x"])
            await rec.running.wait()
            await settle()
            assert call.outcome is None  # "slow" is not settled yet
            rec.release.set()
        await settle()
        assert await f.many(["ok", "slow"]) == tag(["ok", "slow"])  # both cached
    stats = f.stats
    assert call.error == ItemBoom("y")
    assert sorted(rec.seen()) == ["ok", "slow", "x", "y"]
    assert (stats.completed, stats.failed) == (2, 4)
    assert stats.submitted == settled(stats) == 6


@pytest.mark.virtual_time
@pytest.mark.parametrize("mode", MODES)
async def test_many_all_hits_and_empty(mode: str) -> None:
    rec = Rec()
    async with front(mode, rec, cache=MemoryCache(8)) as f:
        assert await f.many([]) == []
        assert await f.many([7, 8]) == tag([7, 8])
        await settle()
        before = anyio.current_time()
        assert await f.many([8, 7, 8]) == tag([8, 7, 8])
        assert anyio.current_time() == before
    stats = f.stats
    assert rec.batches == [[7, 8]]
    assert stats.completed == stats.submitted == 5


# -- 8. max_queue_size with dedupe -------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("keyed", list(DEDUPE_SETTINGS))
async def test_joining_needs_no_room_a_new_key_does(mode: str, keyed: str) -> None:
    rec = Rec(hold={0})
    settings = {"batch_size": 1, "timeout_ms": 0, "max_queue_size": 1}
    async with (
        front(mode, rec, **settings, **DEDUPE_SETTINGS[keyed]()) as f,
        anyio.create_task_group() as tg,
    ):
        running = await launch(tg, f, 0)
        await rec.running.wait()
        waiting = await launch(tg, f, 1)
        assert f.stats.queue_size == 1  # full
        joined = await launch(tg, f, 1, wait=False)
        joined_running = await launch(tg, f, 0, wait=False)
        with pytest.raises(batched.QueueFull):
            await f(2, wait=False)
        assert f.stats.queue_size == 1
        rec.release.set()
    stats = f.stats
    assert running.result == joined_running.result == ("r", 0)
    assert waiting.result == joined.result == ("r", 1)
    assert rec.batches == [[0], [1]]
    assert (stats.completed, stats.rejected) == (4, 1)
    assert stats.submitted == settled(stats) == 5


@pytest.mark.parametrize("mode", MODES)
async def test_a_shared_item_waiting_for_room_is_joined_and_dropped_with_its_callers(
    mode: str,
) -> None:
    rec = Rec(hold={0})
    settings = {"batch_size": 1, "timeout_ms": 0, "max_queue_size": 1, "dedupe": True}
    async with front(mode, rec, **settings) as f, anyio.create_task_group() as tg:
        running = await launch(tg, f, 0)
        await rec.running.wait()
        waiting = await launch(tg, f, 1)
        for_room = await launch(tg, f, 2)  # waits for room
        joiner = await launch(tg, f, 2, wait=False)  # joins it, no QueueFull
        gone = await launch(tg, f, 3)  # waits for room, then leaves
        gone.scope.cancel()
        await settle()
        rec.release.set()
    stats = f.stats
    assert [c.result for c in (running, waiting, for_room, joiner)] == tag([0, 1, 2, 2])
    assert gone.outcome == ("cancelled", None)
    assert rec.batches == [[0], [1], [2]]
    assert (stats.completed, stats.cancelled, stats.rejected) == (4, 1, 0)
    assert stats.submitted == settled(stats) == 5


# -- owned mode: closing -----------------------------------------------------------------


async def test_callers_of_a_shared_item_get_batcher_closed_when_the_block_fails() -> None:
    rec = Rec(hold={1})

    class Stop(Exception):
        pass

    b = batched.Batcher(rec, timeout_ms=10, dedupe=True)
    callers: list[Caller] = []

    async def fail_the_block(tg: TaskGroup) -> None:
        async with b:
            callers.extend([await launch(tg, b, 1) for _ in range(2)])  # running
            await rec.running.wait()
            callers.extend([await launch(tg, b, 2) for _ in range(2)])  # waiting
            raise Stop

    async with anyio.create_task_group() as tg:
        with pytest.raises(Stop):
            await fail_the_block(tg)
    assert len(callers) == 4
    for caller in callers:
        assert isinstance(caller.error, batched.BatcherClosed)
    assert rec.batches == [[1]]
    stats = b.stats
    assert stats.failed == 4
    assert stats.submitted == settled(stats) == 4


async def test_a_keyed_call_on_a_closed_batcher_raises_batcher_closed() -> None:
    cache = FaultyCache(get_fails=False, set_fails=False)
    b = batched.Batcher(Rec(), cache=cache)
    with pytest.raises(batched.BatcherClosed):
        await b(1)
    with pytest.raises(batched.BatcherClosed):
        await b.many([1, 2])
    assert cache.get_calls == 0  # refused before reading the cache
    assert b.stats.failed == b.stats.submitted == 3


# -- 9. the sync front-end ---------------------------------------------------------------


def _in_threads(calls: dict[Any, Callable[[], Any]]) -> dict[Any, Any]:
    """Run each call in its own thread at once; each one's result or exception."""
    out: dict[Any, Any] = {}
    barrier = threading.Barrier(len(calls), timeout=JOIN)

    def run(key: Any, call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            out[key] = call()
        except Exception as exc:
            out[key] = exc

    threads = [
        threading.Thread(target=run, args=(key, call), daemon=True) for key, call in calls.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + JOIN
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a calling thread hung"
    return out


def test_sync_front_end_with_a_cache_from_threads() -> None:
    seen: list[list[int]] = []

    @batched.dynamically(cache=MemoryCache(32), timeout_ms=1)
    def square(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [x * x for x in items]

    try:
        assert square(3) == 9
        wait_until(lambda: square.stats.cache_stats.sets == 1, "the write of 3")  # type: ignore[union-attr]
        got = _in_threads({n: functools.partial(square.many, [3, 4, 3, 4]) for n in range(6)})
        assert got == {n: [9, 16, 9, 16] for n in range(6)}
        computed = [x for batch in seen for x in batch]
        assert computed.count(3) == 1  # served from the cache to every thread
        assert 1 <= computed.count(4) <= 6  # one per call at most; dedupe may merge more
        wait_until(lambda: square.stats.cache_stats.sets >= 2, "the write of 4")  # type: ignore[union-attr]
        assert square([4, 5, 5]) == [16, 25, 25]
        before = len(seen)

        async def from_a_loop() -> list[int]:
            return [await square.acall(3), *(await square.acall([4, 3]))]

        for backend in BACKENDS:
            assert anyio.run(from_a_loop, backend=backend) == [9, 16, 9]
        assert len(seen) == before  # acall was served from the cache too
    finally:
        close_bounded(square)
    stats = square.stats
    assert [x for batch in seen for x in batch].count(5) == 1  # dedupe inside one call
    assert stats.cache_stats is not None
    # 3 in every thread's call, 4 in square([4, 5, 5]), all three acall items, twice.
    assert stats.cache_stats.hits >= 6 * 2 + 1 + 3 * 2
    assert stats.cache_stats.sets == stats.total_processed  # every computed item written
    assert stats.completed == stats.submitted == 1 + 6 * 4 + 3 + 3 * 2
    assert stats.queue_size == 0


def test_sync_front_end_dedupes_equal_items_from_threads() -> None:
    entered = threading.Event()
    release = threading.Event()
    seen: list[list[str]] = []

    @batched.dynamically(dedupe=True, timeout_ms=50)
    def fn(items: list[str]) -> list[tuple[str, str]]:
        seen.append(list(items))
        if "hold" in items:
            entered.set()
            assert release.wait(JOIN)
        return tag(items)

    try:
        holder = threading.Thread(target=fn, args=("hold",), daemon=True)
        holder.start()
        assert entered.wait(JOIN)
        # fn holds the serving thread: these four pile up and are sent together.
        results: dict[int, Any] = {}

        def call(n: int) -> None:
            results[n] = fn("same")

        threads = [threading.Thread(target=call, args=(n,), daemon=True) for n in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: sync_calls_not_taken_in(fn) == 4, "four calls queued")
        release.set()
        for thread in [holder, *threads]:
            thread.join(JOIN)
        assert results == dict.fromkeys(range(4), ("r", "same"))
    finally:
        release.set()
        close_bounded(fn)
    assert seen == [["hold"], ["same"]]
    stats = fn.stats
    assert stats.completed == stats.submitted == 5
    assert stats.total_processed == 2


# -- known defects -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_caller_cancelled_during_the_cache_read_counts_as_cancelled(mode: str) -> None:
    rec = Rec()
    cache = SlowCache(get_delay=1.0)
    async with front(mode, rec, cache=cache) as f:
        with anyio.move_on_after(0.5):
            await f(1)
        with anyio.move_on_after(0.5):
            await f.many([2, 3])
    stats = f.stats
    assert rec.batches == []
    assert stats.submitted == 3
    assert (stats.failed, stats.cancelled) == (0, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_driven_hits_leave_nothing_behind(backend: str) -> None:
    """Caller-driven calls served from the cache keep nothing of their run: no task, no
    waiting item, and nothing that holds on to the finished event loop."""
    rec = Rec()
    f = recorded(rec, cache=MemoryCache(8))

    async def main() -> None:
        baseline = running_tasks()
        with anyio.fail_after(60):
            assert await f(1) == ("r", 1)
            assert_nothing_left(f, baseline)
            assert await f(1) == ("r", 1)  # a hit
            assert await f.many([]) == []
            assert rec.batches == [[1]]
            assert_nothing_left(f, baseline)

    assert run_releases_its_loop(backend, main)
    assert run_releases_its_loop(backend, main)  # a run with nothing but hits
    assert rec.batches == [[1]]


async def test_driven_keyed_many_cancelled_counts_each_item_once() -> None:
    rec = Rec()
    f = recorded(rec, cache=MemoryCache(8), timeout_ms=1000)
    with anyio.move_on_after(0.5):
        await f.many([1, 2])
    stats = f.stats
    assert rec.batches == []
    assert (stats.submitted, stats.cancelled) == (2, 2)


@pytest.mark.parametrize("mode", MODES)
async def test_a_caller_cancelled_while_joining_a_result_being_written_counts_once(
    mode: str,
) -> None:
    """An equal call joins the result whose write is under way, and its caller is
    cancelled before it resumes: it counts as cancelled (it never sees the result)."""
    rec = Rec()
    cache = HeldWriteCache()
    async with front(mode, rec, cache=cache, timeout_ms=0) as f, anyio.create_task_group() as tg:
        first = Caller(f, 1)
        tg.start_soon(first.run)
        await cache.writing.wait()
        with anyio.CancelScope() as scope:
            cache.cancel_on_get = scope
            await f(1)
        assert scope.cancelled_caught
        cache.cancel_on_get = None
        cache.release.set()
    assert first.result == ("r", 1)
    assert rec.batches == [[1]]
    stats = f.stats
    assert (stats.submitted, stats.completed, stats.failed, stats.cancelled) == (2, 1, 0, 1)


async def test_asking_again_while_the_result_is_written_is_not_recomputed() -> None:
    rec = Rec()
    cache = SlowCache(set_delay=0.001)  # any real cache takes some time to write
    async with batched.Batcher(rec, cache=cache, timeout_ms=0) as b:
        assert await b(1) == ("r", 1)
        assert await b(1) == ("r", 1)  # no settle() between: a plain sequential loop
    assert rec.batches == [[1]]


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise ItemBoom("not picklable")


async def test_a_disk_cache_failure_is_counted_once(tmp_path: Path) -> None:
    rec = Rec(out=lambda item: _Unpicklable())
    with real_time(), DiskCache(tmp_path / "cache") as cache:
        async with batched.Batcher(rec, cache=cache) as b:
            assert isinstance(await b(1), _Unpicklable)  # the call does not fail
        stats = b.stats
    assert stats.cache_stats is not None
    assert stats.cache_stats.sets == 0
    assert stats.cache_stats.errors == 1


async def test_an_equal_call_joins_a_running_item_whose_callers_all_left() -> None:
    rec = Rec(hold={1})
    async with (
        batched.Batcher(rec, timeout_ms=0, dedupe=True) as b,
        anyio.create_task_group() as tg,
    ):
        first = await launch(tg, b, 1)
        await rec.running.wait()
        first.scope.cancel()
        await settle()
        later = await launch(tg, b, 1)  # arrives while fn still computes 1
        rec.release.set()
    assert later.result == ("r", 1)
    assert rec.batches == [[1]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sync_acall_cancelled_before_its_bridge_never_reaches_fn(backend: str) -> None:
    entered = threading.Event()
    release = threading.Event()
    seen: list[list[str]] = []

    @batched.dynamically(cache=MemoryCache(8), max_queue_size=4, timeout_ms=0)
    def fn(items: list[str]) -> list[tuple[str, str]]:
        seen.append(list(items))
        if "hold" in items:
            entered.set()
            assert release.wait(JOIN)
        return tag(items)

    async def cancelled_acall() -> None:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await fn.acall("gone")

    try:
        holder = threading.Thread(target=fn, args=("hold",), daemon=True)
        holder.start()
        assert entered.wait(JOIN)  # fn now holds the serving thread's loop
        anyio.run(cancelled_acall, backend=backend)
        release.set()
        holder.join(JOIN)
        results = [fn(f"after {n}", wait=False) for n in range(3)]
        assert results == tag([f"after {n}" for n in range(3)])
    finally:
        release.set()
        close_bounded(fn)
    assert "gone" not in [x for batch in seen for x in batch]
    stats = fn.stats
    assert stats.submitted == settled(stats)
    assert stats.completed == 4


# -- 10. the property --------------------------------------------------------------------


@dataclass
class KeyedPlan:
    arrival_ms: int
    key: int
    cancel_after_ms: int | None


@dataclass
class KeyedScript:
    batch_size: int
    timeout_ms: int
    slots: int
    cache: bool
    dedupe: bool
    durations_ms: list[int]
    calls: list[KeyedPlan]


@st.composite
def keyed_scripts(draw: st.DrawFn) -> KeyedScript:
    cache = draw(st.booleans())
    dedupe = draw(st.booleans()) if cache else True
    calls = draw(
        st.lists(
            st.builds(
                KeyedPlan,
                arrival_ms=st.integers(0, 20),
                key=st.integers(0, 3),
                # Never 0: a cancellation during the cache read is miscounted (see the
                # xfail test above); it is not what this property is about.
                cancel_after_ms=st.none() | st.integers(1, 12),
            ),
            min_size=1,
            max_size=12,
        )
    )
    return KeyedScript(
        batch_size=draw(st.integers(1, 4)),
        timeout_ms=draw(st.integers(0, 5)),
        slots=draw(st.integers(1, 2)),
        cache=cache,
        dedupe=dedupe,
        durations_ms=draw(st.lists(st.integers(0, 6), min_size=1, max_size=4)),
        calls=calls,
    )


def keyed_run(script: KeyedScript, mode: str, backend: str) -> ScheduleResult:
    """Play the script through batched.testing: an open ``Batcher`` (owned) or a
    decorated function called outside ``async with`` (driven), a fresh cache per run."""
    schedule = Schedule(
        [Arrival(p.arrival_ms, (p.key,), cancel_after_ms=p.cancel_after_ms) for p in script.calls]
    )
    durations = script.durations_ms
    outcomes = [BatchOutcome(durations[i % len(durations)]) for i in range(len(script.calls))]

    def front(fn: Any) -> Any:
        settings: dict[str, Any] = {
            "batch_size": script.batch_size,
            "timeout_ms": script.timeout_ms,
            "max_concurrent_batches": script.slots,
            "dedupe": script.dedupe,
            "cache": MemoryCache(64) if script.cache else None,
        }
        if mode == "owned":
            return batched.Batcher(fn, **settings)
        return batched.dynamically(**settings)(fn)

    return run_schedule(front, schedule, backend=backend, outcomes=outcomes)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=max(10, settings().max_examples // 2))
@given(script=keyed_scripts())
def test_keyed_property(backend: str, mode: str, script: KeyedScript) -> None:
    """Random keys, arrivals and cancellations under a cache and/or dedupe: judged by
    batched.testing, which follows every result to the call of fn that computed it."""
    result = keyed_run(script, mode, backend)
    assert result.driven == (mode == "driven")
    check_invariants(result)
