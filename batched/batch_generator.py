"""mixedbread's ``batched.batch_generator``: batches of items for a loop of your own.

:class:`BatchGenerator` queues :class:`BatchItem` s (each with a
:class:`concurrent.futures.Future`) from any thread and yields them in batches from
:meth:`BatchGenerator.optimal_batches`, a blocking generator: the items wait in the same
core as a :class:`batched.Batcher`'s (lower ``priority`` first, ``batch_size``,
``timeout_ms`` from the oldest item's arrival). You answer each item yourself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic

from ._front.held import held_core, hold, take_cut
from .types import T, U

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = ["BatchGenerator", "BatchItem"]


@dataclass(order=True)
class BatchItem(Generic[T, U]):
    """An item to batch, with the future its result is set on.

    :ivar content: the item
    :ivar priority: lower leaves first (compared; the rest is not)
    :ivar future: a :class:`concurrent.futures.Future` for its result
    """

    content: T = field(compare=False)
    priority: int = field(default=1, compare=True)
    future: Future[U] = field(default_factory=Future, compare=False)

    def to_awaitable(self) -> asyncio.Future[U]:
        """The result as an asyncio future of the running loop."""
        return asyncio.wrap_future(self.future)

    def set_result(self, result: U) -> None:
        """Complete the item with ``result`` (ignored once it is done)."""
        with contextlib.suppress(InvalidStateError):
            self.future.set_result(result)

    def set_exception(self, exception: BaseException) -> None:
        """Complete the item with ``exception`` (ignored once it is done)."""
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(exception)

    def result(self) -> U:
        """Block for the result; raise the item's exception if it has one."""
        return self.future.result()

    def done(self) -> bool:
        """Whether the item has its result or exception."""
        return self.future.done()


class BatchGenerator(Generic[T, U]):
    """Queue :class:`BatchItem` s from any thread; take them in batches.

    :param batch_size: the most items in one batch
    :param timeout_ms: how long a partial batch may wait for more items, from its oldest
        item's arrival
    """

    def __init__(self, batch_size: int = 32, timeout_ms: float = 5.0) -> None:
        self._core = held_core(
            time.monotonic, batch_size=batch_size, timeout_ms=timeout_ms, by_priority=True
        )
        self._batch_size = self._core.batch_size
        self._timeout = self._core.timeout
        self._changed = threading.Condition()
        self._stop_requested = False

    def __len__(self) -> int:
        """Items waiting for a batch."""
        return self._core.queued

    def extend(self, items: list[BatchItem[T, U]]) -> None:
        """Queue ``items`` (from any thread)."""
        with self._changed:
            now = time.monotonic()
            for item in items:
                hold(self._core, item, item.priority, 1, now)
            self._changed.notify_all()

    def optimal_batches(self) -> Generator[list[BatchItem[T, U]], None, None]:
        """Yield batches as they are due: full, or once the oldest item has waited
        ``timeout_ms``. Blocks while none is due; ends after :meth:`stop`."""
        while True:
            batch = self._next()
            if batch is None:
                return
            yield batch

    def _next(self) -> list[BatchItem[T, U]] | None:
        core = self._core
        with self._changed:
            while not self._stop_requested:
                if not core.waiting:
                    self._changed.wait()
                    continue
                now = time.monotonic()
                deadline = core.due(now)
                if deadline is None:
                    return take_cut(core, now)
                self._changed.wait(deadline - now)
        return None

    def stop(self) -> None:
        """End :meth:`optimal_batches` (also one blocked in another thread)."""
        with self._changed:
            self._stop_requested = True
            self._changed.notify_all()
