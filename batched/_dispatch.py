"""The dispatcher: execution slots that run the batch function and hand back results.

A slot is a worker task, started on first need up to ``max_concurrent_batches`` and kept:
spawning a task per batch costs more than handing a batch over by a signal. When the batch
function returns, the worker takes the next batch itself if one is due (else frees its
slot), then writes the results, so the hand-back never holds up the next batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence, Set
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.to_thread

from ._call import DONE, QUEUED, SharedCall, Signal
from ._errors import BatchSizeMismatch, Failure
from ._keyed import cache_store

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskGroup

    from ._stats import _Recorder
    from ._strategies import Entry

__all__ = ["Batch", "Dispatcher", "Worker", "check_results"]

_NOT_RESULTS = (str, bytes, bytearray, memoryview, Mapping, Set)


@final
class Batch:
    """A cut batch, from the cut until its callers have their outcomes."""

    __slots__ = ("abandons", "entries")

    def __init__(self, entries: list[Entry], abandons: int) -> None:
        self.entries = entries
        self.abandons = abandons  # the engine's count of departures at the cut


@final
class Worker:
    """An execution slot: a task that runs one batch at a time, handed over by an event.

    Workers are started on demand, up to ``max_concurrent_batches``, and kept: spawning
    a task per batch would cost more than the hand-over.
    """

    __slots__ = ("batch", "event", "streak")

    def __init__(self, event: Signal) -> None:
        self.batch: Batch | None = None
        self.event = event
        self.streak = 0  # batches it has cut itself in a row, without yielding to the loop


def check_results(out: object, n: int) -> Sequence[Any]:
    """The batch function's output as a sequence of ``n`` results, or an error."""
    kind = type(out)
    if kind is not list and kind is not tuple:
        if isinstance(out, _NOT_RESULTS) or not (
            hasattr(kind, "__len__") and hasattr(kind, "__getitem__")
        ):
            msg = (
                f"the batch function must return a list, a tuple or an array-like of results, "
                f"not {kind.__qualname__}"
            )
            raise TypeError(msg)
        try:
            size = len(out)  # type: ignore[arg-type]
            out = [out[i] for i in range(min(size, n))]  # type: ignore[index]
        except TypeError:
            msg = f"the batch function returned a {kind.__qualname__} without a length"
            raise TypeError(msg) from None
    else:
        size = len(out)  # type: ignore[arg-type]
    if size != n:
        raise BatchSizeMismatch(n, size)
    return out  # type: ignore[return-value]


