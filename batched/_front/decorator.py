"""``batched.dynamically``'s async front: a batch function called one item at a time.

``BatchedFunction`` serves awaiting callers. Inside ``async with f:`` its calls go to a
``Batcher`` owned by that block; outside it, the callers drive the batching themselves
(``_run.driven``), so nothing outlives the calls. Methods get one batched function per
instance (``Binding``), made on first access.
"""

from __future__ import annotations

import copy
import functools
import warnings
import weakref
from collections.abc import Callable, Hashable  # noqa: TC003 - BatcherOptions' annotations
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    Protocol,
    TypedDict,
    TypeVar,
    final,
    overload,
)

import anyio.lowlevel

from .._backends import loop_key
from .._keyed import cache_stats
from .._observe import BatchInfo  # noqa: TC001 - BatcherOptions' annotations
from .._run.driven import Driven
from .._settings import (
    BatcherSettings,
    is_async_callable,
    public_settings,
    reconfigure,
    settings_from,
)
from .._typing import deprecated
from .batcher import Batcher, nothing
from .submit import keyed_many, keyed_one, submit_many

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterable
    from types import TracebackType
    from typing import Self

    from .._stats import BatchStats
    from .._strategies import PriorityStrategy, Strategy
    from ..cache import AsyncCache

__all__ = [
    "AsyncFront",
    "BatchedFunction",
    "BatchedMethod",
    "BatcherOptions",
    "Binding",
    "check_options",
    "weak_method",
]

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S", contravariant=True)


class BatcherOptions(TypedDict, total=False):
    """The settings of a :class:`Batcher`, as keyword arguments of the decorators.

    Also the keywords of mixedbread's ``batched``: ``priority_strategy`` (the
    ``strategy``, as a :class:`PriorityStrategy`) and ``batch_item_cls`` (accepted, with
    a warning: it has no effect here).
    """

    batch_size: int
    timeout_ms: float | Literal["auto"]
    max_batch_length: int | None
    length_fn: Callable[[Any], int] | None
    strategy: Strategy | PriorityStrategy
    small_batch_threshold: int
    max_wait_ms: float
    max_queue_size: int | None
    max_concurrent_batches: int
    cache: AsyncCache[Any, Any] | None
    cache_key: Callable[[Any], Hashable] | None
    dedupe: bool | None
    isolate_errors: bool
    on_batch: Callable[[BatchInfo], object] | None
    priority_strategy: PriorityStrategy
    batch_item_cls: object


# How a decorated callable binds when it is looked up on a class or an instance.
PLAIN = 0  # a function: binds to the instance (a method), if it is a descriptor
STATIC = 1  # a staticmethod: never binds
CLASS = 2  # a classmethod: binds to the class


