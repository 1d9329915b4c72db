"""The asyncio backend (also uvloop): futures, loop timers, ``call_soon_threadsafe``.

A call awaited directly is itself an ``asyncio.Future``: ``await batcher(item)`` awaits
it with no frame of ours, the core settles it with ``set_result``, and a cancelled
caller reaches us through ``cancel()``, which its task calls on the future it waits for
(and only then: nothing is registered per call). It is also a coroutine to asyncio, so
``create_task(batcher(item))`` and task groups' ``start_soon(batcher, item)`` work.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import functools
import math
import time
import warnings
from typing import TYPE_CHECKING, Any, final

from .._core.calls import CANCELLED, CLOSED, INTAKE, QUEUED, CallCore, closed_error

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from . import Parker

__all__ = ["AsyncioBackend", "without_running_loop"]


def _raisable(error: BaseException) -> BaseException:
    # A future refuses StopIteration (it would end the awaiting coroutine silently).
    if isinstance(error, StopIteration):
        wrapped = RuntimeError(f"the batch function raised StopIteration: {error!r}")
        wrapped.__cause__ = error
        return wrapped
    return error


@final
class AsyncioCall(CallCore, asyncio.Future):  # type: ignore[type-arg]
    """A call that its caller awaits as a future."""

    __slots__ = ("_pool", "arrival", "core", "ctx", "deadline", "item", "seq", "state")

    # The core's hot path settles a call of one item with the future's own method.
    deliver = asyncio.Future.set_result  # type: ignore[assignment]

    def wake(self) -> None:
        error = self.err
        if error is None:
            self.set_result(self.out)
            return
        if error is CLOSED:
            self.set_exception(closed_error(self.core.cause))
        else:
            self.set_exception(_raisable(error.with_traceback(self.err_tb)))
        # Its caller raises it; a caller that left never retrieves it, and that is no
        # error worth a report ("Future exception was never retrieved").
        self._log_traceback = False

    def cancel(self, msg: Any = None) -> bool:
        """Its caller left: drop what still waits, then cancel the future."""
        if self.state != CANCELLED:
            self.core.abandon_safely(self)
        return super().cancel(msg)

    # -- the coroutine protocol, for create_task() and start_soon() -------------------------

    def send(self, value: object) -> Any:
        if not self.done():
            self._asyncio_future_blocking = True
            return self
        raise StopIteration(self.result())

    def __next__(self) -> Any:
        return self.send(None)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if val is None:
            val = typ() if isinstance(typ, type) else typ
        if self.state == QUEUED and not self.done():
            self.cancel()  # thrown in before the call settled: the caller leaves
        raise val.with_traceback(tb) if tb is not None else val

    def close(self) -> None:
        # As the coroutine: closed before it finished, its caller has left.
        if not self.done():
            self.cancel()


collections.abc.Coroutine.register(AsyncioCall)


class _Parking:
    """Park on a fresh future of the loop; ``wake`` resolves it unless it was cancelled."""

    if not TYPE_CHECKING:  # storage from the concrete classes
        __slots__ = ()
    loop: asyncio.AbstractEventLoop
    waiter: asyncio.Future[None] | None

    def wake(self) -> None:
        future = self.waiter
        if future is not None and not future.done():
            future.set_result(None)

    def park(self) -> Awaitable[None]:
        # The future itself, not a coroutine around it: one frame less on every resume.
        self.waiter = future = self.loop.create_future()
        return future


@final
class AsyncioParkedCall(_Parking, CallCore):
    """A call whose caller parks on it again and again (a fresh future each time)."""

    __slots__ = ("__dict__", "_pool", "arrival", "core", "item", "loop", "seq", "state", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiter = None
        self.state = QUEUED
        self._pool = INTAKE

    def deliver(self, value: Any) -> None:
        self.out = value
        self.wake()


@final
class AsyncioSignal(_Parking):
    """A one-shot wake-up for one waiting task; ``set`` before ``wait`` is not lost."""

    __slots__ = ("is_set", "loop", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.is_set = False
        self.waiter = None

    def set(self) -> None:
        self.is_set = True
        self.wake()

    def wait(self) -> Awaitable[None]:
        if self.is_set:
            future = self.loop.create_future()
            future.set_result(None)
            return future
        return self.park()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@final
class AsyncioBackend:
    """The backend of one asyncio event loop."""

    name = "asyncio"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.key = loop
        # The same clock anyio.current_time() reads, without its per-call dispatch.
        if type(loop).time is asyncio.BaseEventLoop.time:
            self.clock: Callable[[], float] = time.monotonic  # what time() returns
        else:
            self.clock = loop.time
        # A call, made in C (the submit path sets its fields).
        self.new_call: Callable[[], AsyncioCall] = functools.partial(AsyncioCall, loop=loop)

    def deadline_of(self, call: CallCore) -> float:
        """anyio's own walk over a task's cancel scopes (its
        ``current_effective_deadline``), for the task awaiting ``call``: the one whose
        wake-up is the future's done callback. anyio keeps asyncio tasks' scopes in a
        private table: tests compare this with ``anyio.current_effective_deadline()``
        so that a change there is caught."""
        future = call if type(call) is AsyncioCall else getattr(call, "waiter", None)
        if not isinstance(future, asyncio.Future):
            return math.inf
        for callback, _ in future._callbacks or ():
            task = getattr(callback, "__self__", None)
            if isinstance(task, asyncio.Task):
                return _task_deadline(task)
        return math.inf

    def current_deadline(self) -> float:
        """The current task's effective deadline (``math.inf`` when none)."""
        task = asyncio.current_task(self.loop)
        return math.inf if task is None else _task_deadline(task)

    def new_parked_call(self) -> AsyncioParkedCall:
        return AsyncioParkedCall(self.loop)

    def signal(self) -> AsyncioSignal:
        return AsyncioSignal(self.loop)

    async def wait_until(self, waiter: Parker, deadline: float) -> None:
        """Wait for ``waiter`` to be woken, or for ``deadline``, whichever comes first.

        A timer of the loop wakes it: an anyio cancel scope's deadline costs ~70 µs more
        per wait here (it cancels the task and delivers the cancellation), which a lone
        request would pay on top of ``timeout_ms``.
        """
        handle = self.loop.call_at(deadline, waiter.wake)
        try:
            await waiter.park()
        finally:
            handle.cancel()

    def cancelling(self) -> bool:
        """Whether the current task has a cancellation request pending: anyio's cancel
        scopes cancel a task with ``Task.cancel()``, and a CancelledError raised by an
        awaited future that someone else cancelled leaves the count at zero."""
        task = asyncio.current_task(self.loop)
        return task is not None and task.cancelling() > 0

    def poster(self) -> Callable[..., bool]:
        """``post(fn, *args)``: run ``fn`` in this loop soon, from any thread; False once
        the loop has closed."""
        call_soon_threadsafe = self.loop.call_soon_threadsafe

        def post(fn: Callable[..., object], *args: Any) -> bool:
            try:
                call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop is closed
                return False
            return True

        return post

    async def wait_for_thread(
        self, send: Callable[[Callable[[], None]], None], abandon: Callable[[], None]
    ) -> None:
        """Park until the notifier handed to ``send`` is called, from any thread;
        ``abandon()`` if this task is cancelled first."""
        loop = self.loop
        future = loop.create_future()

        def notify() -> None:
            with contextlib.suppress(RuntimeError):  # its loop has ended
                loop.call_soon_threadsafe(_resolve, future)

        send(notify)
        try:
            await future
        except BaseException:
            abandon()
            raise


