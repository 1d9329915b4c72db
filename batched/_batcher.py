"""``Batcher``: the public face of dynamic batching."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, NoReturn, Protocol, TypeVar, final

import anyio.lowlevel
import attrs

from ._call import CANCELLED, CLOSED, DONE, Call
from ._engine import OPEN, Engine
from ._errors import BatcherClosed
from ._keyed import cache_get, cache_stats, key_of
from ._settings import check_length, make_settings
from ._stats import BatchStats, _Recorder
from ._strategies import Entry, Fifo, PriorityStrategy, Strategy
from .cache import MISS

if TYPE_CHECKING:
    from collections.abc import Hashable
    from types import TracebackType
    from typing import Self

    from .cache import AsyncCache

__all__ = [
    "BatchFunction",
    "Batcher",
    "ResultsLike",
    "check_priority",
    "keyed_call",
    "keyed_many",
    "new_batcher",
    "raise_error",
    "settle",
]

T = TypeVar("T")
R = TypeVar("R")

R_co = TypeVar("R_co", covariant=True)


class ResultsLike(Protocol[R_co]):
    """What a batch function returns: a list, a tuple, or an array-like (numpy, torch)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> R_co: ...


BatchFunction = Callable[[list[T]], Awaitable[ResultsLike[R]]] | Callable[[list[T]], ResultsLike[R]]


def new_batcher(fn: Any, options: Mapping[str, Any]) -> Batcher[Any, Any]:
    """A batcher from the front-ends' options; ``padded`` (batched.inference) is private:
    the length budget then counts the padded size."""
    options = dict(options)
    padded = options.pop("padded", False)
    batcher: Batcher[Any, Any] = Batcher(fn, **options)
    if padded:
        batcher._settings = attrs.evolve(batcher._settings, padded=True)
    return batcher


def settle(stats: _Recorder, engine: Engine, call: Call) -> Any:
    """The outcome of a settled call: its result, or its error raised; counted."""
    error = call.error
    if error is None:
        stats.completed += call.n
        return call.result
    stats.failed += call.n
    raise_error(call, engine.cause)


def raise_error(
    call: Call,
    cause: BaseException | None,
    closed: str = "the Batcher closed before this call was done",
) -> NoReturn:
    """Raise a settled call's error; ``BatcherClosed`` (chained to ``cause``) for a close."""
    error = call.error
    if error is CLOSED:
        raise BatcherClosed(closed) from cause
    # One exception object reaches every caller of the batch: reset its traceback so
    # it does not grow by one caller's frames per raise.
    raise error.with_traceback(call.error_tb)  # type: ignore[union-attr]


def check_priority(priority: object) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int | float):
        msg = f"'priority' must be a number (lower is more urgent): {priority!r}"
        raise TypeError(msg)
    if math.isnan(priority):
        msg = f"'priority' must not be NaN: {priority!r}"
        raise ValueError(msg)


