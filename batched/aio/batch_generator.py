"""mixedbread's ``batched.aio.batch_generator``: batches of items for an async loop of
your own.

:class:`AsyncBatchGenerator` queues :class:`AsyncBatchItem` s (each with an
:class:`asyncio.Future`) and yields them in batches from the async generator
:meth:`AsyncBatchGenerator.optimal_batches`: the items wait in the same core as a
:class:`batched.Batcher`'s (``batch_size``, ``max_batch_length``, ``timeout_ms`` from the
oldest item's arrival, lower ``priority`` first with ``sort_by_priority``). You answer
each item yourself; with a cache, hits are answered at once and results are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic

import anyio.lowlevel

from .._backends import current
from .._front.held import held_core, hold, take_cut
from .._settings import default_length
from ..cache import MISS
from ..types import AsyncCache, T, U

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable

    from .._backends import Backend
    from .._core.queue import Core

__all__ = ["AsyncBatchGenerator", "AsyncBatchItem"]


@dataclass(order=True)
class AsyncBatchItem(Generic[T, U]):
    """An item to batch, with the asyncio future its result is set on.

    :ivar content: the item
    :ivar future: an :class:`asyncio.Future` for its result
    :ivar priority: lower leaves first (compared; the rest is not)
    """

    content: T = field(compare=False)
    future: asyncio.Future[U] = field(compare=False)
    priority: int = field(default=1, compare=True)
    _len_fn: Callable[[T], int] | None = field(default=None, compare=False)
    # Called with the result it is completed with (the generator's cache write).
    _on_result: Callable[[U], object] | None = field(default=None, compare=False, repr=False)

    def set_result(self, result: U) -> None:
        """Complete the item with ``result`` (ignored once it is done)."""
        if self.future.done():
            return
        self.future.set_result(result)
        if self._on_result is not None:
            self._on_result(result)

    def set_exception(self, exception: BaseException) -> None:
        """Complete the item with ``exception`` (ignored once it is done)."""
        with contextlib.suppress(asyncio.InvalidStateError):
            self.future.set_exception(exception)

    def done(self) -> bool:
        """Whether the item has its result or exception."""
        return self.future.done()

    def __len__(self) -> int:
        """The content's length: ``_len_fn(content)``, else ``len`` (a mapping's first
        value's), 1 for an unsized item, 0 for None."""
        if self._len_fn is not None:
            return self._len_fn(self.content)
        return 0 if self.content is None else default_length(self.content)


class AsyncBatchGenerator(Generic[T, U]):
    """Queue :class:`AsyncBatchItem` s; take them in batches with ``async for``.

    :param batch_size: the most items in one batch
    :param timeout_ms: how long a partial batch may wait for more items, from its oldest
        item's arrival
    :param cache: an :class:`~batched.cache.AsyncCache`: a hit completes the item in
        :meth:`extend`; results set on the other items are stored
    :param max_batch_length: the most summed ``len(item)`` in one batch
    :param sort_by_priority: lower ``priority`` first (else arrival order)
    """

    def __init__(
        self,
        batch_size: int = 32,
        *,
        timeout_ms: float = 5.0,
        cache: AsyncCache[T, U] | None = None,
        max_batch_length: int | None = None,
        sort_by_priority: bool = False,
    ) -> None:
        self.cache = cache
        # Checked now; the core is made in the loop that first uses the generator.
        self._options: dict[str, Any] = {
            "batch_size": batch_size,
            "timeout_ms": timeout_ms,
            "by_priority": sort_by_priority,
            "max_batch_length": max_batch_length,
        }
        probe = held_core(lambda: 0.0, **self._options)
        self._batch_size = probe.batch_size
        self._timeout = probe.timeout
        self._max_batch_length = max_batch_length
        self._core: Core | None = None
        self._backend: Backend | None = None
        self._writes: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        """Items waiting for a batch."""
        return 0 if self._core is None else self._core.queued

    def _here(self) -> tuple[Core, Backend]:
        if self._core is None or self._backend is None:
            self._backend = backend = current()
            self._core = held_core(backend.clock, **self._options)
        return self._core, self._backend

    async def extend(self, items: list[AsyncBatchItem[T, U]]) -> None:
        """Queue ``items``; with a cache, those it holds are completed at once."""
        await anyio.lowlevel.checkpoint()
        core, backend = self._here()
        cache = self.cache
        budget = self._max_batch_length is not None
        for item in items:
            if cache is not None:
                hit = await cache.get(item.content)
                if hit is not None and hit is not MISS:
                    item.set_result(hit)
                    continue
                item._on_result = self._storer(item)
            hold(core, item, item.priority, len(item) if budget else 1, backend.clock())

    def _storer(self, item: AsyncBatchItem[T, U]) -> Callable[[U], object]:
        cache = self.cache
        assert cache is not None

        def store(result: U) -> None:
            task = asyncio.ensure_future(cache.set(item.content, result))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

        return store

    async def optimal_batches(self) -> AsyncGenerator[list[AsyncBatchItem[T, U]], None]:
        """Yield batches as they are due: full, or once the oldest item has waited
        ``timeout_ms``; items completed meanwhile (a cache hit, a cancelled future) are
        left out. Waits while none is due; runs until you stop iterating."""
        core, backend = self._here()
        while True:
            if not core.waiting:
                await self._wait(core, backend, None)
                continue
            deadline = core.due(backend.clock())
            if deadline is not None:
                await self._wait(core, backend, deadline)
                continue
            batch = [item for item in take_cut(core, backend.clock()) if not item.done()]
            if batch:
                yield batch
            else:
                await anyio.lowlevel.checkpoint()

    async def _wait(self, core: Core, backend: Backend, deadline: float | None) -> None:
        signal = backend.signal()
        core.wakeup = signal.set
        try:
            if deadline is None:
                await signal.wait()
            else:
                await backend.wait_until(signal, deadline)
        finally:
            core.wakeup = None