class Binding:
    """Method binding shared by the async and sync front-ends.

    A decorated function defined in a class body binds to each instance on first
    access: one batcher per instance, kept in the instance's ``__dict__`` under a key of
    this descriptor's own (collected with the instance; a ``super()`` call reaches an
    overridden one), or in a weak mapping for instances without one. A binding kept in
    the ``__dict__`` holds its instance, as a bound method does, so that it works held
    alone (``f = Model().predict``). A copied or unpickled instance gets a batcher of its
    own, never its original's; like a bound method, such a binding deep-copies and
    pickles to the method of the copied or unpickled instance.
    """

    __slots__ = ("_bound", "_for", "_key", "_kind", "_name", "_options", "_origin")

    __wrapped__: Callable[..., Any]

    def _init_binding(self, fn: Any, options: BatcherOptions) -> Any:
        """Record how ``fn`` binds; the callable to batch now (unbound)."""
        if isinstance(fn, staticmethod):
            self._kind, fn = STATIC, fn.__func__
        elif isinstance(fn, classmethod):
            self._kind, fn = CLASS, fn.__func__
        else:
            self._kind = PLAIN
        self._options: BatcherOptions = options
        self._name: str | None = None
        self._bound: weakref.WeakKeyDictionary[Any, Any] | None = None
        self._key = f"__batched_{id(self):x}"  # where an instance keeps its binding
        # A binding kept in an instance's __dict__: the instance it serves, and the
        # descriptor that made it (both None for any other).
        self._for: object = None
        self._origin: Binding | None = None
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        return fn

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        instance, origin = self._for, self._origin
        if origin is None:
            return self  # a decorated function: shared, as a function is
        # As a bound method: the copy's method. The copy of the instance is the one made
        # elsewhere in this deep copy (memo); copying the instance itself comes here for
        # the binding in its __dict__, and the copy gets a binding of its own, never the
        # original's (which holds loop-bound state).
        copied = copy.deepcopy(instance, memo)
        done = memo.get(id(self))  # made while the instance was copied
        return done if done is not None else origin._bind(copied)

    def __reduce__(self) -> str | tuple[Callable[..., Any], tuple[Any, ...]]:
        origin = self._origin
        if origin is not None:
            # As a bound method pickles: the instance, and the method looked up on it when
            # unpickled (a binding of the unpickled instance's own).
            return getattr, (self._for, origin._name or origin.__dict__["__name__"])
        name: str = self.__dict__["__qualname__"]  # set by functools.update_wrapper
        return name  # by reference, like the function it decorates

    def _bind(self, instance: object) -> Any:
        """A new binding of this descriptor for ``instance``, to keep in its __dict__."""
        new = self._rebind(self.__wrapped__.__get__(instance))
        new._for = instance
        new._origin = self
        return new

    def _rebind(self, fn: Callable[..., Any]) -> Any:
        raise NotImplementedError

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        kind = self._kind
        if kind == STATIC:
            return self
        fn = self.__wrapped__
        if kind == CLASS:
            target: Any = owner if owner is not None else type(instance)
        else:
            if instance is None or not hasattr(type(fn), "__get__"):
                return self  # looked up on the class, or a callable object in a class body
            target = instance
            namespace = getattr(instance, "__dict__", None)
            if type(namespace) is dict:
                key = self._key
                bound = namespace.get(key)
                if bound is None or bound._for is not instance:
                    # None yet, or a shallow copy's, made for the original it came from.
                    new = self._bind(instance)
                    if bound is None:
                        bound = namespace.setdefault(key, new)  # a racing thread may win
                    if bound is None or bound._for is not instance:
                        namespace[key] = bound = new  # a copy's
                return bound
        # No __dict__ (or a class): a weak mapping, whose values bind their key weakly so
        # that they do not keep it alive.
        bound_map = self._bound
        if bound_map is None:
            bound_map = self._bound = weakref.WeakKeyDictionary()
        try:
            bound = bound_map.get(target)
            if bound is None:
                bound = bound_map.setdefault(target, self._rebind(weak_method(fn, target)))
        except TypeError:
            msg = (
                f"cannot keep a batcher per instance of {type(target).__qualname__}: it has "
                f"no __dict__ and no weak reference (add '__weakref__' to its __slots__)"
            )
            raise TypeError(msg) from None
        return bound


class _WeakMethod:
    """A function bound to its instance weakly: a batcher per instance must not keep
    the instance alive (it may live in a weak mapping, or a serving thread)."""

    def __init__(self, func: Callable[..., Any], instance: object) -> None:
        functools.update_wrapper(self, func)
        self.func = func
        self.ref = weakref.ref(instance)

    def _instance(self) -> object:
        instance = self.ref()
        if instance is None:
            msg = "the instance of this batched method is gone"
            raise ReferenceError(msg)
        return instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(self._instance(), *args, **kwargs)


class _AsyncWeakMethod(_WeakMethod):
    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self.func(self._instance(), *args, **kwargs)


def weak_method(func: Callable[..., Any], instance: object) -> Callable[[list[Any]], Any]:
    """``func`` bound weakly to ``instance``; async if ``func`` is."""
    if is_async_callable(func):
        return _AsyncWeakMethod(func, instance)
    return _WeakMethod(func, instance)


