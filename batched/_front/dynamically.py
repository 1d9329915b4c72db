"""The decorators: ``batched.dynamically`` and ``batched.aio.dynamically``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from .._settings import is_async_callable
from .decorator import BatchedFunction, BatchedMethod, check_options
from .sync import SyncBatchedFunction, SyncBatchedMethod

if TYPE_CHECKING:
    from typing import Unpack

    from .batcher import ResultsLike
    from .decorator import BatcherOptions

__all__ = ["AsyncDecorator", "Decorator", "aio_dynamically", "dynamically"]

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")

AsyncFn = Callable[[list[T]], Awaitable["ResultsLike[R]"]]
AsyncMethodFn = Callable[[S, list[T]], Awaitable["ResultsLike[R]"]]
SyncFn = Callable[[list[T]], "ResultsLike[R]"]
SyncMethodFn = Callable[[S, list[T]], "ResultsLike[R]"]


class Decorator(Protocol):
    """What ``batched.dynamically(**settings)`` returns (typing only)."""

    @overload
    def __call__(self, fn: AsyncFn[T, R], /) -> BatchedFunction[T, R]: ...
    @overload
    def __call__(self, fn: AsyncMethodFn[S, T, R], /) -> BatchedMethod[S, T, R]: ...
    @overload
    def __call__(self, fn: SyncFn[T, R], /) -> SyncBatchedFunction[T, R]: ...
    @overload
    def __call__(self, fn: SyncMethodFn[S, T, R], /) -> SyncBatchedMethod[S, T, R]: ...


class AsyncDecorator(Protocol):
    """What ``batched.aio.dynamically(**settings)`` returns (typing only)."""

    @overload
    def __call__(self, fn: AsyncFn[T, R] | SyncFn[T, R], /) -> BatchedFunction[T, R]: ...
    @overload
    def __call__(
        self, fn: AsyncMethodFn[S, T, R] | SyncMethodFn[S, T, R], /
    ) -> BatchedMethod[S, T, R]: ...


def _target(fn: Any) -> Any:
    return fn.__func__ if isinstance(fn, staticmethod | classmethod) else fn


# A function with settings, `dynamically(fn, batch_size=8)`, as the seed allows too.
@overload
def dynamically(
    fn: AsyncFn[T, R], /, **settings: Unpack[BatcherOptions]
) -> BatchedFunction[T, R]: ...
@overload
def dynamically(
    fn: AsyncMethodFn[S, T, R], /, **settings: Unpack[BatcherOptions]
) -> BatchedMethod[S, T, R]: ...
@overload
def dynamically(
    fn: SyncFn[T, R], /, **settings: Unpack[BatcherOptions]
) -> SyncBatchedFunction[T, R]: ...
@overload
def dynamically(
    fn: SyncMethodFn[S, T, R], /, **settings: Unpack[BatcherOptions]
) -> SyncBatchedMethod[S, T, R]: ...
@overload
def dynamically(fn: None = None, /, **settings: Unpack[BatcherOptions]) -> Decorator: ...


def dynamically(fn: Any = None, /, **settings: Any) -> Any:
    """Batch a function's calls: ``@batched.dynamically`` or ``@batched.dynamically(...)``.

    The function takes a list of items and returns one result per item; the decorated
    one takes one item (or a list) per call. On an ``async def`` it gives a
    :class:`BatchedFunction` to ``await``; on a plain ``def`` a
    :class:`SyncBatchedFunction` that blocks its calling thread, with ``acall`` for
    async callers. Settings are those of :class:`Batcher`. Works on functions, methods
    (one batcher per instance), static and class methods (put the decorator above
    ``@staticmethod``/``@classmethod``) and callable objects.
    """
    options = check_options(settings)

    def decorate(fn: Any) -> Any:
        if is_async_callable(_target(fn)):
            return BatchedFunction(fn, options)
        return SyncBatchedFunction(fn, options)

    return decorate if fn is None else decorate(fn)


@overload
def aio_dynamically(
    fn: AsyncFn[T, R] | SyncFn[T, R], /, **settings: Unpack[BatcherOptions]
) -> BatchedFunction[T, R]: ...
@overload
def aio_dynamically(
    fn: AsyncMethodFn[S, T, R] | SyncMethodFn[S, T, R], /, **settings: Unpack[BatcherOptions]
) -> BatchedMethod[S, T, R]: ...
@overload
def aio_dynamically(fn: None = None, /, **settings: Unpack[BatcherOptions]) -> AsyncDecorator: ...


def aio_dynamically(fn: Any = None, /, **settings: Any) -> Any:
    """Like :func:`batched.dynamically`, but always awaitable: a plain ``def`` runs in a
    worker thread, and callers ``await`` it (the seed's ``batched.aio.dynamically``)."""
    options = check_options(settings)

    def decorate(fn: Any) -> Any:
        return BatchedFunction(fn, options)

    return decorate if fn is None else decorate(fn)
