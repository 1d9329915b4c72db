"""The trio backend: parked tasks, cancel scopes' deadlines, ``run_sync_soon``.

A caller parks with ``wait_task_rescheduled`` and the call itself as the abort function;
the core reschedules it with the call as the value sent in, whose ``unwrap`` gives the
result or raises the error, so nothing of ours runs between the wake-up and the caller.
"""

from __future__ import annotations

import collections.abc
import contextlib
import math
from typing import TYPE_CHECKING, Any, final

import trio

from .._core.calls import INTAKE, QUEUED, CallCore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Generator

    from . import Parker

__all__ = ["TrioBackend", "trio_token"]

_reschedule = trio.lowlevel.reschedule
_current_task = trio.lowlevel.current_task
_wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
_checkpoint = trio.lowlevel.checkpoint
_SUCCEEDED = trio.lowlevel.Abort.SUCCEEDED
trio_token = trio.lowlevel.current_trio_token


async def _settled(call: CallCore) -> Any:
    await _checkpoint()
    return call.outcome()


@final
class TrioCall(CallCore):
    """A call that its caller awaits: it parks its task until the core reschedules it."""

    __slots__ = (
        "__dict__",
        "_pool",
        "arrival",
        "core",
        "ctx",
        "item",
        "seq",
        "state",
        "task",
    )

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None

    def deliver(self, value: Any) -> None:
        self.out = value
        task = self.task
        if task is not None:
            self.task = None
            _reschedule(task, self)  # type: ignore[arg-type]  # an outcome: it has unwrap()

    def wake(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            _reschedule(task, self)  # type: ignore[arg-type]  # an outcome: it has unwrap()

    # What wait_task_rescheduled returns: the value sent in, unwrapped.
    unwrap = CallCore.outcome

    def __call__(self, _: Any) -> trio.lowlevel.Abort:
        # The abort function of the wait: the caller is cancelled while its call waits.
        self.task = None
        self.core.abandon_safely(self)
        return _SUCCEEDED

    def __await__(self) -> Generator[Any, Any, Any]:
        if self.state <= QUEUED:  # waiting for room, or queued
            self.task = _current_task()
            return _wait_task_rescheduled(self).__await__()
        return _settled(self).__await__()  # settled before it was awaited

    # -- the coroutine protocol, for start_soon(batcher, item) ---------------------------

    def send(self, value: Any) -> Any:
        steps = self.__dict__.get("_steps")
        if steps is None:
            steps = self._steps = self.__await__()
        return steps.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        steps = self.__dict__.get("_steps")
        if steps is None:
            steps = self._steps = self.__await__()
        return steps.throw(typ, val, tb)

    def close(self) -> None:
        steps = self.__dict__.get("_steps")
        if steps is not None:
            steps.close()


collections.abc.Coroutine.register(TrioCall)


class _Parking:
    """Park the current task; ``wake`` reschedules it unless the wait was aborted."""

    __slots__ = ()
    waiter: Any

    def wake(self) -> None:
        task = self.waiter
        if task is not None:
            self.waiter = None
            _reschedule(task)

    def __call__(self, _: Any) -> trio.lowlevel.Abort:
        # The abort function of the wait: the object itself, to spare a bound method
        # (a GC-tracked allocation) per wait.
        self.waiter = None
        return _SUCCEEDED

    def park(self) -> Awaitable[Any]:
        self.waiter = _current_task()
        return _wait_task_rescheduled(self)


@final
class TrioParkedCall(_Parking, CallCore):
    """A call whose caller parks on it again and again."""

    __slots__ = ("__dict__", "_pool", "arrival", "core", "item", "seq", "state", "waiter")

    def __init__(self) -> None:
        self.waiter = None
        self.state = QUEUED
        self._pool = INTAKE

    def deliver(self, value: Any) -> None:
        self.out = value
        self.wake()


@final
class TrioSignal(_Parking):
    """A one-shot wake-up for one waiting task; ``set`` before ``wait`` is not lost."""

    __slots__ = ("is_set", "waiter")

    def __init__(self) -> None:
        self.is_set = False
        self.waiter = None

    def set(self) -> None:
        self.is_set = True
        self.wake()

    def wait(self) -> Awaitable[Any]:
        return _checkpoint() if self.is_set else self.park()


@final
class TrioBackend:
    """The backend of the trio run in this thread."""

    name = "trio"

    def __init__(self) -> None:
        self.key = trio_token()
        self.clock: Callable[[], float] = trio.lowlevel.current_clock().current_time
        self.new_call: Callable[[], TrioCall] = TrioCall  # the submit path sets its fields

    def deadline_of(self, call: CallCore) -> float:
        """What ``trio.current_effective_deadline()`` says in the task parked on
        ``call``: its cancel status (trio's, private; tests compare the two)."""
        if type(call) is TrioCall:  # no lookup that misses: a miss raises inside
            task = call.task
        else:
            task = getattr(call, "task", None) or getattr(call, "waiter", None)
        status = getattr(task, "_cancel_status", None)
        return math.inf if status is None else float(status.effective_deadline())

    def current_deadline(self) -> float:
        """The current task's effective deadline (``math.inf`` when none)."""
        return float(trio.current_effective_deadline())

    def new_parked_call(self) -> TrioParkedCall:
        return TrioParkedCall()

    def signal(self) -> TrioSignal:
        return TrioSignal()

    async def wait_until(self, waiter: Parker, deadline: float) -> None:
        """Wait for ``waiter`` to be woken, or for ``deadline``: a cancel scope's
        deadline, which trio makes cheap."""
        with trio.CancelScope(deadline=deadline):
            await waiter.park()

    def cancelling(self) -> bool:
        """Whether a cancel scope around the current task has been cancelled (its
        effective deadline is then -inf); a ``Cancelled`` carried out of another scope
        does not make it so."""
        return trio.current_effective_deadline() == -math.inf

    def poster(self) -> Callable[..., bool]:
        run_sync_soon = self.key.run_sync_soon

        def post(fn: Callable[..., object], *args: Any) -> bool:
            try:
                run_sync_soon(fn, *args)
            except trio.RunFinishedError:
                return False
            return True

        return post

    async def wait_for_thread(
        self, send: Callable[[Callable[[], None]], None], abandon: Callable[[], None]
    ) -> None:
        """Park until the notifier handed to ``send`` is called, from any thread;
        ``abandon()`` if this task is cancelled first."""
        token = self.key
        task = _current_task()
        aborted = False

        def reschedule() -> None:  # in this trio thread
            if not aborted:
                _reschedule(task)

        def notify() -> None:  # in any thread
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(reschedule)

        def abort(_: Any) -> trio.lowlevel.Abort:
            nonlocal aborted
            aborted = True
            abandon()
            return _SUCCEEDED

        send(notify)
        await _wait_task_rescheduled(abort)