class AsyncFront(Binding, Generic[T, R]):
    """The async front: ``BatchedFunction`` and the seed's ``AsyncBatchProcessor``."""

    __slots__ = (
        "__dict__",
        "__weakref__",
        "_batcher",
        "_drivers",
        "_owner",
        "_settings",
        "_stopped",
    )

    def __init__(self, fn: Any, options: BatcherOptions) -> None:
        fn = self._init_binding(fn, options)
        # Checks the settings now, at decoration time.
        self._settings = settings_from(fn, options)
        # The batcher of `async with f:`; its counters count every call of the function.
        self._batcher: Batcher[T, R] = Batcher._from_settings(self._settings)
        self._drivers: dict[object, Driven] = {}  # caller-driven, one per event loop
        self._owner: object = None  # the event loop of the open `async with` block
        self._stopped = False  # stop_accepting(), until the next `async with f:`

    def _rebind(self, fn: Callable[..., Any]) -> Any:
        return BatchedFunction(fn, self._options)

    def __repr__(self) -> str:
        return f"<batched function {getattr(self.__wrapped__, '__qualname__', self.__wrapped__)!r}>"

    @property
    def stats(self) -> BatchStats:
        """A snapshot of the counters over every call (see :class:`BatchStats`)."""
        run = self._batcher._run
        queued = run.core.queued if run is not None else 0
        queued += sum([driver.core.queued for driver in list(self._drivers.values())])
        counts = self._batcher._counts
        return counts.snapshot(queued, cache_stats(self._settings.cache, counts))

    def clear_stats(self) -> None:
        """Forget the counters so far; items still waiting or running stay counted as
        submitted, so the counters keep adding up."""
        self._batcher._counts.clear()

    # -- steering ----------------------------------------------------------------------

    @property
    def settings(self) -> BatcherSettings:
        """The settings now in force (a frozen snapshot; see :meth:`configure`)."""
        return public_settings(self._settings)

    def configure(self, **settings: Any) -> None:
        """Change settings (see :meth:`Batcher.configure`): for the batcher of
        ``async with f:`` and for the batching its callers run outside it, now and
        from then on. Call it from a task; nothing changes if a setting is refused.

        :raises TypeError: a setting this does not change, or a value of a wrong type
        :raises ValueError: a value out of range, or ``max_batch_length`` set while
            calls made without one are being batched
        """
        new = reconfigure(self._settings, settings)
        drivers = [driver for driver in self._drivers.values() if driver.core.accepting]
        for driver in drivers:
            driver.core.check(new)  # all or nothing: check each before changing any
        self._batcher.configure(**settings)
        for driver in drivers:
            driver.configure(new)
        self._settings = new

    def stop_accepting(self) -> None:
        """Refuse new calls with :exc:`BatcherClosed` while calls already accepted are
        served (see :meth:`Batcher.stop_accepting`), until the next ``async with f:``."""
        self._stopped = True
        self._batcher.stop_accepting()
        for driver in list(self._drivers.values()):
            driver.core.stop_accepting()

    @property
    def accepting(self) -> bool:
        """Whether a call made now would be accepted (False after :meth:`stop_accepting`)."""
        return not self._stopped

    # -- the seed's lifecycle: nothing to start or stop ----------------------------------

    async def start(self) -> None:
        """Nothing to start: outside ``async with f:`` the callers run the batches
        themselves. Kept for code written for mixedbread's ``batched``."""
        await anyio.lowlevel.checkpoint()

    async def shutdown(self) -> None:
        """Nothing to stop: outside ``async with f:`` no task outlives the calls. Kept for
        code written for mixedbread's ``batched``."""
        await anyio.lowlevel.checkpoint()

    # -- `async with f:` ---------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Serve the calls of this event loop from a batcher owned by this block."""
        await self._batcher.__aenter__()
        self._owner = loop_key()
        self._stopped = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Close the block's batcher (see :meth:`Batcher.__aexit__`)."""
        self._owner = None
        return await self._batcher.__aexit__(exc_type, exc, tb)

    # -- calls -------------------------------------------------------------------------

    @overload
    def __call__(
        self, item: list[T], *, priority: float = 0, wait: bool = True
    ) -> Coroutine[Any, Any, list[R]]: ...

    @overload
    @deprecated("its items are lists, so a list is many items: call .one(item) for one item")
    def __call__(
        self: AsyncFront[list[Any], R], item: list[Any], *, priority: float = 0, wait: bool = True
    ) -> Coroutine[Any, Any, list[R]]: ...

    @overload
    def __call__(
        self, item: T, *, priority: float = 0, wait: bool = True
    ) -> Coroutine[Any, Any, R]: ...

    def __call__(self, item: Any, *, priority: float = 0, wait: bool = True) -> Any:
        """``await f(item)`` → its result; ``await f(list_of_items)`` → their results.

        :param priority: lower is more urgent (read by :class:`ByPriority`)
        :param wait: raise :exc:`QueueFull` instead of waiting for queue room
        """
        if isinstance(item, list):
            return self.many(item, priority=priority, wait=wait)
        return self.one(item, priority=priority, wait=wait)

    @overload
    def acall(
        self, item: list[T], *, priority: float = 0, wait: bool = True
    ) -> Coroutine[Any, Any, list[R]]: ...

    @overload
    @deprecated("its items are lists, so a list is many items: call .one(item) for one item")
    def acall(
        self: AsyncFront[list[Any], R], item: list[Any], *, priority: float = 0, wait: bool = True
    ) -> Coroutine[Any, Any, list[R]]: ...

    @overload
    def acall(
        self, item: T, *, priority: float = 0, wait: bool = True
    ) -> Coroutine[Any, Any, R]: ...

    def acall(self, item: Any, *, priority: float = 0, wait: bool = True) -> Any:
        """The same as calling ``f``: the name a sync batched function's async callers use."""
        if isinstance(item, list):
            return self.many(item, priority=priority, wait=wait)
        return self.one(item, priority=priority, wait=wait)

    def one(self, item: T, *, priority: float = 0, wait: bool = True) -> Coroutine[Any, Any, R]:
        """One item's result, also when the item is itself a list."""
        key = loop_key()
        batcher = self._batcher
        if batcher._run is not None and self._owner is key:
            return batcher(item, priority=priority, wait=wait)
        if batcher._keyed:
            opener = functools.partial(self._driver_for, key)
            return keyed_one(batcher._counts, opener, item, priority, wait, self._settings)
        return self._driven_one(key, item, priority, wait)

    def many(
        self, items: Iterable[T], *, priority: float = 0, wait: bool = True
    ) -> Coroutine[Any, Any, list[R]]:
        """Many items as one call; their results in the same order (see :meth:`Batcher.many`)."""
        key = loop_key()
        batcher = self._batcher
        if batcher._run is not None and self._owner is key:
            return batcher.many(items, priority=priority, wait=wait)
        items = list(items)
        if batcher._keyed:
            opener = functools.partial(self._driver_for, key)
            return keyed_many(batcher._counts, opener, items, priority, wait, self._settings)
        return self._driven_many(key, items, priority, wait)

    # -- caller-driven batching --------------------------------------------------------

    def _driver_for(self, key: object) -> Driven:
        """This event loop's caller-driven driver, made afresh if there is none."""
        drivers = self._drivers
        driver = drivers.get(key)
        # A stopped driver still serves what it accepted: it stays, and refuses calls,
        # until the function accepts again (then a fresh one takes the new calls).
        if driver is None or not (
            driver.core.accepting or (self._stopped and driver.core.stopped)
        ):
            driver = drivers[key] = Driven(self._settings, self._batcher._counts, drivers)
            if self._stopped:  # its core refuses the call, counted, with the reason
                driver.core.stop_accepting()
        return driver

    async def _driven_one(self, key: object, item: Any, priority: float, wait: bool) -> Any:
        driver = self._driver_for(key)
        try:
            call = driver.core.call_one(driver.new_call, item, priority, wait)
        except BaseException:
            driver.release()
            raise
        await driver.serve(call)
        return call.outcome()

    async def _driven_many(
        self, key: object, items: list[Any], priority: float, wait: bool
    ) -> list[Any]:
        if not items:
            return await nothing(priority)
        driver = self._driver_for(key)
        try:
            if len(items) == 1:  # one item travels as a single call does
                call = driver.core.call_one(driver.new_call, items[0], priority, wait)
            else:
                call = submit_many(driver, items, priority, wait)
        except BaseException:
            driver.release()
            raise
        await driver.serve(call)
        result = call.outcome()
        return result if call.entries is not None else [result]


