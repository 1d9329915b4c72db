"""The helpers of mixedbread's ``batched.utils``, for code written for it.

:class:`AsyncDiskCache` is the seed's disk cache (on ``diskcache``, the ``disk`` extra),
here on anyio, so it works under asyncio and trio; new code may prefer
:class:`batched.cache.DiskCache`. The iteration helpers split sequences into batches
outside any batcher.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import anyio
import anyio.to_thread

from ._backends._asyncio import get_or_create_event_loop as get_or_create_event_loop
from ._settings import is_async_callable
from .types import CacheStats

if TYPE_CHECKING:
    from collections.abc import Awaitable

__all__ = [
    "AsyncDiskCache",
    "batch_iter",
    "batch_iter_by_length",
    "bucket_batch_iter",
    "ensure_async",
    "ensure_import",
    "first",
    "get_or_create_event_loop",
    "is_method",
]

T = TypeVar("T")
U = TypeVar("U")
S = TypeVar("S", bound=Sized)


@contextlib.contextmanager
def ensure_import(install_name: str | None = None) -> Iterator[None]:
    """Turn an ``ImportError`` raised in the block into one that says what to install.

    :param install_name: the package to ``pip install`` (default: the missing module)
    :raises ImportError: naming the missing module and the install command
    """
    try:
        yield
    except ImportError as exc:
        module = exc.name or str(exc)
        package = install_name or (exc.name or module).split(".")[0]
        msg = f"this feature needs {module}, which did not import: pip install {package}"
        raise ImportError(msg, name=exc.name) from exc


def first(it: Iterable[T]) -> T:
    """The first item of ``it``.

    :raises StopIteration: if ``it`` is empty
    """
    return next(iter(it))


def is_method(func: object) -> bool:
    """Whether ``func`` looks like a method: callable, taking more than one parameter,
    the first named ``self`` or ``cls``."""
    if not callable(func):
        return False
    try:
        parameters = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):  # no signature to read (some builtins)
        return False
    return len(parameters) > 1 and parameters[0] in ("self", "cls")


def ensure_async(func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """``func`` as an async callable: itself if it is one already, else a wrapper that
    runs it in a worker thread (``anyio.to_thread.run_sync``: asyncio or trio)."""
    if is_async_callable(func):
        return func

    @functools.wraps(func)
    async def in_thread(*args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs))

    return in_thread


def batch_iter(seq: Sequence[T], batch_size: int) -> Iterator[Sequence[T]]:
    """Slices of ``seq`` of ``batch_size`` items each (the last may hold fewer)."""
    for start in range(0, len(seq), batch_size):
        yield seq[start : start + batch_size]


def batch_iter_by_length(
    seq: Iterable[S], max_batch_length: int, batch_size: int
) -> Iterator[list[S]]:
    """Consecutive batches of ``seq``: a batch ends before the item that would take it
    past ``batch_size`` items or past ``max_batch_length`` summed ``len()``. An item
    longer than ``max_batch_length`` travels alone."""
    batch: list[S] = []
    length = 0
    for item in seq:
        size = len(item)
        if batch and (len(batch) >= batch_size or length + size > max_batch_length):
            yield batch
            batch, length = [], 0
        batch.append(item)
        length += size
    if batch:
        yield batch


def bucket_batch_iter(
    data: list[S], batch_size: int, *, descending: bool = True
) -> Iterator[tuple[list[S], list[int]]]:
    """Batches of ``data`` sorted by ``len()`` (longest first by default; stable), each
    with the original indexes of its items. Data that fits one batch comes back as it is.
    """
    if len(data) <= batch_size:
        yield data, list(range(len(data)))
        return
    order = sorted(range(len(data)), key=lambda index: len(data[index]), reverse=descending)
    for start in range(0, len(order), batch_size):
        indexes = order[start : start + batch_size]
        yield [data[index] for index in indexes], indexes


class AsyncDiskCache(Generic[T, U]):
    """The seed's disk cache: ``diskcache.Cache`` in ``cache_dir``, each operation in a
    worker thread (``pip install 'batched-anyio[disk]'``).

    ``get`` returns ``None`` for a key it does not hold (so a stored ``None`` reads as a
    miss). Counters are kept only with ``collect_stats=True``. Subclasses may override
    ``_get_key(key)`` to store under a key of their own.

    :param cache_dir: the directory, created if needed (``~`` is expanded)
    :param max_threads: how many lookups, and how many stores, may run at once
    :param collect_stats: count lookups, hits, stores and their seconds
    :param expiration_seconds: how long an entry lives, or ``None`` for ever
    :param kwargs: passed on to ``diskcache.Cache`` (``statistics=False`` unless given)
    :raises ImportError: if ``diskcache`` is not installed
    """

    def __init__(
        self,
        cache_dir: str = "~/.cache/batched",
        *,
        max_threads: int = 16,
        collect_stats: bool = False,
        expiration_seconds: float | None = None,
        **kwargs: Any,
    ) -> None:
        with ensure_import("diskcache"):
            import diskcache

        path = Path(cache_dir).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        self._cache: Any = diskcache.Cache(str(path), **{"statistics": False, **kwargs})
        # Thread semaphores, not anyio limiters: the cache may serve several event
        # loops (asyncio and trio alike) over its life.
        self._get_slots = threading.BoundedSemaphore(max_threads)
        self._set_slots = threading.BoundedSemaphore(max_threads)
        self._stats = CacheStats()
        self._collect_stats = collect_stats
        self._expiration_seconds = expiration_seconds

    def _get_key(self, key: T) -> Any:
        """The key stored on disk for ``key`` (itself; override to change)."""
        return key

    def _get(self, key: T) -> U | None:
        with self._get_slots:
            return cast("U | None", self._cache.get(self._get_key(key)))

    def _set(self, key: T, value: U) -> None:
        with self._set_slots:
            self._cache.set(self._get_key(key), value, expire=self._expiration_seconds)

    async def get(self, key: T) -> U | None:
        """The value stored for ``key``, or ``None``."""
        start = anyio.current_time()
        value = await anyio.to_thread.run_sync(self._get, key)
        if self._collect_stats:
            took = anyio.current_time() - start
            self._stats.update_get(hit=value is not None, time_taken=took)
        return value

    async def set(self, key: T, value: U) -> None:
        """Store ``value`` for ``key``."""
        start = anyio.current_time()
        await anyio.to_thread.run_sync(self._set, key, value)
        if self._collect_stats:
            self._stats.update_set(time_taken=anyio.current_time() - start)

    async def clear(self) -> None:
        """Remove every entry."""
        await anyio.to_thread.run_sync(self._cache.clear)

    def clear_stats(self) -> None:
        """Start the counters afresh."""
        self._stats = CacheStats()

    def stats(self) -> CacheStats:
        """The counters (all zero without ``collect_stats``)."""
        return self._stats
