"""Running the batch function over a cut batch: what every driver does with a slot.

``compute`` calls ``fn`` once (in a worker thread for a plain function), checks what it
returned, and with ``isolate_errors`` splits a failing batch until the failing items
stand alone. ``hand_back`` gives each caller its outcome through the core, counts the
batch and, with a cache, stores the computed results.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.to_thread

from .._batch import Batch, running
from .._core.calls import QUEUED, SharedCall, owner
from .._core.results import check_results
from .._errors import BatchSizeMismatch, Failure
from .._keyed import cache_store
from .._observe import report, tally

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._backends import Backend
    from .._core.queue import Core
    from .._settings import Settings

__all__ = ["Executor"]


def _boxed(fn: Callable[[list[Any]], Any], items: list[Any]) -> tuple[Any]:
    # In a worker thread: trio's refuses to hand back a coroutine, which a plain function
    # may return (``lambda xs: embed(xs)``); boxed, it is awaited in the loop, as on asyncio.
    return (fn(items),)


def _storable(result: Any) -> bool:
    # Not errors (a Failure slot), not None (a cache reads it as a miss).
    return result is not None and type(result) is not Failure


def _not_ours(exc: BaseException) -> RuntimeError:
    """The error for a batch whose ``fn`` raised a cancellation that is not the batcher's
    own: its callers were not cancelled, so they get an error, not a cancellation."""
    msg = (
        f"the batch function raised {type(exc).__qualname__}, but its batch was not "
        f"cancelled (did it await something that was cancelled elsewhere?)"
    )
    error = RuntimeError(msg)
    error.__cause__ = exc
    return error


@final
class Executor:
    """Calls ``fn`` for a driver and hands the outcomes back through its core."""

    __slots__ = (
        "cache",
        "cancelling",
        "clock",
        "core",
        "deadline_of",
        "fn",
        "is_async",
        "isolate",
        "on_batch",
        "padded",
        "spawn",
        "thread_limiter",
    )

    def __init__(
        self,
        settings: Settings,
        core: Core,
        spawn: Callable[..., object] | None,
        backend: Backend,
    ) -> None:
        assert settings.fn is not None  # a Batcher without fn is driven by Pulled
        self.fn = settings.fn
        self.cancelling = backend.cancelling
        self.is_async = settings.is_async
        self.isolate = settings.isolate_errors
        self.cache = settings.cache
        self.core = core
        self.clock = core.clock
        # Where cache writes run: the batcher's task group, or (None) the task that ran
        # the batch, for the caller-driven decorator.
        self.spawn = spawn
        self.thread_limiter = anyio.CapacityLimiter(settings.max_concurrent_batches)
        self.deadline_of = backend.deadline_of
        self.on_batch = settings.on_batch
        # batched.inference: the batch sizes its rows are padded up to (on_batch's
        # padded_size); None for other batchers.
        self.padded = settings.batch_sizes if settings.padded else None

    async def invoke(self, items: list[Any]) -> object:
        if self.is_async:
            return await self.fn(items)
        (out,) = await anyio.to_thread.run_sync(
            _boxed, self.fn, items, limiter=self.thread_limiter
        )
        if inspect.isawaitable(out):  # a plain function that hands back a coroutine
            out = await out
        return out

    async def compute(
        self, entries: list[Any], reason: str, counted: list[int] | None = None
    ) -> tuple[Sequence[Any] | None, Exception | None]:
        """Run ``fn`` once; its results, or the error for all of ``entries``. With
        ``isolate_errors``, a failing batch is split and settled here (None, None), and
        its parts' outcomes are added to ``counted`` (for ``on_batch``)."""
        clock = self.clock
        start = clock()
        items = [entry.item for entry in entries]
        # batched.current_batch() in fn; a worker thread runs in a copy of this context.
        token = running.set(Batch(entries, items, reason, self.deadline_of))
        try:
            try:
                out = await self.invoke(items)
            finally:
                running.reset(token)
        except Exception as exc:
            self.core.counts.ran(len(entries), clock() - start)
            if self.isolate and len(entries) > 1:
                await self._isolate(entries, reason, counted)
                return None, None
            return None, exc
        except anyio.get_cancelled_exc_class() as exc:
            if self.cancelling():
                raise  # the batcher's own cancellation (closing, or a slot cancelled)
            self.core.counts.ran(len(entries), clock() - start)
            return None, _not_ours(exc)
        self.core.counts.ran(len(entries), clock() - start)
        try:
            return check_results(out, len(entries)), None
        except (BatchSizeMismatch, TypeError) as exc:
            return None, exc  # the output's shape is fn's bug, not an item's: never split
        except Exception as exc:  # len() or indexing of the results raised
            return None, exc

    async def _isolate(
        self, entries: list[Any], reason: str, counted: list[int] | None
    ) -> None:
        """Split a failed batch in halves until the failing items stand alone."""
        half = len(entries) // 2
        for part in (entries[:half], entries[half:]):
            # Callers that left while the batch ran are not retried.
            part = [entry for entry in part if owner(entry).state == QUEUED]
            if not part:
                continue
            results, error = await self.compute(part, reason, counted)
            await self.settle(part, results, error)
            if counted is not None and (results is not None or error is not None):
                completed, failed = tally(part, results, error)
                counted[0] += completed
                counted[1] += failed

    async def settle(
        self, entries: list[Any], results: Sequence[Any] | None, error: BaseException | None
    ) -> None:
        """Hand the outcomes to the callers. With a cache, the computed results are
        written first, so that a call's result is in the cache when it returns: by a task
        of the batcher's (the slot goes on to the next batch meanwhile), or, caller-driven,
        by the task that ran the batch (its slot is free already)."""
        if results is not None:
            if self.cache is not None:
                stored = [
                    (entry.key, result)
                    for entry, result in zip(entries, results, strict=True)
                    if type(entry) is SharedCall and _storable(result)
                ]
                if stored:
                    if self.spawn is not None:
                        self.spawn(self._store_then_deliver, entries, results, stored)
                    else:
                        await self._store_then_deliver(entries, results, stored)
                    return
            self.core.deliver(entries, results)
        elif error is not None:
            self.core.fail(entries, error)

    async def _store_then_deliver(
        self, entries: list[Any], results: Sequence[Any], stored: list[tuple[Any, Any]]
    ) -> None:
        try:
            await cache_store(self.cache, stored, self.core.counts)
        finally:
            # Written, or given up (the bounded wait, or the batcher closing): the callers
            # get their results now, and equal keys read the cache from here on.
            self.core.deliver(entries, results)

    async def run(
        self,
        entries: list[Any],
        between: Callable[[], object] | None = None,
        reason: str = "timeout",
        waiting: int = 0,
    ) -> None:
        """Compute a batch, then (after ``between()``: a driver's slot bookkeeping, done
        before the hand-back) hand its outcomes back; count its items' waits and
        latencies (``compute`` counts each run of ``fn``); report it to ``on_batch``
        (``waiting``: the items its cut left waiting)."""
        clock = self.clock
        start = clock()
        on_batch = self.on_batch
        counted = [0, 0] if on_batch is not None and self.isolate else None
        results, error = await self.compute(entries, reason, counted)
        if between is not None:
            between()
        await self.settle(entries, results, error)
        core = self.core
        # A latency runs from the call: for a call that waited for queue room (only a
        # bounded queue has one), that wait comes before its arrival.
        called = (
            None
            if core.max_queue is None
            else [entry.arrival - owner(entry).room_wait for entry in entries]
        )
        end = clock()
        core.counts.waited(start, end, [entry.arrival for entry in entries], called)
        if on_batch is not None:
            if counted is None or results is not None or error is not None:
                counted = tally(entries, results, error)
            report(on_batch, entries, reason, start, end, waiting, self.padded, counted)
