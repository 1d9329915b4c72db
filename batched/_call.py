"""One call's request: its entries, its outcome, and how its caller is woken.

A call of many items is one request with one wake-up. A call of one item is also its
own pool entry, so the per-item path allocates one object. The wake-up is the only part
that differs per backend: an asyncio future, or a parked trio task. ``Signal`` is the
same wake-up for the engine's own tasks, in place of ``anyio.Event``, whose per-call
backend lookup costs more than the hand-over itself.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, final

from ._strategies import Entry

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from types import TracebackType

# Call states. ROOM: waiting for queue room; QUEUED: accepted, not all items settled;
# DONE: the outcome is set; CANCELLED: the caller left before the outcome.
ROOM = 0
QUEUED = 1
DONE = 2
CANCELLED = 3


@final
class _Closed:
    """Marks an outcome of ``BatcherClosed``, made fresh for each caller when raised."""

    __slots__ = ()


CLOSED = _Closed()


@final
class _Intake:
    """Where an accepted entry is before the collector moves it into a pool."""

    __slots__ = ()


# An entry's ``_pool``: None (not accepted yet, or already cut), INTAKE, or its pool.
INTAKE: Any = _Intake()


class Call(Entry):
    """The request of one call; with one item, also that item's entry."""

    error_index: int
    error_tb: TracebackType | None

    __slots__ = (
        "entries",
        "error",
        "error_index",
        "error_tb",
        "n",
        "remaining",
        "result",
        "shared",
        "started",
        "state",
        "waiter",
    )

    def __init__(
        self, item: Any, length: int, priority: float, started: float, entries: list[Entry] | None
    ) -> None:
        # Entry's fields, set here to spare a super() call on the hot path.
        self.item = item
        self.length = length
        self.priority = priority
        self._call = self
        self._index = 0
        self._pool = None
        self.started = started
        self.state = ROOM
        self.shared: SharedCall | None = None  # the keyed item this caller waits for
        self.error: BaseException | _Closed | None = None
        # error_index and error_tb are set with the first error, and read only then.
        self.waiter: Any = None
        if entries is None:
            self.entries: list[Entry] | None = None
            self.n = self.remaining = 1
            self.result: Any = None
        else:
            self.entries = entries
            self.n = self.remaining = len(entries)
            self.result = [None] * len(entries)
            for index, entry in enumerate(entries):
                entry._call = self
                entry._index = index

    def set_result(self, index: int, value: Any) -> None:
        if self.entries is None:
            self.result = value
        else:
            self.result[index] = value
        self.remaining -= 1
        if not self.remaining:
            self.state = DONE
            self.wake()

    def set_error(self, index: int, error: BaseException, tb: TracebackType | None) -> None:
        if self.error is None or index < self.error_index:  # the first failing item wins
            self.error = error
            self.error_index = index
            self.error_tb = tb
        self.remaining -= 1
        if not self.remaining:
            self.state = DONE
            self.wake()

    def close(self) -> None:
        """Settle the whole call with ``BatcherClosed`` now."""
        self.error = CLOSED
        self.state = DONE
        self.wake()

    def wake(self) -> None:
        raise NotImplementedError

    def wait(self) -> Awaitable[Any]:
        """What the caller awaits until ``wake``; a cancel point, as every await is."""
        raise NotImplementedError


