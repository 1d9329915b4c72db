"""Sync batch functions called from threads: one event-loop thread serves each.

A blocking caller never enters the event loop: it makes its request in its own thread,
appends it to a thread-safe deque and sleeps on a lock. The serving thread moves the
deque into its batcher on one ``call_soon_threadsafe`` per burst (not per call), runs
the batches (``fn`` in a worker thread) and releases each caller's lock. Async callers
(``acall``) take the same way and are woken through their own event loop, so calls from
threads and from event loops batch together. Only the serving thread touches the
batcher and its counters.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import inspect
import sys
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, final, overload

import anyio
import anyio.lowlevel
import anyio.to_thread

from ._batcher import Batcher, check_priority, new_batcher, raise_error
from ._call import CANCELLED, DONE, ROOM, Call
from ._decorator import Binding, weak_method
from ._engine import OPEN
from ._errors import BatcherClosed
from ._keyed import cache_stats
from ._stats import _Recorder
from ._strategies import Entry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType
    from typing import Self

    from anyio.abc import TaskGroup

    from ._decorator import BatcherOptions
    from ._engine import Engine
    from ._stats import BatchStats

__all__ = ["SyncBatchedFunction", "SyncBatchedMethod", "SyncFront"]

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S", contravariant=True)


@final
class _ThreadCall(Call):
    """A call from outside the serving loop: ``waiter`` wakes its caller, wherever it is.

    ``wake`` runs in the serving thread, so the outcome is counted there.
    """

    __slots__ = ("stats",)

    stats: _Recorder

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is None:
            return
        self.waiter = None
        error = self.error
        if error is None:
            self.stats.completed += self.n
        elif not isinstance(error, anyio.WouldBlock):  # QueueFull: counted as rejected
            self.stats.failed += self.n
        waiter()


def _in_event_loop() -> bool:
    if asyncio._get_running_loop() is not None:
        return True
    trio = sys.modules.get("trio")
    return trio is not None and bool(trio.lowlevel.in_trio_run())


class _Inside(threading.local):
    server: _Server | None = None  # whose batch function this thread is running


_inside = _Inside()


class _Server:
    """The event-loop thread of one sync batched function, and its batcher."""

    def __init__(self, fn: Callable[..., Any], options: BatcherOptions, stats: _Recorder) -> None:
        name = getattr(fn, "__qualname__", type(fn).__qualname__)
        if options.get("max_concurrent_batches", 1) == 1:
            # One batch at a time: run fn in this thread, sparing two thread hops per
            # batch (calls arriving meanwhile wait in `pending` as they would in the
            # batcher), but outside the event loop as far as fn can tell, so that fn may
            # call other blocking batched functions or run an event loop of its own.
            sync_fn = fn

            async def run_here(items: list[Any]) -> Any:
                loop = asyncio.events._get_running_loop()
                asyncio.events._set_running_loop(None)
                try:
                    out = sync_fn(items)
                finally:
                    asyncio.events._set_running_loop(loop)
                if inspect.isawaitable(out):  # a plain function that hands back a coroutine
                    out = await out
                return out

            fn = run_here
        else:
            threaded_fn = fn

            def in_worker(items: list[Any]) -> Any:
                # Marks the worker thread, so that close() called from inside fn does not
                # wait for the serving thread, which waits for this very batch.
                _inside.server = self
                try:
                    return threaded_fn(items)
                finally:
                    _inside.server = None

            fn = in_worker
        self.batcher: Batcher[Any, Any] = new_batcher(fn, options)
        self.batcher._stats = stats
        # Under a cache or dedupe a call needs a task (the cache read is awaited): a
        # bridge per call, cancelled if its async caller leaves.
        self.keyed = self.batcher._keyed
        self.bridges: dict[Call, anyio.CancelScope] = {}
        self.to_bridge: deque[tuple[_ThreadCall, bool]] = deque()
        self.bridge_event = asyncio.Event()
        self.stats = stats
        self.pending: deque[tuple[_ThreadCall, bool]] = deque()
        self.scheduled = False  # a flush is on its way to the loop
        self.engine: Engine | None = None
        self.last_engine: Engine | None = None  # its `cause` is set before callers wake
        self.ended = False  # the serving thread has ended (closed, or fn's BaseException)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        # A daemon, so it never keeps the interpreter alive; atexit drains it first.
        self.thread = threading.Thread(target=self._main, name=f"batched {name}", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.ready.wait()
        if self.error is not None:
            raise self.error

    def _main(self) -> None:
        try:
            anyio.run(self._serve, backend="asyncio")
        except BaseException as exc:  # reported to the thread that started it
            self.error = exc
        finally:
            self.ended = True
            self.ready.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_event = stop = asyncio.Event()
        try:
            async with self.batcher:
                self.engine = self.last_engine = engine = self.batcher._engine
                assert engine is not None
                async with anyio.create_task_group() as tg:
                    if self.keyed:
                        tg.start_soon(self._spawn_bridges, tg)
                    self.ready.set()
                    await stop.wait()
                    self.flush()  # take in what was sent before the stop; the exit drains it
                    self.bridge_event.set()  # the last bridges start, then the spawner ends
                    # Bridges finish before the batcher drains: what waits leaves now.
                    engine.hurry()
        finally:
            self.engine = None
            self.flush()  # whatever is left gets BatcherClosed

    # -- any thread --------------------------------------------------------------------

    def send(self, call: _ThreadCall, wait: bool) -> None:
        """Hand a call to the loop; the caller holds its function's lock."""
        self.pending.append((call, wait))
        if not self.scheduled:
            self.scheduled = True
            if not self.post(self.flush):
                self.engine = None  # the loop has ended: the call is closed here
                self.flush()

    def post(self, fn: Callable[..., object], *args: Any) -> bool:
        """Run ``fn`` in the loop soon; False if the loop has ended."""
        loop = self.loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            return False
        return True

    def stop_soon(self) -> None:
        if self.stop_event is not None:
            self.post(self.stop_event.set)

    def stop(self, timeout: float | None) -> None:
        """Drain and end the serving thread; wait for that, unless called from inside a
        batch of its own (the serving thread, or a worker thread running fn)."""
        self.stop_soon()
        if threading.current_thread() is not self.thread and _inside.server is not self:
            self.thread.join(timeout)

    def outcome(self, call: Call) -> Any:
        """The outcome of a woken call, in its caller's thread."""
        if call.error is None:
            return call.result
        engine = self.last_engine
        raise_error(
            call,
            engine.cause if engine is not None else None,
            "the batched function closed before this call was done",
        )

    # -- the serving thread ------------------------------------------------------------

    def flush(self) -> None:
        """Move the pending calls into the batcher."""
        self.scheduled = False
        engine, pending, stats = self.engine, self.pending, self.stats
        while pending:
            call, wait = pending.popleft()
            if self.keyed and engine is not None and engine.state == OPEN:
                call.stats = _Recorder()  # the batcher's own path counts this call
                self.to_bridge.append((call, wait))
                self.bridge_event.set()
                continue
            stats.submitted += call.n
            if engine is None or engine.state != OPEN:
                call.close()
                continue
            try:
                engine.submit(call, wait)
            except anyio.WouldBlock as exc:  # QueueFull
                call.error, call.error_tb, call.state = exc, None, DONE
                call.wake()

    async def _spawn_bridges(self, tg: TaskGroup) -> None:
        # A loop callback (flush) cannot start anyio tasks: this task does it for it.
        event, to_bridge, stop = self.bridge_event, self.to_bridge, self.stop_event
        assert stop is not None
        while True:
            await event.wait()
            event.clear()
            while to_bridge:
                call, wait = to_bridge.popleft()
                if call.state != CANCELLED:
                    tg.start_soon(self._bridge, call, wait)
            if stop.is_set():
                return

    async def _bridge(self, call: Call, wait: bool) -> None:
        batcher = self.batcher
        scope = self.bridges[call] = anyio.CancelScope()
        try:
            with scope:
                if call.entries is None:
                    call.result = await batcher(call.item, priority=call.priority, wait=wait)
                else:
                    items = [entry.item for entry in call.entries]
                    call.result = await batcher.many(items, priority=call.priority, wait=wait)
        except Exception as exc:
            call.error, call.error_tb = exc, exc.__traceback__
        finally:
            del self.bridges[call]
        if not scope.cancelled_caught:
            call.state = DONE
            call.wake()

    def abandon(self, call: Call) -> None:
        """Its caller left (cancelled, or interrupted): drop what still waits."""
        scope = self.bridges.get(call)
        if scope is not None:
            call.waiter = None
            scope.cancel()
            return
        if self.keyed and call.state == ROOM:
            # Still queued for its bridge (it has not reached the batcher): drop it there.
            call.waiter = None
            call.state = CANCELLED
            self.stats.submitted += call.n
            self.stats.cancelled += call.n
            return
        if call.state == DONE:
            # Counted when it was woken, but its caller never saw it.
            if call.waiter is None:
                stats = self.stats
                if call.error is None:
                    stats.completed -= call.n
                elif isinstance(call.error, anyio.WouldBlock):
                    stats.rejected -= call.n
                else:
                    stats.failed -= call.n
                stats.cancelled += call.n
            return
        call.waiter = None
        if self.engine is not None:
            self.engine.abandon(call)

    def count_failed(self, n: int) -> None:
        self.stats.submitted += n
        self.stats.failed += n


