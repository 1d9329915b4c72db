"""Caches a batcher can consult before it batches an item, and the protocol they share.

A cache maps a key (``cache_key(item)``, by default the item) to the batch function's
result for that item. :class:`MemoryCache` is an in-process LRU; :class:`DiskCache`
keeps results in a directory through the ``diskcache`` package (the ``disk`` extra).
Any object with the four methods of :class:`AsyncCache` works as well.
"""

from __future__ import annotations

import enum
import math
import operator
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Generic,
    Literal,
    Protocol,
    TypeAlias,
    TypeVar,
    TypeVarTuple,
    cast,
    final,
    runtime_checkable,
)

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs

if TYPE_CHECKING:
    from types import TracebackType

    from .types import CacheStats as SeedCacheStats

__all__ = ["MISS", "AsyncCache", "CacheStats", "DiskCache", "MemoryCache", "Miss"]


class _Miss(enum.Enum):
    MISS = "MISS"

    def __repr__(self) -> str:
        return "batched.cache.MISS"


MISS: Final = _Miss.MISS
"""What :meth:`AsyncCache.get` returns for a key it does not hold."""

Miss: TypeAlias = Literal[_Miss.MISS]
"""The type of :data:`MISS`, for annotations: ``async def get(self, key) -> V | Miss``."""

K = TypeVar("K")
V = TypeVar("V")
HK = TypeVar("HK", bound=Hashable)
K_contra = TypeVar("K_contra", contravariant=True)
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@final
@attrs.frozen
class CacheStats:
    """A snapshot of one cache's counters.

    ``gets = hits + misses`` counts lookups that returned; ``errors`` counts operations
    that raised; ``size`` is the number of entries held when the snapshot was taken.
    The timing figures of mixedbread's ``batched`` are kept too: seconds spent in ``get``
    (``total_hit_time`` for the lookups that hit) and in ``set``, and their averages. A
    cache that does not time its operations (:class:`MemoryCache`) leaves them at 0.0.
    """

    gets: int = 0
    hits: int = 0
    misses: int = 0
    sets: int = 0
    errors: int = 0
    size: int = 0
    total_get_time: float = 0.0
    total_hit_time: float = 0.0
    total_set_time: float = 0.0

    @property
    def hit_rate(self) -> float:
        """``hits / gets``, or 0.0 before the first lookup."""
        return self.hits / self.gets if self.gets else 0.0

    @property
    def avg_get_time(self) -> float:
        """Seconds per lookup, or 0.0 before the first."""
        return self.total_get_time / self.gets if self.gets else 0.0

    @property
    def avg_hit_time(self) -> float:
        """Seconds per lookup that hit, or 0.0 before the first."""
        return self.total_hit_time / self.hits if self.hits else 0.0

    @property
    def avg_set_time(self) -> float:
        """Seconds per store, or 0.0 before the first."""
        return self.total_set_time / self.sets if self.sets else 0.0


@runtime_checkable
class AsyncCache(Protocol[K_contra, V]):
    """What a batcher needs from a cache.

    ``isinstance(obj, AsyncCache)`` checks only that the four methods exist. A batcher
    never truth-tests its cache, so a cache may define ``__len__``.
    """

    async def get(self, key: K_contra) -> V | Miss:
        """Return the value stored for ``key``, or :data:`MISS`.

        A batcher also reads ``None`` as a miss, so caches written for mixedbread's
        ``batched`` keep working; a ``None`` result is then recomputed every time.
        """

    async def set(self, key: K_contra, value: V) -> None:
        """Store ``value`` for ``key``, replacing any earlier value."""

    async def clear(self) -> None:
        """Remove every entry."""

    def stats(self) -> CacheStats | SeedCacheStats:
        """Return a snapshot of the counters (a cache written for mixedbread's
        ``batched`` may return its ``batched.types.CacheStats``: a batcher reads it)."""


