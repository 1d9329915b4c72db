"""The seed's names (mixedbread's ``batched``), on the new core.

``BatchProcessor`` and ``AsyncBatchProcessor`` take the seed's arguments and call
shapes; everything else they accept is a :class:`Batcher` setting.
"""

from __future__ import annotations

import warnings
from typing import Any, TypeVar, final

import anyio.lowlevel

from .._strategies import PriorityStrategy
from .decorator import AsyncFront, check_options
from .sync import SyncFront

__all__ = ["AsyncBatchProcessor", "BatchProcessor"]

T = TypeVar("T")
R = TypeVar("R")


@final
class BatchProcessor(SyncFront[T, R]):
    """The seed's thread-side processor: ``proc(item)`` blocks, ``await proc.acall(item)``.

    A :class:`SyncBatchedFunction` with the seed's positional arguments.
    """

    __slots__ = ()

    def __init__(
        self,
        _func: Any,
        batch_size: int = 32,
        timeout_ms: float = 5.0,
        small_batch_threshold: int = 8,
        **settings: Any,
    ) -> None:
        options = check_options(
            {
                "batch_size": batch_size,
                "timeout_ms": timeout_ms,
                "small_batch_threshold": small_batch_threshold,
                **settings,
            }
        )
        super().__init__(_func, options)

    def start(self) -> None:
        """Start the serving thread now (it also starts on first use)."""
        self._serve()

    def shutdown(self) -> None:
        """The seed's name for :meth:`close`."""
        self.close()

    def clear_stats(self) -> None:
        """Reset the counters."""
        self._counts.reset()


@final
class AsyncBatchProcessor(AsyncFront[T, R]):
    """The seed's async processor: ``await proc(item)``, ``await proc([items])``.

    A :class:`BatchedFunction` with the seed's arguments: ``priority_strategy`` is the
    ``strategy`` setting; ``batch_item_cls`` has no equivalent and is ignored.
    """

    __slots__ = ()

    def __init__(
        self,
        func: Any,
        *,
        batch_size: int = 32,
        timeout_ms: float = 5.0,
        small_batch_threshold: int = 8,
        max_batch_length: int | None = None,
        priority_strategy: PriorityStrategy = PriorityStrategy.NONE,
        batch_item_cls: object = None,
        **settings: Any,
    ) -> None:
        if batch_item_cls is not None:
            warnings.warn(
                "AsyncBatchProcessor(batch_item_cls=...) has no effect: items are kept by "
                "the batcher; see batched.Strategy to order them",
                UserWarning,
                stacklevel=2,
            )
        options = check_options(
            {
                "batch_size": batch_size,
                "timeout_ms": timeout_ms,
                "small_batch_threshold": small_batch_threshold,
                "max_batch_length": max_batch_length,
                "strategy": priority_strategy,
                **settings,
            }
        )
        super().__init__(func, options)

    async def shutdown(self) -> None:
        """Nothing to stop: outside ``async with``, no task outlives the calls."""
        await anyio.lowlevel.checkpoint()

    def clear_stats(self) -> None:
        """Reset the counters."""
        self._batcher._counts.reset()
