"""Sync batch functions called from threads, each served by one event-loop thread.

``SyncBatchedFunction`` blocks its calling thread (``f(item)``) and serves async callers
too (``await f.acall(item)``); both hand their calls to the serving thread
(``_run.thread``), so calls from threads and event loops batch together.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import weakref
from contextvars import copy_context
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, final, overload

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._backends import current, in_event_loop
from .._core.counts import Counts
from .._core.items import check_priority, length_of
from .._core.queue import STOPPED
from .._errors import BatcherClosed
from .._keyed import cache_stats
from .._run.thread import Server, ThreadCall
from .._settings import BatcherSettings, public_settings, reconfigure, settings_from
from .._strategies import Entry
from .._typing import deprecated
from .decorator import Binding, weak_method
from .submit import closed, keyed_many, keyed_one

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType
    from typing import Self

    from .._run.owned import Owned
    from .._stats import BatchStats
    from .decorator import BatcherOptions

__all__ = ["SyncBatchedFunction", "SyncBatchedMethod", "SyncFront"]

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S", contravariant=True)


def _stop_current(box: list[Server | None]) -> None:
    server = box[0]
    if server is not None:
        server.stop_soon()


_live: weakref.WeakSet[SyncFront[Any, Any]] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # At exit a hung batch function must not hold the interpreter: bounded waits.
    for function in list(_live):
        function._close(timeout=5.0)


def _start_afresh_after_fork() -> None:
    # The child of a fork has only the thread that forked: no serving thread of the
    # parent runs here, and a lock another thread held then stays held. Every function
    # serves the child from a thread of its own, started on first use.
    for function in list(_live):
        function._forget_parent()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_start_afresh_after_fork)


class SyncFront(Binding, Generic[T, R]):
    """The sync front: ``SyncBatchedFunction`` and the seed's ``BatchProcessor``."""

    __slots__ = (
        "__dict__",
        "__weakref__",
        "_closed",
        "_counts",
        "_fn",
        "_lock",
        "_server",
        "_settings",
        "_stopped",
    )

    def __init__(self, fn: Any, options: BatcherOptions) -> None:
        self._fn = fn = self._init_binding(fn, options)
        self._settings = settings_from(fn, options)  # checked now, at decoration time
        self._counts = Counts()  # over every serving thread this function will have
        self._lock = threading.Lock()
        self._server: Server | None = None
        self._closed = False
        self._stopped = False  # stop_accepting(), until reopened (start(), `with f:`)
        # One finalizer for every server this function will have: collecting the
        # function (a method's, with its instance) stops the current one.
        self._box: list[Server | None] = [None]
        weakref.finalize(self, _stop_current, self._box)
        _live.add(self)  # closed at exit; starts afresh in the child of a fork

    def _rebind(self, fn: Callable[..., Any]) -> Any:
        instance = getattr(fn, "__self__", None)
        func = getattr(fn, "__func__", None)
        if func is not None and not isinstance(instance, type):
            # The serving thread holds the instance weakly, so that the instance and its
            # binding (which holds it, see Binding) are collected together. Not weakly
            # referable: the serving thread keeps it until close().
            with contextlib.suppress(TypeError):
                fn = weak_method(func, instance)
        return SyncBatchedFunction(fn, self._options)

    def __repr__(self) -> str:
        name = getattr(self.__wrapped__, "__qualname__", self.__wrapped__)
        return f"<batched sync function {name!r}>"

    @property
    def stats(self) -> BatchStats:
        """A snapshot of the counters over every call (see :class:`BatchStats`)."""
        server = self._server
        run = server.run if server is not None else None
        return self._counts.snapshot(
            run.core.queued if run is not None else 0,
            cache_stats(self._settings.cache, self._counts),
        )

    # -- steering (safe from any thread) -----------------------------------------------

    @property
    def settings(self) -> BatcherSettings:
        """The settings now in force (a frozen snapshot; see :meth:`configure`)."""
        return public_settings(self._settings)

    def configure(self, **settings: Any) -> None:
        """Change settings (see :meth:`Batcher.configure`), from any thread: the
        change is handed to the serving thread and in force when this returns (from
        inside ``fn`` too); with no serving thread, from its next start.

        :raises TypeError: a setting this does not change, or a value of a wrong type
        :raises ValueError: a value out of range, or ``max_batch_length`` set while a
            serving thread started without one runs
        """
        with self._lock:
            new = reconfigure(self._settings, settings)
            server = self._server
            run = server.run if server is not None else None
            if run is not None:
                run.core.check(new)  # reads what is fixed while the core lives
            self._settings = new
            # Handed over under the lock, so that changes apply in the order they
            # were made; waited for outside it.
            done = server.configure(new) if server is not None else None
        if done is not None:
            done.wait()

    def stop_accepting(self) -> None:
        """Refuse new calls with :exc:`BatcherClosed` while calls already accepted are
        served (see :meth:`Batcher.stop_accepting`); safe from any thread.
        :meth:`start` or ``with f:`` accepts calls again."""
        with self._lock:
            self._stopped = True
            server = self._server
            if server is not None:
                server.stop_accepting()

    @property
    def accepting(self) -> bool:
        """Whether a call made now would be accepted: not closed, not stopped."""
        return not (self._closed or self._stopped)

    # -- lifecycle ---------------------------------------------------------------------

    def _keyed(self) -> Callable[[Owned, ThreadCall, bool], Any] | None:
        settings, counts = self._settings, self._counts
        if settings.cache is None and not settings.dedupe:
            return None

        async def keyed(run: Owned, call: ThreadCall, wait: bool) -> Any:
            def open_run() -> Owned:
                if not run.core.accepting:
                    raise closed(run)
                return run

            if call.entries is None:
                return await keyed_one(counts, open_run, call.item, call.priority, wait, settings)
            items = [entry.item for entry in call.entries]
            return await keyed_many(counts, open_run, items, call.priority, wait, settings)

        return keyed

    def _serve(self) -> Server:
        with self._lock:
            if self._closed:
                msg = "this batched function is closed (reopen it with `with f:`)"
                raise BatcherClosed(msg)
            server = self._server
            if server is None or server.ended:  # first use, or fn's BaseException ended it
                name = getattr(self._fn, "__qualname__", type(self._fn).__qualname__)
                server = Server(self._settings, self._counts, name, self._keyed())
                server.start()
                self._server = self._box[0] = server
            return server

    def _server_or_refuse(self, n: int) -> Server:
        server = self._server
        if self._stopped:
            self._counts.refused_anywhere(n)  # counted here: the serving loop never sees the call
            raise BatcherClosed(STOPPED)
        if server is not None and not server.ended:
            return server
        try:
            return self._serve()
        except BatcherClosed:
            self._counts.refused_anywhere(n)  # no serving thread counts it
            raise

    def start(self) -> None:
        """Start the serving thread now, if it is not running (it also starts on first
        use); reopens a function that :meth:`shutdown` or :meth:`close` closed."""
        self._reopen()
        self._serve()

    def _reopen(self) -> None:
        """Accept calls again; a serving thread that stopped accepting drains and ends
        first (the next call starts a fresh one)."""
        with self._lock:
            server = self._server if self._stopped else None
            if server is not None:
                self._server = None
        if server is not None:
            server.stop(None)
        with self._lock:
            self._closed = self._stopped = False

    def shutdown(self) -> None:
        """:meth:`close`, by the name mixedbread's ``batched`` gives it."""
        self.close()

    def clear_stats(self) -> None:
        """Forget the counters so far; items still waiting or running stay counted as
        submitted, so the counters keep adding up. Safe from any thread."""
        self._counts.clear()

    def _forget_parent(self) -> None:
        """In the child of a fork: drop the parent's serving thread and lock, and count
        the child's calls alone (the parent's calls in flight never end here)."""
        self._lock = threading.Lock()
        self._server = self._box[0] = None
        self._counts.reset()

    def close(self) -> None:
        """Finish the accepted calls and stop the serving thread; later calls raise
        :exc:`BatcherClosed`. Blocks until then (but from inside the function's own
        batch, where it cannot wait for that batch); idempotent."""
        self._close(None)

    def _close(self, timeout: float | None) -> None:
        with self._lock:
            self._closed = True
            server, self._server = self._server, None
        if server is not None:
            server.stop(timeout)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> Self:
        """Open (or reopen) the function; the block's end closes it."""
        self._reopen()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- calls -------------------------------------------------------------------------

    def _make_call(
        self, server: Server, item: Any, items: list[Any] | None, priority: float
    ) -> ThreadCall:
        """The call, checked in the caller's thread; a refusal is counted by the loop."""
        settings = self._settings
        try:
            if type(priority) is not int:
                priority = check_priority(priority)
            length_fn = settings.length_fn
            if items is None:
                call = ThreadCall(item)
                if length_fn is not None:
                    call.length = length_of(length_fn, item)
            else:
                call = ThreadCall(None)
                if length_fn is None:
                    call.init_many([Entry(one, 1, priority) for one in items])
                else:
                    call.init_many(
                        [Entry(one, length_of(length_fn, one), priority) for one in items]
                    )
        except BaseException:
            assert server.post is not None
            server.post(self._counts.refused, 1 if items is None else len(items))
            raise
        if priority:
            call.priority = priority
        call.ctx = copy_context()  # the calling thread's; no task: no deadline
        return call

    def _send(self, server: Server, call: ThreadCall, wait: bool) -> None:
        with self._lock:
            if self._server is not server or server.ended:
                # Closed since the call was made: no serving thread will count it.
                self._counts.refused_anywhere(call.n)
                msg = "this batched function is closed"
                raise BatcherClosed(msg)
            server.send(call, wait)

    def _block(self, item: Any, items: list[Any] | None, priority: float, wait: bool) -> Any:
        if in_event_loop():
            name = getattr(self.__wrapped__, "__name__", "f")
            msg = (
                f"{name}() would block this thread, which runs an event loop: "
                f"use `await {name}.acall(...)` here"
            )
            raise RuntimeError(msg)
        server = self._server_or_refuse(1 if items is None else len(items))
        call = self._make_call(server, item, items, priority)
        lock = threading.Lock()
        lock.acquire()
        call.waiter = lock.release
        self._send(server, call, wait)
        try:
            lock.acquire()
        except BaseException:  # interrupted (KeyboardInterrupt): drop what still waits
            assert server.post is not None
            server.post(server.abandon, call)
            raise
        return server.outcome(call)

    @overload
    def __call__(self, item: list[T], *, priority: float = 0, wait: bool = True) -> list[R]: ...

    @overload
    @deprecated("its items are lists, so a list is many items: call .one(item) for one item")
    def __call__(
        self: SyncFront[list[Any], R], item: list[Any], *, priority: float = 0, wait: bool = True
    ) -> list[R]: ...

    @overload
    def __call__(self, item: T, *, priority: float = 0, wait: bool = True) -> R: ...

    def __call__(self, item: Any, *, priority: float = 0, wait: bool = True) -> Any:
        """``f(item)`` → its result; ``f(list_of_items)`` → their results; blocks.

        :raises RuntimeError: when called from a thread that runs an event loop (use
            :meth:`acall` there)
        """
        if isinstance(item, list):
            return self.many(item, priority=priority, wait=wait)
        return self._block(item, None, priority, wait)

    def one(self, item: T, *, priority: float = 0, wait: bool = True) -> R:
        """One item's result, also when the item is itself a list; blocks."""
        return self._block(item, None, priority, wait)  # type: ignore[no-any-return]

    def many(self, items: Iterable[T], *, priority: float = 0, wait: bool = True) -> list[R]:
        """Many items as one call; their results in the same order; blocks."""
        items = list(items)
        if len(items) == 1:
            return [self._block(items[0], None, priority, wait)]
        if not items:
            return []
        return self._block(None, items, priority, wait)  # type: ignore[no-any-return]

    @overload
    async def acall(self, item: list[T], *, priority: float = 0, wait: bool = True) -> list[R]: ...

    @overload
    @deprecated("its items are lists, so a list is many items: call .one(item) for one item")
    async def acall(
        self: SyncFront[list[Any], R], item: list[Any], *, priority: float = 0, wait: bool = True
    ) -> list[R]: ...

    @overload
    async def acall(self, item: T, *, priority: float = 0, wait: bool = True) -> R: ...

    async def acall(self, item: Any, *, priority: float = 0, wait: bool = True) -> Any:
        """``await f.acall(item)``: the same call for async callers (asyncio or trio);
        a list gives a list. Cancelling it drops the item if it still waits."""
        items: list[Any] | None = None
        if isinstance(item, list):
            if len(item) != 1:
                if not item:
                    await anyio.lowlevel.checkpoint()
                    return []
                items = item
            else:
                return [await self.acall_one(item[0], priority=priority, wait=wait)]
        return await self._await(item, items, priority, wait)

    async def acall_one(self, item: T, *, priority: float = 0, wait: bool = True) -> R:
        """:meth:`one` for async callers."""
        return await self._await(item, None, priority, wait)  # type: ignore[no-any-return]

    async def _await(self, item: Any, items: list[Any] | None, priority: float, wait: bool) -> Any:
        n = 1 if items is None else len(items)
        server = self._server
        if server is None or server.ended:
            # Starting the serving thread waits for its event loop: not in this one's.
            server = await anyio.to_thread.run_sync(self._server_or_refuse, n)
        call = self._make_call(server, item, items, priority)

        def send(notify: Callable[[], None]) -> None:
            call.waiter = notify
            self._send(server, call, wait)

        def abandon() -> None:
            assert server.post is not None
            server.post(server.abandon, call)

        await current().wait_for_thread(send, abandon)
        return server.outcome(call)


@final
class SyncBatchedFunction(SyncFront[T, R]):
    """A sync batch function, called one item at a time from any number of threads.

    ``f(item)`` blocks its thread until the item's result is ready; ``f([a, b])`` gives
    a list. Calls from all threads batch together in one event-loop thread, started on
    first use and stopped by :meth:`close`, ``with f:`` or interpreter exit.
    ``await f.acall(item)`` serves async callers on asyncio or trio. Made by
    :func:`batched.dynamically` on a plain ``def``.
    """

    __slots__ = ()


class SyncBatchedMethod(Protocol[S, T, R]):
    """What :func:`batched.dynamically` gives for a sync method (typing only)."""

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Self: ...

    @overload
    def __get__(
        self, instance: S, owner: type[Any] | None = None, /
    ) -> SyncBatchedFunction[T, R]: ...
