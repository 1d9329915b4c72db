"""The one submit path every front uses: build a call, check it, queue it.

A front (``Batcher``, a decorated function, a sync function, the seed's processors)
finds the driver that serves this call — a :class:`Run` — and hands it the item.
A call of one item takes ``Core.call_one``, the per-item path; a call of many items
:func:`submit_many`. With a cache or dedupe, :func:`keyed_one` and :func:`keyed_many`
wrap the same path:
a cache hit is answered at once, an equal key waiting or running is joined, and only
a new key is queued (as a ``SharedCall`` whose callers each wait on a call of their own).
"""

from __future__ import annotations

from contextvars import copy_context
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import anyio
import anyio.lowlevel

from .._core.calls import DONE, INTAKE, QUEUED, SharedCall
from .._core.items import check_priority, length_of
from .._core.queue import STOPPED
from .._errors import BatcherClosed
from .._keyed import cache_get, key_of
from .._strategies import Entry
from ..cache import MISS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .._core.calls import CallCore
    from .._core.counts import Counts
    from .._core.queue import Core
    from .._settings import Settings

__all__ = [
    "Run",
    "keyed_many",
    "keyed_one",
    "raise_later",
    "submit_many",
]


class Run(Protocol):
    """A driver as the submit path sees it."""

    core: Core

    def new_call(self) -> CallCore:
        """A call of this driver's kind (awaited directly, or parked on)."""

    def result(self, call: CallCore) -> Awaitable[Any]:
        """Wait for the call; its outcome (the result, or its error raised)."""

    def release(self) -> None:
        """A caller is done with the driver (the caller-driven one may drop it)."""


async def raise_later(exc: BaseException) -> NoReturn:
    """Raise ``exc`` when awaited: a call refused when it was made fails where it is
    awaited (in the task that awaits it, also for ``start_soon``)."""
    raise exc


def closed(run: Run | None) -> BatcherClosed:
    if run is None:
        return BatcherClosed("the batcher is not open: call it inside `async with`")
    return BatcherClosed(STOPPED if run.core.stopped else "the batcher is closed")


def submit_many(run: Run, items: list[Any], priority: float, wait: bool) -> CallCore:
    """Queue one call of several items (one wake-up for all of them)."""
    core = run.core
    n = len(items)
    if not core.accepting:
        core.counts.refused_anywhere(n)
        raise closed(run)
    try:
        if type(priority) is not int:
            priority = check_priority(priority)
        length_fn = core.length_fn
        if length_fn is None:
            entries = [Entry(item, 1, priority) for item in items]
        else:
            entries = [Entry(item, length_of(length_fn, item), priority) for item in items]
    except BaseException:
        core.counts.refused_anywhere(n)
        raise
    call = run.new_call()
    call.core = core
    call.item = None
    call.state = QUEUED
    call._pool = INTAKE
    call.ctx = copy_context()
    call.init_many(entries)
    core.submit(call, wait)
    return call


# -- with a cache or dedupe ------------------------------------------------------------------


def _subscribe(
    run: Run,
    item: Any,
    key: Any,
    length: int,
    priority: float,
    wait: bool,
    settings: Settings,
    counted: bool,
) -> CallCore:
    """A keyed caller's call: it joins the equal item waiting or running, or sends a new
    one. The shared item lives on while any of its callers waits. A call that is not
    ``counted`` is part of a larger call, which counts its items itself."""
    core = run.core
    inflight = core.inflight
    shared = inflight.get(key) if inflight is not None else None
    call = run.new_call()
    call.core = core
    call.item = item
    call.state = QUEUED
    call._pool = INTAKE
    call.ctx = copy_context()
    if not counted:
        call.n = 0
    if shared is None or shared.state > QUEUED:  # waiting for room or queued: join it
        shared = SharedCall(core, item, length, priority, key, inflight)
        shared.ctx = call.ctx  # a batch sees its first caller's
        core.submit(shared, wait)
        if inflight is not None:
            inflight[key] = shared
    call.shared = shared
    shared.subscribers[call] = None
    return call


def _count_refused(counts: Counts, exc: BaseException, n: int) -> None:
    """A keyed call that ends before it is queued: cancelled, rejected or failed."""
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        counts.left_early(n)
    elif isinstance(exc, anyio.WouldBlock):
        counts.rejected_now(n)
    else:
        counts.refused_anywhere(n)


async def keyed_one(
    counts: Counts,
    open_run: Callable[[], Run],
    item: Any,
    priority: float,
    wait: bool,
    settings: Settings,
) -> Any:
    """One call under a cache or dedupe: a hit at once, else join or send the keyed item.

    ``open_run`` gives the driver to use (or raises ``BatcherClosed``); it is asked
    again after the cache read, which may have taken a while.
    """
    run: Run | None = None
    try:
        if type(priority) is not int:
            priority = check_priority(priority)
        key = key_of(item, settings.cache_key)
        if settings.cache is not None:
            open_run().release()  # a closed batcher refuses before reading the cache
            value = await cache_get(settings.cache, key, counts)
            if value is not MISS:
                counts.served(1)
                return value
        length = 1 if settings.length_fn is None else length_of(settings.length_fn, item)
        run = open_run()
        call = _subscribe(run, item, key, length, priority, wait, settings, counted=True)
    except BaseException as exc:
        _count_refused(counts, exc, 1)
        if run is not None:
            run.release()
        raise
    counts.submitted += 1  # its outcome is counted by the call, when it is settled
    return await run.result(call)


async def keyed_many(
    counts: Counts,
    open_run: Callable[[], Run],
    items: list[Any],
    priority: float,
    wait: bool,
    settings: Settings,
) -> list[Any]:
    """``many`` under a cache or dedupe: every item keyed alone, all sent before waiting.

    Its items are counted together, as one call's: its keyed parts count nothing.
    """
    n = len(items)
    calls: list[CallCore | None] = [None] * n
    results: list[Any] = [MISS] * n
    run: Run | None = None
    try:
        if type(priority) is not int:
            priority = check_priority(priority)
        open_run().release()  # a closed batcher refuses before reading the cache
        if not items:
            await anyio.lowlevel.checkpoint()
            return []
        keys = [key_of(item, settings.cache_key) for item in items]
        if settings.cache is not None:
            for index, key in enumerate(keys):
                results[index] = await cache_get(settings.cache, key, counts)
        run = open_run()
        for index, item in enumerate(items):
            if results[index] is MISS:
                length = 1 if settings.length_fn is None else length_of(settings.length_fn, item)
                calls[index] = _subscribe(
                    run, item, keys[index], length, priority, wait, settings, counted=False
                )
    except BaseException as exc:
        if run is not None:
            for call in calls:
                if call is not None:
                    run.core.abandon(call)
            run.release()
        _count_refused(counts, exc, n)
        raise
    counts.submitted += n
    parts = [call for call in calls if call is not None]
    try:
        for call in parts:
            if call.state != DONE:
                await _settled(run, call)
    except BaseException:
        for call in parts:
            run.core.abandon(call)
        counts.cancelled += n
        raise
    finally:
        run.release()
    failed = next((call for call in parts if call.err is not None), None)
    if failed is not None:
        counts.failed += n
        failed.outcome()  # raises its error
    counts.completed += n
    for index, call in enumerate(calls):
        if call is not None:
            results[index] = call.out
    return results


async def _settled(run: Run, call: CallCore) -> None:
    """Wait for one part of a larger call; its error is raised with the whole call's."""
    try:
        await run.result(call)
    except Exception:
        if call.state != DONE:
            raise
