"""Keys, cache reads and cache writes for a batcher with ``cache=`` or dedupe.

A cache is a help, never a dependency: a ``get`` or ``set`` that raises is counted
(``CacheStats.errors``), logged once per batcher, and the item is computed as if there
were no cache. Errors are never cached. A cache is user code, so a cancellation it raises
while its caller is not being cancelled (it awaited something cancelled elsewhere) is such
an error too, as it is from ``fn``: the caller was not cancelled, and must not act so.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

from ._backends import current
from .cache import MISS, CacheStats, DiskCache, MemoryCache

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._core.counts import Counts

__all__ = ["STORE_BOUND_S", "cache_get", "cache_stats", "cache_store", "key_of"]

logger = logging.getLogger("batched")

# How long the writes of one batch may take: its callers (who get their results once
# they are written) and a batcher's exit wait at most this long for them.
STORE_BOUND_S = 10.0


def key_of(item: Any, cache_key: Callable[[Any], Any] | None) -> Any:
    """The item's cache and dedupe key; a TypeError naming ``cache_key`` if unhashable."""
    if cache_key is None:
        key = item
    else:
        try:
            key = cache_key(item)
        except Exception as exc:
            exc.add_note(f"raised by cache_key={cache_key!r} for item {item!r}")
            raise
    try:
        hash(key)
    except TypeError:
        if cache_key is None:
            msg = (
                f"the item {item!r} is not hashable, so it cannot be a cache or dedupe key: "
                f"pass cache_key= (a function from an item to a hashable key)"
            )
        else:
            msg = f"cache_key={cache_key!r} returned an unhashable key {key!r} for {item!r}"
        raise TypeError(msg) from None
    return key


def _not_ours(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancellation that does not cancel the task it reached."""
    return isinstance(exc, anyio.get_cancelled_exc_class()) and not current().cancelling()


def _cache_failed(stats: Counts, what: str, exc: BaseException) -> None:
    stats.cache_errors += 1
    if stats.cache_errors == 1:
        logger.warning(
            "the batcher's cache raised in %s; computing without it (logged once)",
            what,
            exc_info=exc,
        )


async def cache_get(cache: Any, key: Any, stats: Counts) -> Any:
    """The cached value, or ``MISS`` (also for ``None``, and when the cache raised)."""
    try:
        value = await cache.get(key)
    except Exception as exc:
        _cache_failed(stats, "get()", exc)
        return MISS
    except BaseException as exc:
        if not _not_ours(exc):
            raise
        _cache_failed(stats, "get()", exc)
        return MISS
    return MISS if value is None else value


async def cache_store(cache: Any, pairs: list[tuple[Any, Any]], stats: Counts) -> None:
    """Write a batch's results; a bounded wait, so a hung cache cannot hold the batch's
    callers or an exit for long."""
    with anyio.move_on_after(STORE_BOUND_S):
        for key, value in pairs:
            try:
                await cache.set(key, value)
            except Exception as exc:
                _cache_failed(stats, "set()", exc)
            except BaseException as exc:
                if not _not_ours(exc):
                    raise  # the bound, or the batcher closing
                _cache_failed(stats, "set()", exc)


def cache_stats(cache: Any, stats: Counts) -> CacheStats | None:
    """The cache's own counters, plus the errors the batcher counted."""
    if cache is None:
        return None
    try:
        own = cache.stats()
    except Exception:  # a cache whose stats() fails still reports our error count
        own = None
    if not isinstance(own, CacheStats):
        # A seed-style cache (batched.types.CacheStats, or its own): read what it has.
        fields: dict[str, Any] = {}
        for name in ("gets", "hits", "misses", "sets", "errors", "size"):
            value = getattr(own, name, None)
            if name == "misses" and type(value) is not int:
                value = fields["gets"] - fields["hits"]  # the seed counts no misses
            fields[name] = value if type(value) is int else 0
        for name in ("total_get_time", "total_hit_time", "total_set_time"):
            seconds = getattr(own, name, None)
            fields[name] = float(seconds) if isinstance(seconds, int | float) else 0.0
        own = CacheStats(**fields)
    # The shipped caches count the errors they raise themselves.
    errors = (
        own.errors
        if isinstance(cache, MemoryCache | DiskCache)
        else own.errors + stats.cache_errors
    )
    return CacheStats(
        gets=own.gets,
        hits=own.hits,
        misses=own.misses,
        sets=own.sets,
        errors=errors,
        size=own.size,
        total_get_time=own.total_get_time,
        total_hit_time=own.total_hit_time,
        total_set_time=own.total_set_time,
    )