def _check_maxsize(value: object) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError  # a bool is an int to operator.index, not a size
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        msg = f"'maxsize' must be an int: {value!r}"
        raise TypeError(msg) from None
    if number < 1:
        msg = f"'maxsize' must be >= 1: {value!r}"
        raise ValueError(msg)
    return number


def _check_ttl(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"'ttl' must be a number of seconds or None: {value!r}"
        raise TypeError(msg)
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        msg = f"'ttl' must be a finite number > 0 or None: {value!r}"
        raise ValueError(msg)
    return number


@final
class MemoryCache(Generic[HK, V]):
    """An in-memory LRU cache: when full, a new key evicts the least recently used one.

    Entries expire ``ttl`` seconds after they were set, on the anyio clock (so virtual
    clocks in tests apply); an expired entry reads as a miss and is dropped then, and
    counts towards ``size`` until read or evicted. Every value is stored, falsy ones
    included. Holds no loop-bound state: usable from asyncio and trio, one thread at a time.

    :param maxsize: the most entries held (an int >= 1)
    :param ttl: seconds an entry lives, or ``None`` for no expiry
    :raises TypeError: if a setting has the wrong type
    :raises ValueError: if a setting is out of range
    """

    __slots__ = ("_data", "_errors", "_gets", "_hits", "_maxsize", "_sets", "_ttl")

    def __init__(self, maxsize: int, ttl: float | None = None) -> None:
        self._maxsize = _check_maxsize(maxsize)
        self._ttl = _check_ttl(ttl)
        # key -> (value, expiry time); ordered from least to most recently used.
        self._data: OrderedDict[HK, tuple[V, float]] = OrderedDict()
        self._gets = self._hits = self._sets = self._errors = 0

    def __repr__(self) -> str:
        return f"MemoryCache(maxsize={self._maxsize}, ttl={self._ttl})"

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: HK) -> V | Miss:
        """Return the value for ``key`` and mark it most recently used, or :data:`MISS`."""
        # Checkpoint first: a cancelled get leaves the cache and its counters untouched.
        await anyio.lowlevel.checkpoint()
        data = self._data
        try:
            entry = data.get(key)
        except Exception:  # an unhashable key
            self._errors += 1
            raise
        self._gets += 1
        if entry is None:
            return MISS
        if self._ttl is not None and anyio.current_time() >= entry[1]:
            del data[key]
            return MISS
        data.move_to_end(key)
        self._hits += 1
        return entry[0]

    async def set(self, key: HK, value: V) -> None:
        """Store ``value`` for ``key`` as most recently used, evicting the least recent."""
        await anyio.lowlevel.checkpoint()
        data = self._data
        expiry = math.inf if self._ttl is None else anyio.current_time() + self._ttl
        try:
            if key in data:
                data.move_to_end(key)
            elif len(data) >= self._maxsize:
                data.popitem(last=False)
        except Exception:  # an unhashable key
            self._errors += 1
            raise
        data[key] = (value, expiry)
        self._sets += 1

    async def clear(self) -> None:
        """Remove every entry; the counters keep counting."""
        await anyio.lowlevel.checkpoint()
        self._data.clear()

    def stats(self) -> CacheStats:
        """Return a snapshot of the counters."""
        hits = self._hits
        return CacheStats(
            gets=self._gets,
            hits=hits,
            misses=self._gets - hits,
            sets=self._sets,
            errors=self._errors,
            size=len(self._data),
        )


_ABSENT = object()  # diskcache's default for a missing key; a stored None is a value


