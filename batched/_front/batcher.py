"""``Batcher``: the public face of dynamic batching."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, cast, final

import anyio.lowlevel

from .._core.counts import Counts
from .._core.items import check_priority
from .._errors import BatcherClosed
from .._keyed import cache_stats
from .._run.owned import Owned
from .._run.pulled import Pulled
from .._settings import make_settings
from .._strategies import Fifo, PriorityStrategy, Strategy
from .steering import Steered
from .submit import closed, keyed_many, keyed_one, raise_later, submit_many

if TYPE_CHECKING:
    from collections.abc import Coroutine, Hashable
    from types import TracebackType
    from typing import Self

    from anyio.streams.memory import MemoryObjectReceiveStream

    from .._batch import Batch
    from .._observe import BatchInfo
    from .._settings import Settings
    from .._stats import BatchStats
    from ..cache import AsyncCache

__all__ = ["BatchFunction", "Batcher", "ResultsLike", "nothing"]

T = TypeVar("T")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class ResultsLike(Protocol[R_co]):
    """What a batch function returns: a list, a tuple, or an array-like (numpy, torch)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> R_co: ...


BatchFunction = Callable[[list[T]], Awaitable[ResultsLike[R]]] | Callable[[list[T]], ResultsLike[R]]


async def _listed(one: Awaitable[Any]) -> list[Any]:
    return [await one]


async def nothing(priority: object) -> list[Any]:
    """``many([])``: no items, no batch; still a checkpoint."""
    if type(priority) is not int:
        priority = check_priority(priority)
    await anyio.lowlevel.checkpoint()
    return []