def _stop_current(box: list[_Server | None]) -> None:
    server = box[0]
    if server is not None:
        server.stop_soon()


_live: weakref.WeakSet[SyncFront[Any, Any]] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # At exit a hung batch function must not hold the interpreter: bounded waits.
    for function in list(_live):
        function._close(timeout=5.0)


class SyncFront(Binding, Generic[T, R]):
    """The sync front-end: ``SyncBatchedFunction`` and the seed's ``BatchProcessor``."""

    __slots__ = ("__dict__", "__weakref__", "_closed", "_fn", "_lock", "_server", "_template")

    def __init__(self, fn: Any, options: BatcherOptions) -> None:
        self._fn = fn = self._init_binding(fn, options)
        # Validates the settings now, and holds the counters across serving threads.
        self._template: Batcher[T, R] = new_batcher(fn, options)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._closed = False
        # One finalizer for every server this function will have: collecting the
        # function (a method's, with its instance) stops the current one.
        self._box: list[_Server | None] = [None]
        weakref.finalize(self, _stop_current, self._box)

    def _rebind(self, fn: Callable[..., Any]) -> Any:
        instance = getattr(fn, "__self__", None)
        func = getattr(fn, "__func__", None)
        if func is not None and not isinstance(instance, type):
            # Not weakly referable: the serving thread keeps it until close().
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
        engine = server.engine if server is not None else None
        template = self._template
        return template._stats.snapshot(
            engine.queued if engine is not None else 0,
            cache_stats(template._settings.cache, template._stats),
        )

    # -- lifecycle ---------------------------------------------------------------------

    def _serve(self) -> _Server:
        with self._lock:
            if self._closed:
                msg = "this batched function is closed (reopen it with `with f:`)"
                raise BatcherClosed(msg)
            server = self._server
            if server is None or server.ended:  # first use, or fn's BaseException ended it
                server = _Server(self._fn, self._options, self._template._stats)
                server.start()
                self._server = self._box[0] = server
                _live.add(self)
            return server

    def _server_or_refuse(self, n: int) -> _Server:
        server = self._server
        if server is not None and not server.ended:
            return server
        try:
            return self._serve()
        except BatcherClosed:
            self._refused(n)
            raise

    def _refused(self, n: int) -> None:
        stats = self._template._stats
        with self._lock:
            stats.submitted += n
            stats.failed += n

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
        with self._lock:
            self._closed = False
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
        self, server: _Server, item: Any, items: list[Any] | None, priority: float
    ) -> _ThreadCall:
        try:
            if type(priority) is not int:
                check_priority(priority)
            length_of = self._template._length
            if items is None:
                length = 1 if self._template._length_fn is None else length_of(item)
                call = _ThreadCall(item, length, priority, time.monotonic(), None)
            else:
                entries = [Entry(one, length_of(one), priority) for one in items]
                call = _ThreadCall(None, 0, priority, time.monotonic(), entries)
        except BaseException:
            server.post(server.count_failed, 1 if items is None else len(items))
            raise
        call.stats = server.stats
        return call

    def _send(self, server: _Server, call: _ThreadCall, wait: bool) -> None:
        with self._lock:
            if self._server is not server or server.ended:
                msg = "this batched function is closed"
                raise BatcherClosed(msg)
            server.send(call, wait)

    def _block(self, item: Any, items: list[Any] | None, priority: float, wait: bool) -> Any:
        if _in_event_loop():
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
            server.post(server.abandon, call)
            raise
        return server.outcome(call)

    @overload
    def __call__(self, item: list[T], *, priority: float = 0, wait: bool = True) -> list[R]: ...

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
        loop = asyncio._get_running_loop()
        if loop is not None:
            future = loop.create_future()
            call.waiter = functools.partial(_post_asyncio, loop, future)
            self._send(server, call, wait)
            try:
                await future
            except BaseException:
                server.post(server.abandon, call)
                raise
        else:
            await _park_trio(server, call, functools.partial(self._send, server, call, wait))
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


def _post_asyncio(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    with contextlib.suppress(RuntimeError):  # its loop has ended
        loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _park_trio(server: _Server, call: Call, send: Callable[[], None]) -> None:
    import trio

    token = trio.lowlevel.current_trio_token()
    task = trio.lowlevel.current_task()
    aborted = False

    def reschedule() -> None:  # in the trio thread
        if not aborted:
            trio.lowlevel.reschedule(task)

    def notify() -> None:  # in the serving thread
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(reschedule)

    def abort(_: object) -> trio.lowlevel.Abort:
        nonlocal aborted
        aborted = True
        server.post(server.abandon, call)
        return trio.lowlevel.Abort.SUCCEEDED

    call.waiter = notify
    send()
    await trio.lowlevel.wait_task_rescheduled(abort)


class SyncBatchedMethod(Protocol[S, T, R]):
    """What :func:`batched.dynamically` gives for a sync method (typing only)."""

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Self: ...

    @overload
    def __get__(
        self, instance: S, owner: type[Any] | None = None, /
    ) -> SyncBatchedFunction[T, R]: ...