@final
class Batcher(Generic[T, R]):
    """Gather single calls into batches for one batch function.

    ``fn(list[T]) -> Sequence[R]`` gets each batch and returns one result per item, in
    order; each caller gets its own result. ``fn`` may be ``async def`` (or an object
    with an ``async def __call__``, or a partial of either) or a plain function, which
    runs in a worker thread. Use the batcher inside ``async with``: it owns a task group
    that lives exactly as long as the block.

    :param batch_size: the most items in one batch
    :param timeout_ms: batching policy: how long a partial batch may wait for more items,
        measured from its oldest item's arrival (0: send what waits at once)
    :param max_batch_length: the most summed ``length_fn(item)`` in one batch; an item
        longer than this alone travels alone
    :param length_fn: an item's length (default: ``len``; a mapping's first value's
        ``len``; else 1)
    :param strategy: the order of waiting items: :class:`Fifo`, :class:`ByLength`,
        :class:`ByPriority`, a :class:`PriorityStrategy` or your own :class:`Strategy`
    :param small_batch_threshold: items of calls with at most this many items leave
        before items of larger calls
    :param max_wait_ms: an item that has waited this long leaves before every item that
        arrived after it, whatever the strategy
    :param max_queue_size: the most items accepted and not yet in a running batch;
        further calls wait for room (or raise :exc:`QueueFull` with ``wait=False``)
    :param max_concurrent_batches: how many batches may run at once
    :param cache: a :class:`batched.cache.AsyncCache`: a hit is returned at once and
        ``fn`` never sees it; computed results are stored after their batch
    :param cache_key: an item's key for the cache and for dedupe (default: the item)
    :param dedupe: equal keys waiting at the same time are computed once (default: on
        when a cache is set)
    :param isolate_errors: when ``fn`` raises, split the batch in halves and retry until
        the failing items stand alone; ``fn`` must accept being called again on subsets
    """

    __slots__ = ("_engine", "_keyed", "_length_fn", "_settings", "_stats")

    def __init__(
        self,
        fn: BatchFunction[T, R],
        *,
        batch_size: int = 32,
        timeout_ms: float = 5.0,
        max_batch_length: int | None = None,
        length_fn: Callable[[T], int] | None = None,
        strategy: Strategy | PriorityStrategy = Fifo(),  # noqa: B008 - frozen, shared safely
        small_batch_threshold: int = 8,
        max_wait_ms: float = 1000.0,
        max_queue_size: int | None = None,
        max_concurrent_batches: int = 1,
        cache: AsyncCache[Any, R] | None = None,
        cache_key: Callable[[T], Hashable] | None = None,
        dedupe: bool | None = None,
        isolate_errors: bool = False,
    ) -> None:
        self._settings = make_settings(
            fn,
            batch_size=batch_size,
            timeout_ms=timeout_ms,
            max_batch_length=max_batch_length,
            length_fn=length_fn,
            strategy=strategy,
            small_batch_threshold=small_batch_threshold,
            max_wait_ms=max_wait_ms,
            max_queue_size=max_queue_size,
            max_concurrent_batches=max_concurrent_batches,
            isolate_errors=isolate_errors,
            cache=cache,
            cache_key=cache_key,
            dedupe=dedupe,
        )
        self._length_fn = self._settings.length_fn
        self._keyed = cache is not None or self._settings.dedupe
        self._engine: Engine | None = None
        self._stats = _Recorder()

    def __repr__(self) -> str:
        s = self._settings
        state = "open" if self._engine is not None else "closed"
        return (
            f"<Batcher {getattr(s.fn, '__qualname__', s.fn)!r} {state} "
            f"batch_size={s.batch_size} timeout_ms={s.timeout_ms}>"
        )

    @property
    def stats(self) -> BatchStats:
        """A snapshot of the counters (see :class:`BatchStats`)."""
        engine = self._engine
        return self._stats.snapshot(
            engine.queued if engine is not None else 0,
            cache_stats(self._settings.cache, self._stats),
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start the batcher's task group; blocks only until its collector runs.

        :raises RuntimeError: if the batcher is already open
        """
        if self._engine is not None:
            msg = "this Batcher is already open: enter it in one `async with` at a time"
            raise RuntimeError(msg)
        engine = Engine(self._settings, self._stats)
        await engine.start()
        self._engine = engine
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Close the batcher.

        On a normal exit this blocks until every accepted item has been processed (no
        batch waits out ``timeout_ms``); callers still waiting for queue room get
        :exc:`BatcherClosed`. On an exception or cancellation every waiting caller gets
        :exc:`BatcherClosed` at once, running async batches are cancelled, a running sync
        ``fn`` is waited for, and the exception propagates unchanged.
        """
        engine = self._engine
        if engine is None:
            msg = "this Batcher is not open"
            raise RuntimeError(msg)
        try:
            return await engine.stop(exc)
        finally:
            self._engine = None

    # -- calls -------------------------------------------------------------------------

    def _closed_error(self, engine: Engine | None) -> BatcherClosed:
        if engine is None:
            return BatcherClosed("the Batcher is not open: call it inside `async with batcher:`")
        return BatcherClosed("the Batcher is closed")

    def _length(self, item: Any) -> int:
        length_fn = self._length_fn
        if length_fn is None:
            return 1
        try:
            return check_length(length_fn(item), item, length_fn)
        except Exception as exc:
            exc.add_note(f"raised by length_fn={length_fn!r} for item {item!r}")
            raise

    async def __call__(self, item: T, *, priority: float = 0, wait: bool = True) -> R:
        """Submit one item and wait for its result.

        :param priority: lower is more urgent (read by :class:`ByPriority`)
        :param wait: when ``max_queue_size`` is full, raise :exc:`QueueFull` instead of
            waiting for room
        :raises BatcherClosed: if the batcher is not open, or closes while the call waits
        :raises QueueFull: with ``wait=False``, when there is no room
        """
        if self._keyed:
            return await self._keyed_call(item, priority, wait)  # type: ignore[no-any-return]
        engine = self._engine
        stats = self._stats
        stats.submitted += 1
        try:
            if engine is None or engine.state != OPEN:
                raise self._closed_error(engine)
            if type(priority) is not int:
                check_priority(priority)
            length = 1 if self._length_fn is None else self._length(item)
            call = engine.make_call(item, length, priority, engine.clock(), None)
            engine.submit(call, wait)
        except BaseException as exc:
            if not isinstance(exc, anyio.WouldBlock):  # QueueFull is counted as rejected
                stats.failed += 1
            raise
        try:
            await call.wait()
        except BaseException:
            engine.abandon(call)
            raise
        if call.error is None:
            stats.completed += 1
            return call.result  # type: ignore[no-any-return]
        return settle(self._stats, engine, call)  # type: ignore[no-any-return]

    async def many(self, items: Iterable[T], *, priority: float = 0, wait: bool = True) -> list[R]:
        """Submit many items as one call; their results in the same order.

        The items may travel in different batches. If any fails, this raises the
        exception of the first failing item (in input order) once all are settled.
        """
        if self._keyed:
            return await self._keyed_many(list(items), priority, wait)
        engine = self._engine
        stats = self._stats
        items = list(items)
        stats.submitted += len(items)
        try:
            if engine is None or engine.state != OPEN:
                raise self._closed_error(engine)
            if type(priority) is not int:
                check_priority(priority)
            if not items:
                await anyio.lowlevel.checkpoint()
                return []
            if len(items) == 1:  # one item travels as a single call does
                item = items[0]
                call = engine.make_call(item, self._length(item), priority, engine.clock(), None)
            else:
                entries = [Entry(item, self._length(item), priority) for item in items]
                call = engine.make_call(None, 0, priority, engine.clock(), entries)
            engine.submit(call, wait)
        except BaseException as exc:
            if not isinstance(exc, anyio.WouldBlock):
                stats.failed += len(items)
            raise
        try:
            await call.wait()
        except BaseException:
            engine.abandon(call)
            raise
        result = settle(self._stats, engine, call)
        return result if call.entries is not None else [result]

    # -- with a cache or dedupe --------------------------------------------------------

    def _open_engine(self) -> Engine:
        engine = self._engine
        if engine is None or engine.state != OPEN:
            raise self._closed_error(engine)
        return engine

    async def _keyed_call(self, item: Any, priority: float, wait: bool) -> Any:
        return await keyed_call(self, self._open_engine, _wait, item, priority, wait)

    async def _keyed_many(self, items: list[Any], priority: float, wait: bool) -> list[Any]:
        return await keyed_many(self, self._open_engine, _wait, items, priority, wait)


def _count_refused(stats: _Recorder, exc: BaseException, n: int) -> None:
    """A keyed call that ends before it is sent: cancelled, rejected (counted by
    the engine already) or failed."""
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        stats.cancelled += n
    elif not isinstance(exc, anyio.WouldBlock):
        stats.failed += n


def _wait(engine: Engine, call: Call) -> Awaitable[Any]:
    return call.wait()


async def keyed_call(
    batcher: Batcher[Any, Any],
    open_engine: Callable[[], Engine],
    serve: Callable[[Any, Call], Awaitable[Any]],
    item: Any,
    priority: float,
    wait: bool,
) -> Any:
    """One call under a cache or dedupe: a hit at once, else join or send the keyed item.

    ``open_engine`` gives the engine to use (or raises ``BatcherClosed``), asked again
    after the cache read; ``serve`` waits for the call (the caller-driven engine leads
    meanwhile).
    """
    stats = batcher._stats
    stats.submitted += 1
    engine: Engine | None = None
    try:
        if type(priority) is not int:
            check_priority(priority)
        settings = batcher._settings
        key = key_of(item, settings.cache_key)
        if settings.cache is not None:
            open_engine().release()  # a closed batcher refuses before reading the cache
            value = await cache_get(settings.cache, key, stats)
            if value is not MISS:
                stats.completed += 1
                return value
        length = 1 if batcher._length_fn is None else batcher._length(item)
        engine = open_engine()
        call = engine.subscribe(item, key, length, priority, wait)
    except BaseException as exc:
        _count_refused(stats, exc, 1)
        if engine is not None:
            engine.release()
        raise
    if call.state != DONE:  # not already settled by an equal item being written
        try:
            await serve(engine, call)
        except BaseException:
            if call.state != CANCELLED and serve is _wait:
                engine.abandon(call)
            raise
    else:
        engine.release()
        await anyio.lowlevel.checkpoint()
    return settle(stats, engine, call)


async def keyed_many(
    batcher: Batcher[Any, Any],
    open_engine: Callable[[], Engine],
    serve: Callable[[Any, Call], Awaitable[Any]],
    items: list[Any],
    priority: float,
    wait: bool,
) -> list[Any]:
    """``many`` under a cache or dedupe: every item keyed alone, all sent before waiting."""
    stats = batcher._stats
    n = len(items)
    stats.submitted += n
    calls: list[Call | None] = [None] * n
    results: list[Any] = [MISS] * n
    engine: Engine | None = None
    try:
        if type(priority) is not int:
            check_priority(priority)
        settings = batcher._settings
        open_engine().release()  # a closed batcher refuses before reading the cache
        if not items:
            await anyio.lowlevel.checkpoint()
            return []
        keys = [key_of(item, settings.cache_key) for item in items]
        if settings.cache is not None:
            for index, key in enumerate(keys):
                results[index] = await cache_get(settings.cache, key, stats)
        engine = open_engine()
        for index, item in enumerate(items):
            if results[index] is MISS:
                length = 1 if batcher._length_fn is None else batcher._length(item)
                calls[index] = engine.subscribe(item, keys[index], length, priority, wait)
    except BaseException as exc:
        if engine is not None:
            for call in calls:
                if call is not None:
                    engine.abandon(call, count=False)
            engine.release()
        if isinstance(exc, anyio.WouldBlock):
            stats.rejected += n - 1  # the item that did not fit is counted already
        else:
            _count_refused(stats, exc, n)
        raise
    engine.callers += 1  # keeps a caller-driven engine while this call waits
    try:
        for call in calls:
            if call is not None and call.state != DONE:
                await serve(engine, call)
    except BaseException:
        # A caller-driven engine has counted the call it was serving already.
        counted = sum(1 for call in calls if call is not None and call.state == CANCELLED)
        stats.cancelled += n - counted
        for call in calls:
            if call is not None and call.state != CANCELLED:
                engine.abandon(call, count=False)
        raise
    finally:
        engine.callers -= 1
        engine.release()
    for index, call in enumerate(calls):
        if call is None:
            continue
        if call.error is not None:
            stats.failed += n
            raise_error(call, engine.cause)
        results[index] = call.result
    stats.completed += n
    return results
