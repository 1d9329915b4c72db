"""Validation of a batcher's settings, with errors that name the setting, rule and value."""

from __future__ import annotations

import functools
import inspect
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any, Literal, final

import attrs

from ._strategies import ByPriority, Fifo, PriorityStrategy, Strategy

__all__ = [
    "BatcherSettings",
    "Settings",
    "check_fn",
    "check_length",
    "default_length",
    "is_async_callable",
    "make_settings",
    "non_negative_float",
    "optional_positive_int",
    "positive_int",
    "public_settings",
    "reconfigure",
    "settings_from",
    "to_strategy",
]


def _int(name: str, value: object) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError  # a bool is an int to operator.index, not a size
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        msg = f"{name!r} must be an int: {value!r}"
        raise TypeError(msg) from None


def positive_int(name: str, value: object) -> int:
    number = _int(name, value)
    if number < 1:
        msg = f"{name!r} must be >= 1: {value!r}"
        raise ValueError(msg)
    return number


def optional_positive_int(name: str, value: object) -> int | None:
    return None if value is None else positive_int(name, value)


def non_negative_int(name: str, value: object) -> int:
    number = _int(name, value)
    if number < 0:
        msg = f"{name!r} must be >= 0: {value!r}"
        raise ValueError(msg)
    return number


def non_negative_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{name!r} must be a number of milliseconds: {value!r}"
        raise TypeError(msg)
    number = float(value)
    if not math.isfinite(number) or number < 0:
        msg = f"{name!r} must be a finite number >= 0: {value!r}"
        raise ValueError(msg)
    return number


def timeout_setting(name: str, value: object) -> float | Literal["auto"]:
    """A number of milliseconds >= 0, or "auto" (the wait chosen per batch)."""
    if isinstance(value, str):
        if value == "auto":
            return "auto"
        msg = f"{name!r} must be a number of milliseconds or 'auto': {value!r}"
        raise ValueError(msg)
    return non_negative_float(name, value)


def to_strategy(value: object) -> Strategy:
    if isinstance(value, PriorityStrategy):
        return value.to_strategy()
    if isinstance(value, type) or not isinstance(value, Strategy):
        msg = (
            f"'strategy' must be a strategy instance such as batched.Fifo() "
            f"or a batched.PriorityStrategy: {value!r}"
        )
        raise TypeError(msg)
    return value


