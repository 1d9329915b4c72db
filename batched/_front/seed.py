"""The seed's names (mixedbread's ``batched``), on the new core.

``BatchProcessor`` and ``AsyncBatchProcessor`` take the seed's arguments and call
shapes, and show the attributes its docstrings name (``batch_func``,
``small_batch_threshold``, ...); everything else they accept is a :class:`Batcher`
setting.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, final

from .._strategies import PriorityStrategy
from .decorator import AsyncFront, check_options
from .sync import SyncFront

__all__ = ["AsyncBatchProcessor", "BatchProcessor"]

T = TypeVar("T")
R = TypeVar("R")


@final
class BatchProcessor(SyncFront[T, R]):
    """The seed's thread-side processor: ``proc(item)`` blocks, ``await proc.acall(item)``.

    A :class:`SyncBatchedFunction` with the seed's positional arguments, and its
    ``start()``, ``shutdown()`` and ``clear_stats()``.
    """

    __slots__ = ()

    def __init__(
        self,
        _func: Any,
        batch_size: int = 32,
        timeout_ms: float | Literal["auto"] = 5.0,
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

    @property
    def batch_func(self) -> Any:
        """The batch function, as given."""
        return self._fn

    @property
    def small_batch_threshold(self) -> int:
        """Calls of at most this many items go first."""
        return self._settings.small_batch_threshold


@final
class AsyncBatchProcessor(AsyncFront[T, R]):
    """The seed's async processor: ``await proc(item)``, ``await proc([items])``.

    A :class:`BatchedFunction` with the seed's arguments: ``priority_strategy`` is the
    ``strategy`` setting; ``batch_item_cls`` has no equivalent and is ignored (a warning).
    """

    __slots__ = ("_priority_strategy",)

    def __init__(
        self,
        func: Any,
        *,
        batch_size: int = 32,
        timeout_ms: float | Literal["auto"] = 5.0,
        small_batch_threshold: int = 8,
        max_batch_length: int | None = None,
        priority_strategy: PriorityStrategy = PriorityStrategy.NONE,
        batch_item_cls: object = None,
        **settings: Any,
    ) -> None:
        seed: dict[str, Any] = {}
        if "strategy" not in settings:
            seed["priority_strategy"] = priority_strategy
        options = check_options(
            {
                "batch_size": batch_size,
                "timeout_ms": timeout_ms,
                "small_batch_threshold": small_batch_threshold,
                "max_batch_length": max_batch_length,
                "batch_item_cls": batch_item_cls,
                **seed,
                **settings,
            }
        )
        super().__init__(func, options)
        self._priority_strategy = priority_strategy

    @property
    def batch_func(self) -> Any:
        """The batch function, as given."""
        return self.__wrapped__

    @property
    def small_batch_threshold(self) -> int:
        """Calls of at most this many items go first."""
        return self._settings.small_batch_threshold

    @property
    def priority_strategy(self) -> PriorityStrategy:
        """The seed's name of the strategy given (``NONE`` when ``strategy=`` was)."""
        return self._priority_strategy