@final
class Batcher(Steered, Generic[T, R]):
    """Gather single calls into batches for one batch function.

    ``fn(list[T]) -> Sequence[R]`` gets each batch and returns one result per item, in
    order. It may be an ``async def`` (or an object with an ``async def __call__``, or a
    partial of either) or a plain function, which runs in a worker thread. Use the
    batcher inside ``async with``: it owns a task group that lives exactly as long as
    the block.

    :param batch_size: the most items in one batch
    :param timeout_ms: batching policy: how long a partial batch may wait for more items,
        measured from its oldest item's arrival (0: send what waits at once; ``"auto"``:
        chosen per batch from the measured arrival rate and cost of ``fn``, at most 10 ms)
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
        ``fn`` never sees it; computed results are stored before their callers get them
    :param cache_key: an item's key for the cache and for dedupe (default: the item)
    :param dedupe: equal keys waiting at the same time are computed once (default: on
        when a cache is set)
    :param isolate_errors: when ``fn`` raises, split the batch in halves and retry until
        the failing items stand alone; ``fn`` must accept being called again on subsets
    :param on_batch: a plain callable, called with a :class:`batched.BatchInfo` after
        each batch, in the batcher's task (keep it quick); what it raises is logged

    Without ``fn``, consumer tasks pull the batches with :meth:`batches` and answer
    each; ``max_concurrent_batches`` does not apply then (each waiting consumer is a
    slot), and ``cache`` and ``isolate_errors`` need ``fn``.
    """

    __slots__ = ("_counts", "_keyed", "_run", "_settings")

    def __init__(
        self,
        fn: BatchFunction[T, R] | None = None,
        *,
        batch_size: int = 32,
        timeout_ms: float | Literal["auto"] = 5.0,
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
        on_batch: Callable[[BatchInfo], object] | None = None,
    ) -> None:
        self._settings: Settings = make_settings(
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
            on_batch=on_batch,
        )
        self._keyed = cache is not None or self._settings.dedupe
        self._run: Owned | Pulled | None = None
        self._counts = Counts()

    @classmethod
    def _from_settings(cls, settings: Settings, counts: Counts | None = None) -> Batcher[Any, Any]:
        """A batcher over settings checked already (the fronts' own batchers)."""
        batcher: Batcher[Any, Any] = cls.__new__(cls)
        batcher._settings = settings
        batcher._keyed = settings.cache is not None or settings.dedupe
        batcher._run = None
        batcher._counts = Counts() if counts is None else counts
        return batcher

    def __repr__(self) -> str:
        s = self._settings
        state = "open" if self._run is not None else "closed"
        return (
            f"<Batcher {getattr(s.fn, '__qualname__', s.fn)!r} {state} "
            f"batch_size={s.batch_size} timeout_ms={s.timeout_ms}>"
        )

    @property
    def stats(self) -> BatchStats:
        """A snapshot of the counters (see :class:`BatchStats`)."""
        run = self._run
        return self._counts.snapshot(
            run.core.queued if run is not None else 0,
            cache_stats(self._settings.cache, self._counts),
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start the batcher's task group; blocks only until its collector runs.

        :raises RuntimeError: if the batcher is already open
        """
        if self._run is not None:
            msg = "this Batcher is already open: enter it in one `async with` at a time"
            raise RuntimeError(msg)
        run: Owned | Pulled
        if self._settings.fn is None:
            run = Pulled(self._settings, self._counts)
        else:
            run = Owned(self._settings, self._counts)
        await run.open()
        self._run = run
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
        run = self._run
        if run is None:
            msg = "this Batcher is not open"
            raise RuntimeError(msg)
        try:
            return await run.close(exc)
        finally:
            self._run = None

    # -- calls -------------------------------------------------------------------------

    def batches(self) -> MemoryObjectReceiveStream[Batch[T]]:
        """A new consumer of this batcher's batches (made without ``fn``).

        Each batch goes to exactly one consumer, and is cut only while a consumer waits
        for one, by the usual rules. Answer each with :meth:`Batch.set_results` or
        :meth:`Batch.fail`. Use it in ``async with``: a batch still unanswered when
        the stream closes fails its callers with :exc:`BatcherClosed`, chained to the
        exception that closed it. The stream ends once the batcher's block has ended
        and everything accepted was handed out.

        :raises RuntimeError: the batcher has a batch function of its own
        :raises BatcherClosed: the batcher is not open
        """
        if self._settings.fn is not None:
            msg = (
                "batches() hands batches to consumers of a Batcher made without fn; this "
                f"one calls its fn {self._settings.fn!r} itself"
            )
            raise RuntimeError(msg)
        run = self._run
        # After stop_accepting(), consumers are still needed for what was accepted.
        if not isinstance(run, Pulled) or not (run.core.accepting or run.core.stopped):
            msg = "the batcher is not open: call batches() inside its `async with`"
            raise BatcherClosed(msg)
        return run.consumer()

    def _open_run(self) -> Owned | Pulled:
        run = self._run
        if run is None or not run.core.accepting:
            raise closed(run)
        run.core.check_thread()  # before the cache: a keyed call may join a queued item
        return run

    def __call__(
        self, item: T, *, priority: float = 0, wait: bool = True
    ) -> Coroutine[Any, Any, R]:
        """Submit one item; await its result.

        :param priority: lower is more urgent (read by :class:`ByPriority`)
        :param wait: when ``max_queue_size`` is full, raise :exc:`QueueFull` instead of
            waiting for room
        :raises BatcherClosed: if the batcher is not open, or closes while the call waits
        :raises QueueFull: with ``wait=False``, when there is no room
        """
        if self._keyed:
            return keyed_one(self._counts, self._open_run, item, priority, wait, self._settings)
        run = self._run
        if run is None:
            self._counts.refused_anywhere(1)
            return raise_later(closed(None))
        try:
            call = run.core.call_one(run.new_call, item, priority, wait)
        except Exception as exc:
            return raise_later(exc)
        # The call itself: a future on asyncio, a parked task on trio; both coroutines.
        return call  # type: ignore[return-value]

    def many(
        self, items: Iterable[T], *, priority: float = 0, wait: bool = True
    ) -> Coroutine[Any, Any, list[R]]:
        """Submit many items as one call; await their results in the same order.

        The items may travel in different batches. If any fails, this raises the
        exception of the first failing item (in input order) once all are settled.
        """
        items = list(items)
        if self._keyed:
            return keyed_many(self._counts, self._open_run, items, priority, wait, self._settings)
        run = self._run
        if run is None:
            self._counts.refused_anywhere(len(items))
            return raise_later(closed(None))
        if not run.core.accepting:
            self._counts.refused_anywhere(len(items))
            return raise_later(closed(run))
        if not items:
            return nothing(priority)
        try:
            if len(items) == 1:  # one item travels as a single call does
                one = run.core.call_one(run.new_call, items[0], priority, wait)
                return _listed(cast("Awaitable[R]", one))
            call = submit_many(run, items, priority, wait)
        except Exception as exc:
            return raise_later(exc)
        return cast("Coroutine[Any, Any, list[R]]", call)