def _unwrap(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` gives an awaitable: ``async def``, an object with an
    ``async def __call__``, or a ``functools.partial`` of either."""
    target = _unwrap(fn)
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(type(target), "__call__", None)  # noqa: B004 - we want the class's
    return not inspect.isroutine(target) and inspect.iscoroutinefunction(call)


def check_fn(fn: object) -> None:
    if not callable(fn):
        msg = f"'fn' must be callable: {fn!r}"
        raise TypeError(msg)
    target = _unwrap(fn)
    if inspect.isasyncgenfunction(target) or inspect.isgeneratorfunction(target):
        msg = (
            f"'fn' must return a list of results, not be a generator function: {fn!r} "
            f"(collect the results into a list and return it)"
        )
        raise TypeError(msg)


def check_optional_callable(name: str, value: object) -> None:
    if value is not None and not callable(value):
        msg = f"{name!r} must be callable or None: {value!r}"
        raise TypeError(msg)


def check_on_batch(value: object) -> None:
    """``on_batch`` is a plain callable or None: it is called, never awaited."""
    if value is None:
        return
    if not callable(value):
        msg = f"'on_batch' must be callable or None: {value!r}"
        raise TypeError(msg)
    if is_async_callable(value):
        msg = (
            f"'on_batch' must be a plain (sync) callable: it is called in the batcher's "
            f"task after each batch, never awaited: {value!r}"
        )
        raise TypeError(msg)


def default_length(item: object) -> int:
    """``len`` of the item; for a mapping, ``len`` of its first value; else 1."""
    if isinstance(item, Mapping):
        for value in item.values():
            return len(value) if hasattr(value, "__len__") else 1
        return 0
    if hasattr(item, "__len__"):
        return len(item)
    return 1


def check_length(length: object, item: object, length_fn: Callable[[Any], Any]) -> int:
    """A length must be an int >= 0; say which item and which function broke that."""
    if type(length) is int and length >= 0:
        return length
    try:
        if isinstance(length, bool):
            raise TypeError
        number = operator.index(length)  # type: ignore[arg-type]
    except TypeError:
        msg = f"'length_fn' must return an int >= 0, got {length!r} for item {item!r}"
        raise TypeError(msg) from None
    if number < 0:
        msg = f"'length_fn' must return an int >= 0, got {length!r} for item {item!r}"
        raise ValueError(msg)
    return int(number)


_FIFO = Fifo()


def _check_pulled(cache: object, isolate_errors: object) -> None:
    """Settings that need a batch function of the batcher's own."""
    if cache is not None:
        msg = (
            "'cache' needs fn: a Batcher without fn hands its batches to consumers, and "
            "does not store their results"
        )
        raise ValueError(msg)
    if isolate_errors is True:
        msg = "'isolate_errors' needs fn: a consumer of batches() answers each batch itself"
        raise ValueError(msg)


@attrs.frozen
class Settings:
    """A batcher's validated settings (see ``Batcher`` for their meaning)."""

    fn: Callable[..., Any] | None  # None: consumers pull the batches (Batcher.batches)
    is_async: bool
    batch_size: int
    timeout_ms: float | Literal["auto"]
    max_batch_length: int | None
    length_fn: Callable[[Any], Any] | None
    strategy: Strategy
    small_batch_threshold: int
    max_wait_ms: float
    max_queue_size: int | None
    max_concurrent_batches: int
    isolate_errors: bool
    cache: Any  # a batched.cache.AsyncCache, or None
    cache_key: Callable[[Any], Any] | None
    dedupe: bool
    # batched.inference: max_batch_length counts the padded size (longest item x items)
    padded: bool = False
    # Lengths are counted without a budget: one was set, then lifted by configure(),
    # and may come back while open (see Core.check).
    counted: bool = False
    on_batch: Callable[[Any], object] | None = None  # called with a batched.BatchInfo
    # batched.inference's allowed_batch_sizes: the cut prefers these sizes (cut.py)
    batch_sizes: tuple[int, ...] = ()


def make_settings(
    fn: object,
    *,
    batch_size: object = 32,
    timeout_ms: object = 5.0,
    max_batch_length: object = None,
    length_fn: object = None,
    strategy: object = _FIFO,
    small_batch_threshold: object = 8,
    max_wait_ms: object = 1000.0,
    max_queue_size: object = None,
    max_concurrent_batches: object = 1,
    isolate_errors: object = False,
    cache: object = None,
    cache_key: object = None,
    dedupe: object = None,
    on_batch: object = None,
) -> Settings:
    if fn is None:
        _check_pulled(cache, isolate_errors)
    else:
        check_fn(fn)
    check_optional_callable("length_fn", length_fn)
    check_optional_callable("cache_key", cache_key)
    check_on_batch(on_batch)
    if cache is not None:
        from .cache import AsyncCache

        if not isinstance(cache, AsyncCache):
            msg = (
                f"'cache' must have async get(key), async set(key, value), async clear() "
                f"and stats() (batched.cache.AsyncCache), or be None: {cache!r}"
            )
            raise TypeError(msg)
    if dedupe is None:
        dedupe = cache is not None
    elif not isinstance(dedupe, bool):
        msg = f"'dedupe' must be a bool or None (on when a cache is set): {dedupe!r}"
        raise TypeError(msg)
    if not isinstance(isolate_errors, bool):
        msg = f"'isolate_errors' must be a bool: {isolate_errors!r}"
        raise TypeError(msg)
    chosen = to_strategy(strategy)
    max_length = optional_positive_int("max_batch_length", max_batch_length)
    # Lengths cost a call per item: compute them only where something reads them.
    if length_fn is None and (max_length is not None or not isinstance(chosen, Fifo | ByPriority)):
        length_fn = default_length
    return Settings(
        fn=fn,  # type: ignore[arg-type]
        is_async=fn is not None and is_async_callable(fn),
        batch_size=positive_int("batch_size", batch_size),
        timeout_ms=timeout_setting("timeout_ms", timeout_ms),
        max_batch_length=max_length,
        length_fn=length_fn,  # type: ignore[arg-type]
        strategy=chosen,
        small_batch_threshold=non_negative_int("small_batch_threshold", small_batch_threshold),
        max_wait_ms=non_negative_float("max_wait_ms", max_wait_ms),
        max_queue_size=optional_positive_int("max_queue_size", max_queue_size),
        max_concurrent_batches=positive_int("max_concurrent_batches", max_concurrent_batches),
        isolate_errors=isolate_errors,
        cache=cache,
        cache_key=cache_key,  # type: ignore[arg-type]
        dedupe=dedupe,
        on_batch=on_batch,  # type: ignore[arg-type]
    )


def settings_from(fn: object, options: Mapping[str, Any]) -> Settings:
    """Settings from a front's options (the decorators' keywords); ``padded`` and
    ``batch_sizes`` are batched.inference's, private: the length budget then counts the
    padded size, and the cut prefers the model's allowed batch sizes."""
    options = dict(options)
    padded = options.pop("padded", False)
    batch_sizes = options.pop("batch_sizes", ())
    settings = make_settings(fn, **options)
    if padded or batch_sizes:
        settings = attrs.evolve(settings, padded=bool(padded), batch_sizes=batch_sizes)
    return settings


# What ``configure`` may change on a running batcher, each checked as the constructor
# checks it. The others shape what the batcher is (its function, pools, cache) and
# are fixed for its life.
_TUNABLE: dict[str, Callable[[str, object], Any]] = {
    "batch_size": positive_int,
    "timeout_ms": timeout_setting,
    "max_batch_length": optional_positive_int,
    "max_queue_size": optional_positive_int,
    "max_concurrent_batches": positive_int,
    "small_batch_threshold": non_negative_int,
    "max_wait_ms": non_negative_float,
}

_FIXED = (
    "fn",
    "length_fn",
    "strategy",
    "cache",
    "cache_key",
    "dedupe",
    "isolate_errors",
    "on_batch",
)


def reconfigure(settings: Settings, changes: Mapping[str, object]) -> Settings:
    """``settings`` with ``changes`` (``configure``'s keywords), checked like the
    constructor's.

    :raises TypeError: a name ``configure`` does not change, or a value of a wrong type
    :raises ValueError: a value out of range
    """
    unknown = [name for name in changes if name not in _TUNABLE]
    if unknown:
        fixed = [name for name in unknown if name in _FIXED]
        names = ", ".join(repr(name) for name in unknown)
        msg = (
            f"configure() cannot change {names}: it changes "
            f"{', '.join(_TUNABLE)}"
            + (" (the others are fixed when the batcher is made)" if fixed else "")
        )
        raise TypeError(msg)
    values: dict[str, Any] = {
        name: _TUNABLE[name](name, value) for name, value in changes.items()
    }
    if settings.max_batch_length is not None:
        values["counted"] = True
    if values.get("max_batch_length") is not None and settings.length_fn is None:
        values["length_fn"] = default_length  # as make_settings does: a budget reads lengths
    return attrs.evolve(settings, **values)


@final
@attrs.frozen
class BatcherSettings:
    """The settings of a batcher or batched function, as they are now (a snapshot).

    Read from ``b.settings``; ``b.configure(...)`` changes the tunable ones
    (``batch_size``, ``timeout_ms``, ``max_batch_length``, ``max_queue_size``,
    ``max_concurrent_batches``, ``small_batch_threshold``, ``max_wait_ms``). Values are
    as checked by the constructor: ``strategy`` is a strategy instance, ``dedupe`` a
    bool, ``length_fn`` the function in force (batched's default where a length budget
    or strategy reads lengths and none was given).
    """

    fn: Callable[..., Any] | None
    batch_size: int
    timeout_ms: float | Literal["auto"]
    max_batch_length: int | None
    length_fn: Callable[[Any], Any] | None
    strategy: Strategy
    small_batch_threshold: int
    max_wait_ms: float
    max_queue_size: int | None
    max_concurrent_batches: int
    cache: Any
    cache_key: Callable[[Any], Any] | None
    dedupe: bool
    isolate_errors: bool
    on_batch: Callable[[Any], object] | None


def public_settings(settings: Settings) -> BatcherSettings:
    """The public snapshot of ``settings``."""
    return BatcherSettings(
        fn=settings.fn,
        batch_size=settings.batch_size,
        timeout_ms=settings.timeout_ms,
        max_batch_length=settings.max_batch_length,
        length_fn=settings.length_fn,
        strategy=settings.strategy,
        small_batch_threshold=settings.small_batch_threshold,
        max_wait_ms=settings.max_wait_ms,
        max_queue_size=settings.max_queue_size,
        max_concurrent_batches=settings.max_concurrent_batches,
        cache=settings.cache,
        cache_key=settings.cache_key,
        dedupe=settings.dedupe,
        isolate_errors=settings.isolate_errors,
        on_batch=settings.on_batch,
    )