@final
class BatchedFunction(AsyncFront[T, R]):
    """An async batch function, called one item (or one list of items) at a time.

    ``await f(item)`` gives that item's result; ``await f([a, b])`` a list of results.
    An item that is itself a ``list`` must go through :meth:`one` (or :meth:`many` for
    several). Outside ``async with f:`` the waiting callers run the batches themselves;
    the caller whose task runs a batch sees its own cancellation only when ``fn``
    returns. Made by :func:`batched.dynamically`.
    """

    __slots__ = ()


class BatchedMethod(Protocol[S, T, R]):
    """What :func:`batched.dynamically` gives for an async method (typing only).

    Looked up on an instance, it is that instance's :class:`BatchedFunction`.
    """

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Self: ...

    @overload
    def __get__(self, instance: S, owner: type[Any] | None = None, /) -> BatchedFunction[T, R]: ...


def check_options(options: dict[str, Any], stacklevel: int = 3) -> BatcherOptions:
    """The decorator's settings; an unknown name is a TypeError naming it.

    The seed's keywords become settings here (``priority_strategy`` is the ``strategy``;
    ``batch_item_cls`` is dropped with a warning, shown on the user's line: ``stacklevel``
    frames up, the caller's caller by default).
    """
    unknown = set(options) - set(BatcherOptions.__annotations__)
    if unknown:
        names = ", ".join(repr(name) for name in sorted(unknown))
        msg = f"unknown setting(s) for a batched function: {names}"
        raise TypeError(msg)
    if "priority_strategy" in options or "batch_item_cls" in options:
        options = dict(options)
        if "priority_strategy" in options:
            if "strategy" in options:
                msg = "give 'strategy' or its seed name 'priority_strategy', not both"
                raise TypeError(msg)
            options["strategy"] = options.pop("priority_strategy")
        if options.pop("batch_item_cls", None) is not None:
            warnings.warn(
                "batch_item_cls=... has no effect: items are kept by the batcher "
                "(see batched.Strategy to order them)",
                UserWarning,
                stacklevel=stacklevel,
            )
    return options  # type: ignore[return-value]