class Dispatcher:
    """The worker side of an engine; ``Engine`` holds the state and the collector."""

    __slots__ = ("cache", "idle", "max_workers", "slot_freed", "thread_limiter", "workers")

    # The engine's state this side reads, declared for the type checker; Engine sets it.
    abandons: int
    clock: Callable[[], float]
    collecting: bool
    fn: Callable[..., Any]
    is_async: bool
    isolate: bool
    make_signal: type[Signal]
    running: set[Batch]
    stats: _Recorder
    tg: TaskGroup | None

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self.workers = 0  # worker tasks alive
        self.idle: list[Worker] = []  # workers waiting for a batch
        self.slot_freed: Signal | None = None  # set when a worker goes idle
        self.thread_limiter = anyio.CapacityLimiter(max_workers)
        self.cache: Any = None  # the engine sets it: results are stored there after a batch

    def crash(self, exc: BaseException) -> None:
        raise NotImplementedError

    async def _slot(self) -> Worker | None:
        """Wait for a free execution slot: an idle worker, or room to start one (None)."""
        while not self.idle:
            if self.workers < self.max_workers:
                self.workers += 1
                return None
            self.slot_freed = event = self.make_signal()
            await event.wait()
        return self.idle.pop()

    def _free_slot(self, worker: Worker | None) -> None:
        """The worker's batch function returned: it may take the next batch."""
        assert worker is not None  # only the caller-driven engine runs batches without one
        worker.event = self.make_signal()
        if not self.collecting:
            worker.event.set()  # no batch will come: let the worker end
            return
        self.idle.append(worker)
        event = self.slot_freed
        if event is not None:
            self.slot_freed = None
            event.set()

    async def _invoke(self, items: list[Any]) -> object:
        if self.is_async:
            return await self.fn(items)
        out = await anyio.to_thread.run_sync(self.fn, items, limiter=self.thread_limiter)
        if inspect.isawaitable(out):  # a plain function that hands back a coroutine
            out = await out
        return out

    async def _compute(self, entries: list[Entry]) -> tuple[Sequence[Any] | None, Exception | None]:
        """Run the batch function once; its results, or the error for all of ``entries``."""
        try:
            out = await self._invoke([entry.item for entry in entries])
        except Exception as exc:
            if self.isolate and len(entries) > 1:
                await self._isolate(entries)
                return None, None
            return None, exc
        try:
            return check_results(out, len(entries)), None
        except (BatchSizeMismatch, TypeError) as exc:
            return None, exc  # the output's shape is fn's bug, not an item's: never split

    async def _isolate(self, entries: list[Entry]) -> None:
        """Split a failed batch in halves until the failing items stand alone."""
        half = len(entries) // 2
        for part in (entries[:half], entries[half:]):
            # Callers that left while the batch ran are not retried.
            part = [entry for entry in part if entry._call.state == QUEUED]
            if not part:
                continue
            results, error = await self._compute(part)
            if results is not None:
                _deliver(part, results)
                if self.cache is not None:
                    await self._store(part, results)
            elif error is not None:
                _fail(part, error)

    def _next_batch(self, worker: Worker | None) -> Batch | None:
        """A batch for the slot that just finished, to start before the hand-back; None
        gives the slot back to the collector. The engine overrides it."""
        return None

    async def _worker(self, batch: Batch) -> None:
        worker = Worker(self.make_signal())
        try:
            while True:
                following = await self._run(batch, worker)
                if following is not None:
                    batch = following
                    continue
                await worker.event.wait()
                if worker.batch is None:
                    return  # the collector has ended
                batch, worker.batch = worker.batch, None
        finally:
            self.workers -= 1

    async def _run(self, batch: Batch, worker: Worker | None) -> Batch | None:
        """Run one batch and hand back its outcomes; the batch this slot runs next, if
        one was ready when ``fn`` returned."""
        released = False
        following: Batch | None = None
        try:
            live = batch.entries
            if batch.abandons != self.abandons:  # a caller left since the cut: skip its items
                live = [entry for entry in live if entry._call.state == QUEUED]
                if not live:
                    return None  # every caller left before the batch started
            clock = self.clock
            start = clock()
            results, error = await self._compute(live)
            self._count_batch(len(live), clock() - start)
            # The next batch is cut before the hand-back, and its fn is started before the
            # woken callers run: the device does not idle while they do.
            following = self._next_batch(worker)
            if following is None:
                self._free_slot(worker)
            released = True
            if results is not None:
                _deliver(live, results)
                if self.cache is not None:
                    await self._store(live, results)
            elif error is not None:
                _fail(live, error)
            stats = self.stats
            stats.wait.extend([start - entry.arrival for entry in live])
            end = clock()
            stats.latency.extend([end - entry._call.started for entry in live])
        except anyio.get_cancelled_exc_class():
            for entry in batch.entries + (following.entries if following is not None else []):
                if entry._call.state == QUEUED:
                    entry._call.close()
            if following is not None:
                self.running.discard(following)
            raise
        except BaseException as exc:
            following = None  # crash() has released its callers too
            self.crash(exc)
        finally:
            self.running.discard(batch)
            if not released:
                self._free_slot(worker)
        return following

    async def _store(self, entries: list[Entry], results: Sequence[Any]) -> None:
        """Write the computed results to the cache, in the batcher's task group.

        Not errors (a ``Failure`` slot), not ``None`` (a cache reads it as a miss).
        """
        stored = [
            (entry, result)
            for entry, result in zip(entries, results, strict=True)
            if type(entry) is SharedCall and result is not None and type(result) is not Failure
        ]
        if not stored:
            return
        tg = self.tg
        if tg is not None:
            tg.start_soon(self._store_and_forget, stored)
        else:  # caller-driven: the caller that ran the batch writes them
            await self._store_and_forget(stored)

    async def _store_and_forget(self, stored: list[tuple[SharedCall, Any]]) -> None:
        # The result from fn, not the entry's: an entry whose callers all left has none.
        try:
            await cache_store(
                self.cache, [(entry.key, result) for entry, result in stored], self.stats
            )
        finally:
            for entry, _ in stored:  # written (or given up): equal keys read the cache now
                entry.forget()

    def _count_batch(self, size: int, seconds: float) -> None:
        stats = self.stats
        stats.batches += 1
        stats.processed += size
        stats.busy_seconds += seconds


def _deliver(entries: list[Entry], results: Sequence[Any]) -> None:
    for entry, result in zip(entries, results, strict=True):
        call = entry._call
        if call.state != QUEUED:
            continue
        if type(result) is Failure:
            exc = result.exception
            call.set_error(entry._index, exc, exc.__traceback__)
        elif call.entries is None:  # one item: settle it here, sparing a call per item
            call.result = result
            call.state = DONE
            call.wake()
        else:
            call.set_result(entry._index, result)


def _fail(entries: list[Entry], error: BaseException) -> None:
    tb = error.__traceback__
    for entry in entries:
        call = entry._call
        if call.state == QUEUED:
            call.set_error(entry._index, error, tb)