@final
class SharedCall(Call):
    """One keyed item, computed once for every caller waiting on an equal key.

    Its callers (subscribers) are calls of their own that never enter a pool; when it
    is settled, each gets a copy of its outcome. Under dedupe it is registered by key
    while it waits or runs, so equal items join it.
    """

    __slots__ = ("key", "registry", "storing", "subscribers")

    def __init__(
        self,
        item: Any,
        length: int,
        priority: float,
        started: float,
        key: Any,
        registry: dict[Any, SharedCall] | None,
    ) -> None:
        Call.__init__(self, item, length, priority, started, None)
        self.key = key
        self.registry = registry
        # Its result goes to a cache: it stays registered (joinable, settled) until the
        # write is done, so an equal call meanwhile is not computed again.
        self.storing = False
        self.subscribers: dict[Call, None] = {}

    def forget(self) -> None:
        """Leave the dedupe registry: later equal items start afresh."""
        registry = self.registry
        if registry is not None and registry.get(self.key) is self:
            del registry[self.key]

    def wake(self) -> None:
        if not (self.storing and self.error is None and self.result is not None):
            self.forget()
        subscribers, self.subscribers = self.subscribers, {}
        error = self.error
        for sub in subscribers:
            if sub.state != QUEUED:
                continue
            if error is None:
                sub.result = self.result
            else:
                sub.error = error
                sub.error_index = 0
                sub.error_tb = None if error is CLOSED else self.error_tb
            sub.state = DONE
            sub.wake()

    def wait(self) -> Awaitable[Any]:
        raise NotImplementedError  # nobody waits on it; its subscribers wait on themselves


class Signal:
    """A one-shot wake-up for one waiting task; ``set`` before ``wait`` is not lost."""

    __slots__ = ("is_set", "waiter")

    def __init__(self) -> None:
        self.is_set = False
        self.waiter: Any = None

    def set(self) -> None:
        self.is_set = True
        self.wake()

    def wait(self) -> Awaitable[Any]:
        return self.ready() if self.is_set else self.park()

    if TYPE_CHECKING:
        # From the backend's parking mixin, which follows Signal in each subclass's bases
        # (so Signal.wait comes first); stubs here would shadow it.
        def wake(self) -> None: ...

        def park(self) -> Awaitable[Any]: ...

        def ready(self) -> Awaitable[Any]: ...


class _AsyncioParking:
    """Park on a future of the running loop; ``wake`` resolves it unless it was cancelled."""

    __slots__ = ()
    waiter: Any

    def wake(self) -> None:
        future = self.waiter
        if future is not None and not future.done():
            future.set_result(None)

    def park(self) -> Awaitable[Any]:
        # The future itself, not a coroutine around it: one frame less on every resume.
        self.waiter = future = asyncio.get_running_loop().create_future()
        return future

    def ready(self) -> Awaitable[Any]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    wait = park


@final
class AsyncioCall(_AsyncioParking, Call):
    __slots__ = ()


@final
class AsyncioSignal(Signal, _AsyncioParking):
    __slots__ = ()


def _make_trio_classes() -> tuple[type[Call], type[Signal]]:
    import trio

    reschedule = trio.lowlevel.reschedule
    current_task = trio.lowlevel.current_task
    wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
    succeeded = trio.lowlevel.Abort.SUCCEEDED

    class TrioParking:
        """Park the current task; ``wake`` reschedules it unless the wait was aborted."""

        __slots__ = ()
        waiter: Any

        def wake(self) -> None:
            task = self.waiter
            if task is not None:
                self.waiter = None
                reschedule(task)

        def __call__(self, _: Any) -> trio.lowlevel.Abort:
            # The abort function of the wait: the object itself, to spare a bound method
            # (a GC-tracked allocation) per wait.
            self.waiter = None
            return succeeded

        def park(self) -> Awaitable[Any]:
            self.waiter = current_task()
            return wait_task_rescheduled(self)

        def ready(self) -> Awaitable[Any]:
            return trio.lowlevel.checkpoint()  # noqa: ASYNC105 - awaited by the caller

        wait = park

    @final
    class TrioCall(TrioParking, Call):
        __slots__ = ()

    @final
    class TrioSignal(Signal, TrioParking):
        __slots__ = ()

    return TrioCall, TrioSignal


_trio_classes: tuple[type[Call], type[Signal]] | None = None


def backend_classes() -> tuple[type[Call], type[Signal]]:
    """The call and signal classes for the backend running in this thread."""
    global _trio_classes
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        if _trio_classes is None:
            _trio_classes = _make_trio_classes()
        return _trio_classes
    return AsyncioCall, AsyncioSignal