_task_states: Any = None  # anyio's table of its asyncio tasks' cancel scopes (private)


def _task_deadline(task: asyncio.Task[Any]) -> float:
    global _task_states
    if _task_states is None:
        from anyio._backends._asyncio import _task_states
    state = _task_states.get(task)
    scope = None if state is None else state.cancel_scope
    deadline = math.inf
    while scope is not None:
        if scope._deadline < deadline:
            deadline = scope._deadline
        if scope._cancel_called:
            return -math.inf
        if scope._shield:
            break
        scope = scope._parent_scope
    return deadline


def without_running_loop(
    loop: asyncio.AbstractEventLoop, fn: Callable[[Any], Any], arg: Any
) -> Any:
    """``fn(arg)`` with no running loop visible to it, so that it may block on other
    batched functions or run an event loop of its own."""
    asyncio.events._set_running_loop(None)
    try:
        return fn(arg)
    finally:
        asyncio.events._set_running_loop(loop)


def get_or_create_event_loop() -> asyncio.AbstractEventLoop:
    """The running asyncio loop; else this thread's current one; else a new loop, made
    current (for ``batched.utils``)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    with warnings.catch_warnings():
        # Where get_event_loop() would make a loop, Python warns (3.12, 3.13) or raises
        # (3.14 and later): we make it.
        warnings.simplefilter("ignore", DeprecationWarning)
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_event_loop()
            if not loop.is_closed():
                return loop
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop
