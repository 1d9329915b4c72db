"""batched.cache: the AsyncCache protocol, MemoryCache (LRU + TTL) and DiskCache."""

from __future__ import annotations

import math
import pickle
import sys
import time
import types
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import pytest
import trio
import trio.testing
from _helpers import Boom
from hypothesis import given
from hypothesis import strategies as st

import batched.cache
from batched.cache import MISS, AsyncCache, CacheStats, DiskCache, MemoryCache, Miss
from batched.testing import fresh_backend_options

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

FALSY = [0, 0.0, "", b"", [], {}, (), None, False]


class Unpicklable:
    def __reduce__(self) -> Any:
        raise Boom


# --- MISS and CacheStats ----------------------------------------------------------------


def test_miss_is_a_singleton_with_a_public_repr() -> None:
    assert repr(MISS) == "batched.cache.MISS"
    assert pickle.loads(pickle.dumps(MISS)) is MISS
    assert MISS is batched.cache.MISS
    assert sorted(batched.cache.__all__) == sorted(
        ["MISS", "AsyncCache", "CacheStats", "DiskCache", "MemoryCache", "Miss"]
    )


def test_cache_stats_is_a_frozen_snapshot_with_a_hit_rate() -> None:
    stats = CacheStats()
    assert attrs.has(type(stats))
    assert attrs.astuple(stats) == (0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0)
    assert stats.hit_rate == 0.0
    assert (stats.avg_get_time, stats.avg_hit_time, stats.avg_set_time) == (0.0, 0.0, 0.0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.hits = 1  # type: ignore[misc]
    assert CacheStats(gets=4, hits=3, misses=1).hit_rate == 0.75
    # The seed's timing figures: seconds in total, and their averages.
    timed = CacheStats(
        gets=4, hits=2, sets=5, total_get_time=2.0, total_hit_time=0.5, total_set_time=1.0
    )
    assert (timed.avg_get_time, timed.avg_hit_time, timed.avg_set_time) == (0.5, 0.25, 0.2)


# --- MemoryCache: LRU -------------------------------------------------------------------


async def test_absent_key_is_a_miss() -> None:
    cache: MemoryCache[str, int] = MemoryCache(2)
    assert await cache.get("absent") is MISS
    assert cache.stats() == CacheStats(gets=1, misses=1)


async def test_lru_evicts_the_least_recently_used_and_get_refreshes() -> None:
    cache: MemoryCache[str, int] = MemoryCache(3)
    for i, key in enumerate("abc"):
        await cache.set(key, i)
    assert await cache.get("a") == 0  # now "b" is the least recently used
    await cache.set("d", 3)
    assert await cache.get("b") is MISS
    assert [await cache.get(key) for key in "acd"] == [0, 2, 3]
    await cache.set("e", 4)  # reading a, c, d in turn left "a" the least recent
    assert await cache.get("a") is MISS
    assert [await cache.get(key) for key in "cde"] == [2, 3, 4]


async def test_set_on_a_held_key_replaces_it_without_evicting() -> None:
    cache: MemoryCache[str, str] = MemoryCache(2)
    await cache.set("a", "old")
    await cache.set("b", "b")
    await cache.set("a", "new")  # refreshes "a": "b" is now the least recent
    assert len(cache) == 2
    await cache.set("c", "c")
    assert await cache.get("b") is MISS
    assert await cache.get("a") == "new"
    assert await cache.get("c") == "c"


async def test_maxsize_bounds_the_entries() -> None:
    cache: MemoryCache[int, int] = MemoryCache(4)
    for i in range(10):
        await cache.set(i, i * i)
        assert len(cache) == min(i + 1, 4)
    assert [await cache.get(i) for i in range(10)] == [MISS] * 6 + [36, 49, 64, 81]
    assert cache.stats().size == 4


async def test_maxsize_one_keeps_the_last_key() -> None:
    cache: MemoryCache[str, int] = MemoryCache(1)
    await cache.set("a", 1)
    await cache.set("b", 2)
    assert (await cache.get("a"), await cache.get("b")) == (MISS, 2)


@pytest.mark.parametrize("value", FALSY, ids=repr)
async def test_falsy_values_are_stored_and_hit(value: object) -> None:
    cache: MemoryCache[str, object] = MemoryCache(2)
    await cache.set("k", value)
    got = await cache.get("k")
    assert got is value
    assert cache.stats() == CacheStats(gets=1, hits=1, sets=1, size=1)


async def test_an_empty_cache_is_falsy_but_still_a_cache() -> None:
    # The batcher must test `cache is None`, never `if cache:`.
    cache: MemoryCache[str, int] = MemoryCache(1)
    assert len(cache) == 0
    assert not cache
    assert isinstance(cache, AsyncCache)


# --- MemoryCache: TTL on the anyio clock ------------------------------------------------


@pytest.mark.virtual_time
async def test_ttl_expires_on_the_anyio_clock() -> None:
    cache: MemoryCache[str, str] = MemoryCache(4, ttl=60)
    start = anyio.current_time()
    await cache.set("k", "v")
    await anyio.sleep(59.999)
    assert await cache.get("k") == "v"  # a read does not extend the deadline
    await anyio.sleep(0.002)
    assert anyio.current_time() - start >= 60
    assert await cache.get("k") is MISS
    assert len(cache) == 0  # the expired entry was dropped when read
    assert cache.stats() == CacheStats(gets=2, hits=1, misses=1, sets=1, size=0)


@pytest.mark.virtual_time
async def test_ttl_expires_exactly_at_the_deadline() -> None:
    cache: MemoryCache[str, str] = MemoryCache(4, ttl=8)  # a power of two: exact sums
    await cache.set("k", "v")
    await anyio.sleep(8)
    assert await cache.get("k") is MISS


@pytest.mark.virtual_time
async def test_set_again_restarts_the_ttl() -> None:
    cache: MemoryCache[str, int] = MemoryCache(4, ttl=10)
    await cache.set("k", 1)
    await anyio.sleep(9)
    await cache.set("k", 2)
    await anyio.sleep(9)
    assert await cache.get("k") == 2
    await anyio.sleep(1)
    assert await cache.get("k") is MISS


@pytest.mark.virtual_time
async def test_without_ttl_entries_never_expire() -> None:
    cache: MemoryCache[str, int] = MemoryCache(4)
    await cache.set("k", 1)
    await anyio.sleep(30 * 86400)
    assert await cache.get("k") == 1


# --- MemoryCache: counters, clear, errors, cancellation ---------------------------------


async def test_stats_count_exactly() -> None:
    cache: MemoryCache[Any, int] = MemoryCache(2)
    await cache.set("a", 1)
    await cache.set("a", 2)
    await cache.set("b", 3)
    await cache.set("c", 4)  # evicts "a"
    results = [await cache.get(key) for key in ("a", "b", "c", "c", "z")]
    assert results == [MISS, 3, 4, 4, MISS]
    with pytest.raises(TypeError):
        await cache.get(["unhashable"])
    with pytest.raises(TypeError):
        await cache.set({"unhashable": 1}, 1)
    stats = cache.stats()
    assert stats == CacheStats(gets=5, hits=3, misses=2, sets=4, errors=2, size=2)
    assert stats.hit_rate == 0.6


async def test_clear_empties_and_keeps_counting() -> None:
    cache: MemoryCache[int, int] = MemoryCache(8)
    for i in range(5):
        await cache.set(i, i)
    assert await cache.get(0) == 0
    await cache.clear()
    assert len(cache) == 0
    assert await cache.get(0) is MISS
    assert cache.stats() == CacheStats(gets=2, hits=1, misses=1, sets=5, size=0)
    await cache.set(0, 7)  # usable after clear
    assert await cache.get(0) == 7


async def test_a_cancelled_call_changes_nothing() -> None:
    cache: MemoryCache[str, int] = MemoryCache(2)
    await cache.set("a", 1)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await cache.set("b", 2)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await cache.get("a")
    with anyio.CancelScope() as scope:
        scope.cancel()
        await cache.clear()
    assert cache.stats() == CacheStats(sets=1, size=1)


def test_every_async_method_is_a_checkpoint() -> None:
    cache: MemoryCache[str, int] = MemoryCache(1, ttl=5)

    async def main() -> None:
        with trio.testing.assert_checkpoints():
            await cache.get("k")  # miss
        with trio.testing.assert_checkpoints():
            await cache.set("k", 1)
        with trio.testing.assert_checkpoints():
            await cache.get("k")  # hit
        with trio.testing.assert_checkpoints():
            await cache.clear()

    trio.run(main)
    assert cache.stats() == CacheStats(gets=2, hits=1, misses=1, sets=1)


def test_one_cache_serves_asyncio_then_trio() -> None:
    # Nothing loop-bound is made in __init__ or kept between calls.
    cache: MemoryCache[str, str] = MemoryCache(4)

    async def use(backend: str) -> object:
        await cache.set(backend, backend)
        return await cache.get("asyncio")

    for backend in ("asyncio", "trio"):
        got = anyio.run(
            use, backend, backend=backend, backend_options=fresh_backend_options(backend)
        )
        assert got == "asyncio"
    assert len(cache) == 2


def test_memory_cache_repr() -> None:
    assert repr(MemoryCache(3)) == "MemoryCache(maxsize=3, ttl=None)"
    assert repr(MemoryCache(3, ttl=2)) == "MemoryCache(maxsize=3, ttl=2.0)"


# --- settings validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("maxsize", "error", "message"),
    [
        (0, ValueError, "'maxsize' must be >= 1: 0"),
        (-3, ValueError, "'maxsize' must be >= 1: -3"),
        (True, TypeError, "'maxsize' must be an int: True"),
        (1.5, TypeError, "'maxsize' must be an int: 1.5"),
        ("3", TypeError, "'maxsize' must be an int: '3'"),
        (None, TypeError, "'maxsize' must be an int: None"),
    ],
)
def test_maxsize_is_validated(maxsize: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        MemoryCache(maxsize)
    assert str(info.value) == message


BAD_TTLS = [
    (0, ValueError, "'ttl' must be a finite number > 0 or None: 0"),
    (-1.5, ValueError, "'ttl' must be a finite number > 0 or None: -1.5"),
    (math.nan, ValueError, "'ttl' must be a finite number > 0 or None: nan"),
    (math.inf, ValueError, "'ttl' must be a finite number > 0 or None: inf"),
    (True, TypeError, "'ttl' must be a number of seconds or None: True"),
    ("5", TypeError, "'ttl' must be a number of seconds or None: '5'"),
]


@pytest.mark.parametrize(("ttl", "error", "message"), BAD_TTLS)
def test_ttl_is_validated(ttl: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        MemoryCache(4, ttl=ttl)
    assert str(info.value) == message


@pytest.mark.parametrize(("ttl", "error", "message"), BAD_TTLS)
def test_disk_cache_ttl_is_validated(
    tmp_path: Path, ttl: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        DiskCache(tmp_path, ttl=ttl)
    assert str(info.value) == message
    assert not any(tmp_path.iterdir())  # validated before anything was opened


def test_an_index_like_maxsize_is_accepted() -> None:
    class Four:
        def __index__(self) -> int:
            return 4

    assert repr(MemoryCache(Four())) == "MemoryCache(maxsize=4, ttl=None)"  # type: ignore[arg-type]


# --- the AsyncCache protocol ------------------------------------------------------------


class UserCache:
    """A minimal cache a user might write: a dict, no eviction."""

    def __init__(self) -> None:
        self.data: dict[str, int] = {}

    async def get(self, key: str) -> int | Miss:
        await anyio.lowlevel.checkpoint()
        return self.data.get(key, MISS)

    async def set(self, key: str, value: int) -> None:
        await anyio.lowlevel.checkpoint()
        self.data[key] = value

    async def clear(self) -> None:
        self.data.clear()

    def stats(self) -> CacheStats:
        return CacheStats(size=len(self.data))


class NullSeedCache:
    """A cache written for mixedbread's batched: `get` returns None on a miss."""

    async def get(self, key: str) -> int | None:
        return None

    async def set(self, key: str, value: int) -> None:
        pass

    async def clear(self) -> None:
        pass

    def stats(self) -> CacheStats:
        return CacheStats()


class NoSet:
    async def get(self, key: str) -> int | Miss:
        return MISS

    async def clear(self) -> None:
        pass

    def stats(self) -> CacheStats:
        return CacheStats()


def test_runtime_protocol_check(tmp_path: Path) -> None:
    with DiskCache[str, int](tmp_path) as disk:
        assert isinstance(disk, AsyncCache)
    assert isinstance(MemoryCache(1), AsyncCache)
    assert isinstance(UserCache(), AsyncCache)
    assert isinstance(NullSeedCache(), AsyncCache)
    assert not isinstance(NoSet(), AsyncCache)
    assert not isinstance({}, AsyncCache)


async def test_a_user_cache_works_through_the_protocol() -> None:
    cache: AsyncCache[str, int] = UserCache()
    assert await cache.get("k") is MISS
    await cache.set("k", 0)
    assert await cache.get("k") == 0
    assert cache.stats().size == 1


# --- DiskCache --------------------------------------------------------------------------

DISK_ITEMS: list[tuple[Any, Any]] = [
    ("dict", {"a": [1, 2], "b": {"c": None}}),
    ("zero", 0),
    ("empty", ""),
    ("none", None),
    (7, [1.5, "two", b"three"]),
    (2.5, (1, 2)),
    (("tuple", 1), {1, 2, 3}),
    (b"bytes", b"\x00" * 5000),  # over diskcache's default min_file_size: stored in a file
    ("big", "x" * 100_000),
]


def counters(stats: CacheStats) -> CacheStats:
    """``stats`` without its timing figures: a DiskCache times its operations by the clock,
    which moves on asyncio+uvloop (real time)."""
    return attrs.evolve(stats, total_get_time=0.0, total_hit_time=0.0, total_set_time=0.0)


async def test_disk_cache_round_trips_values(tmp_path: Path) -> None:
    with DiskCache[Any, Any](tmp_path) as cache:
        assert await cache.get("dict") is MISS
        for key, value in DISK_ITEMS:
            await cache.set(key, value)
        for key, value in DISK_ITEMS:
            got = await cache.get(key)
            assert got == value
            assert type(got) is type(value)
        n = len(DISK_ITEMS)
        assert counters(cache.stats()) == CacheStats(gets=n + 1, hits=n, misses=1, sets=n, size=n)
        assert cache.directory == str(tmp_path)


async def test_disk_cache_persists_across_instances(tmp_path: Path) -> None:
    with DiskCache[str, Any](tmp_path) as first:
        await first.set("kept", {"v": 0})
        await first.set("zero", 0)
    with DiskCache[str, Any](tmp_path) as second:
        assert second.stats() == CacheStats(size=2)  # counters are per instance
        assert await second.get("kept") == {"v": 0}
        assert await second.get("zero") == 0
        assert await second.get("other") is MISS


async def test_disk_cache_clear_and_replace(tmp_path: Path) -> None:
    cache: DiskCache[str, int] = DiskCache(tmp_path)
    try:
        await cache.set("a", 1)
        await cache.set("a", 2)
        await cache.set("b", 3)
        assert cache.stats().size == 2
        assert await cache.get("a") == 2
        await cache.clear()
        assert await cache.get("a") is MISS
        assert counters(cache.stats()) == CacheStats(gets=2, hits=1, misses=1, sets=3, size=0)
    finally:
        await cache.aclose()
    reopened: DiskCache[str, int] = DiskCache(tmp_path)
    assert reopened.stats().size == 0
    reopened.close()


async def test_disk_cache_counts_errors_and_raises_them(tmp_path: Path) -> None:
    with DiskCache[str, Any](tmp_path) as cache:
        with pytest.raises(Boom):
            await cache.set("k", Unpicklable())
        with pytest.raises(Boom):
            await cache.get(Unpicklable())  # type: ignore[arg-type]  # an unpicklable key
        assert await cache.get("k") is MISS
        assert counters(cache.stats()) == CacheStats(gets=1, misses=1, errors=2)


async def test_disk_cache_ttl_is_diskcache_expire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diskcache
    import diskcache.core

    with DiskCache[str, str](tmp_path, ttl=60) as cache:
        before = time.time()
        await cache.set("k", "v")
        after = time.time()
        with DiskCache[str, str](tmp_path) as plain:
            await plain.set("forever", "v")
        # diskcache's own view of the directory: the entry expires 60 s of wall clock
        # after it was set.
        with diskcache.Cache(cache.directory) as raw:
            _, expire_time = raw.get("k", expire_time=True)
        assert before + 60 <= expire_time <= after + 60
        assert await cache.get("k") == "v"
        # Move diskcache's wall clock past the deadline instead of sleeping for it.
        later = types.SimpleNamespace(time=lambda: after + 61, sleep=time.sleep)
        monkeypatch.setattr(diskcache.core, "time", later)
        assert await cache.get("k") is MISS
        assert await cache.get("forever") == "v"


def test_disk_cache_passes_settings_to_diskcache(tmp_path: Path) -> None:
    import diskcache

    with DiskCache[str, int](
        tmp_path, size_limit=2**20, eviction_policy="least-frequently-used"
    ) as cache:
        # diskcache keeps its settings in the directory: a plain diskcache.Cache reads them.
        with diskcache.Cache(cache.directory) as raw:
            assert raw.size_limit == 2**20
            assert raw.eviction_policy == "least-frequently-used"
        assert repr(cache) == f"DiskCache({str(tmp_path)!r}, ttl=None)"


def test_disk_cache_without_diskcache_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "diskcache", None)  # makes `import diskcache` fail
    with pytest.raises(ImportError, match=r"pip install 'batched-anyio\[disk\]'"):
        DiskCache(tmp_path)


# --- property: MemoryCache behaves like a reference LRU ---------------------------------


class ReferenceLru:
    """The obvious LRU: a recency list and a dict, O(n) per operation."""

    def __init__(self, maxsize: int, ttl: float | None) -> None:
        self.maxsize = maxsize
        self.ttl = ttl
        self.order: list[int] = []  # least recently used first
        self.entries: dict[int, tuple[int, float]] = {}
        self.hits = self.misses = self.sets = 0

    def get(self, key: int, now: float) -> int | Miss:
        if key not in self.entries:
            self.misses += 1
            return MISS
        value, expiry = self.entries[key]
        self.order.remove(key)
        if now >= expiry:
            del self.entries[key]
            self.misses += 1
            return MISS
        self.order.append(key)
        self.hits += 1
        return value

    def set(self, key: int, value: int, now: float) -> None:
        if key in self.entries:
            self.order.remove(key)
        elif len(self.entries) == self.maxsize:
            del self.entries[self.order.pop(0)]
        self.order.append(key)
        self.entries[key] = (value, math.inf if self.ttl is None else now + self.ttl)
        self.sets += 1


# Few keys against a small maxsize, so that evictions and re-reads are common; sleeps
# rarer than reads and writes, so that a TTL does not empty the cache every few steps.
KEYS = st.integers(0, 4)
GET = st.tuples(st.just("get"), KEYS, st.just(0))
SET = st.tuples(st.just("set"), KEYS, st.integers(-2, 2))
SLEEP = st.tuples(st.just("sleep"), st.just(0), st.integers(1, 3))
OPS = st.lists(st.one_of(GET, SET, GET, SET, SLEEP), min_size=10, max_size=60)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@given(
    maxsize=st.integers(1, 3),
    ttl=st.sampled_from([None, None, 4, 7.5]),
    ops=OPS,
)
def test_memory_cache_matches_a_reference_lru(
    backend: str, maxsize: int, ttl: float | None, ops: list[tuple[str, int, int]]
) -> None:
    async def script() -> None:
        cache: MemoryCache[int, int] = MemoryCache(maxsize, ttl=ttl)
        model = ReferenceLru(maxsize, ttl)
        for i, (op, key, arg) in enumerate(ops):
            # Both read the same virtual clock: checkpoints do not move it.
            now = anyio.current_time()
            if op == "get":
                assert await cache.get(key) == model.get(key, now), (i, op, key)
            elif op == "set":
                await cache.set(key, arg)
                model.set(key, arg, now)
            else:
                await anyio.sleep(arg)
            assert len(cache) == len(model.entries), i
        # The final contents: every key the model holds, then every key there is.
        now = anyio.current_time()
        for key in [*model.order, *range(5)]:
            assert await cache.get(key) == model.get(key, now), key
        stats = cache.stats()
        assert (stats.hits, stats.misses, stats.sets, stats.errors) == (
            model.hits,
            model.misses,
            model.sets,
            0,
        )
        assert stats.gets == stats.hits + stats.misses
        assert stats.size == len(model.entries) == len(cache)

    anyio.run(script, backend=backend, backend_options=fresh_backend_options(backend))