@final
class DiskCache(Generic[K, V]):
    """A persistent cache in a directory, on ``diskcache.Cache``
    (``pip install 'batched-anyio[disk]'``).

    Values are pickled; keys are stored as is when they are str, bytes, int or float, and
    pickled otherwise, so use keys whose pickles are stable. Every disk operation runs in
    a worker thread. Entries expire ``ttl`` seconds after they were set, on the wall clock
    (diskcache's ``expire``), not the anyio clock. ``size`` counts expired entries until
    diskcache culls them, and entries other processes add once this one next writes.

    Opening happens here, in the calling thread. Worker threads keep their own SQLite
    connections (diskcache's design) until they exit; :meth:`close` closes the calling
    thread's. Usable as a context manager: ``with DiskCache(path) as cache: ...``.

    :param directory: the cache directory, created if needed
    :param ttl: seconds an entry lives, or ``None`` for no expiry
    :param settings: passed on to ``diskcache.Cache`` (``size_limit``, ``timeout``, ...)
    :raises ImportError: if ``diskcache`` is not installed
    """

    __slots__ = ("_cache", "_errors", "_gets", "_hits", "_sets", "_size", "_times", "_ttl")

    def __init__(
        self, directory: str | os.PathLike[str], *, ttl: float | None = None, **settings: Any
    ) -> None:
        self._ttl = _check_ttl(ttl)
        try:
            import diskcache
        except ImportError as exc:
            msg = "DiskCache needs the diskcache package: pip install 'batched-anyio[disk]'"
            raise ImportError(msg) from exc
        self._cache: Any = diskcache.Cache(os.fspath(directory), **settings)
        self._size: int = len(self._cache)
        self._gets = self._hits = self._sets = self._errors = 0
        self._times = [0.0, 0.0, 0.0]  # seconds in get, in gets that hit, in set

    def __repr__(self) -> str:
        return f"DiskCache({self._cache.directory!r}, ttl={self._ttl})"

    @property
    def directory(self) -> str:
        """The cache directory."""
        return str(self._cache.directory)

    async def _run(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except Exception:
            self._errors += 1
            raise

    def _get_sync(self, key: K) -> object:
        return self._cache.get(key, default=_ABSENT)

    def _set_sync(self, key: K, value: V) -> int:
        self._cache.set(key, value, expire=self._ttl)
        return len(self._cache)

    def _clear_sync(self) -> int:
        self._cache.clear()
        return len(self._cache)

    async def get(self, key: K) -> V | Miss:
        """Return the value for ``key``, or :data:`MISS` if absent or expired."""
        # Timed by the process's clock, not the loop's: uvloop's keeps whole milliseconds
        # (a quick lookup took 0.0), and a virtual clock is not the time a disk took.
        start = time.perf_counter()
        value = await self._run(self._get_sync, key)
        # Counted here, in the event loop's thread, so counters need no lock.
        took = time.perf_counter() - start
        times = self._times
        times[0] += took
        self._gets += 1
        if value is _ABSENT:
            return MISS
        times[1] += took
        self._hits += 1
        return cast("V", value)

    async def set(self, key: K, value: V) -> None:
        """Store ``value`` for ``key``, expiring after ``ttl`` seconds if set."""
        start = time.perf_counter()
        self._size = await self._run(self._set_sync, key, value)
        self._times[2] += time.perf_counter() - start
        self._sets += 1

    async def clear(self) -> None:
        """Remove every entry; the counters keep counting."""
        self._size = await self._run(self._clear_sync)

    def stats(self) -> CacheStats:
        """Return a snapshot of the counters."""
        hits = self._hits
        return CacheStats(
            gets=self._gets,
            hits=hits,
            misses=self._gets - hits,
            sets=self._sets,
            errors=self._errors,
            size=self._size,
            total_get_time=self._times[0],
            total_hit_time=self._times[1],
            total_set_time=self._times[2],
        )

    def close(self) -> None:
        """Close the calling thread's database connection (blocks on disk I/O)."""
        self._cache.close()

    async def aclose(self) -> None:
        """:meth:`close` for async code: closes the event loop thread's connection."""
        # Not in a worker thread: diskcache closes only the calling thread's connection,
        # and the one __init__ opened usually belongs to this thread.
        self.close()
        await anyio.lowlevel.checkpoint()

    def __enter__(self) -> DiskCache[K, V]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
