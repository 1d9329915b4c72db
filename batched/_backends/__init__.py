"""The backend seam: everything that differs between asyncio and trio, behind one face.

A driver asks :func:`current` once, when it opens, for the :class:`Backend` of the event
loop running in its thread, and from then on parks, wakes, reads the clock and waits for
deadlines through it. ``_asyncio`` and ``_trio`` each implement it; no other module of
the library imports asyncio or trio, or asks which of them runs.

What a backend gives:

- ``new_call()``: a call its caller awaits directly (``await batcher(item)``); with one
  item, also that item's pool entry. The core wakes it through ``deliver``/``wake``.
- ``new_parked_call()``: a call whose caller may park on it many times (the
  caller-driven decorator, where a caller also leads the batching).
- ``signal()``: a one-shot wake-up for a driver's own task.
- ``clock``, ``wait_until(waiter, deadline)``, ``key`` (the loop's identity).
- ``deadline_of(call)``: the deadline of the task awaiting a call, found from the call
  when something asks for it (reading it per call costs ~0.4-1.3 us through anyio, and
  keeping the calling task ~13 % of the per-item path on asyncio).
- ``current_deadline()``: the current task's deadline (read at call time only where
  ``batched.ByDeadline`` orders by it).
- ``cancelling()``: whether the current task's own cancellation is under way (to tell it
  from a cancellation exception that a batch function raised for some other reason).
- Thread hand-off: ``wait_for_thread`` (park until another thread says so) and
  ``poster`` (run a function in this loop, from any thread).
"""

from __future__ import annotations

import asyncio  # at import: a thread must never find it half-imported (see in_event_loop)
import sys
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from .._core.calls import CallCore

__all__ = [
    "Backend",
    "Parker",
    "call_outside_loop",
    "current",
    "in_event_loop",
    "loop_key",
    "run_in_new_loop",
]


class Parker(Protocol):
    """Something a task parks on until another part wakes it."""

    def wake(self) -> None: ...

    def park(self) -> Awaitable[Any]: ...


class Backend(Protocol):
    """One event loop's ways of parking, waking and keeping time."""

    @property
    def name(self) -> str: ...

    @property
    def key(self) -> object:
        """The event loop's identity (its asyncio loop, or its trio token)."""

    @property
    def clock(self) -> Callable[[], float]:
        """The loop's clock: what ``anyio.current_time()`` reads."""

    @property
    def new_call(self) -> Callable[[], CallCore]:
        """Makes a call its caller awaits directly; the submit path sets its fields."""

    def new_parked_call(self) -> CallCore: ...

    def signal(self) -> Signal: ...

    def wait_until(self, waiter: Parker, deadline: float) -> Awaitable[None]: ...

    def cancelling(self) -> bool:
        """Whether the current task is being cancelled (by a cancel scope around it)."""

    def deadline_of(self, call: CallCore) -> float:
        """The effective deadline of the task awaiting ``call`` (``math.inf`` when none,
        or none awaits it): what ``anyio.current_effective_deadline()`` says there."""

    def current_deadline(self) -> float:
        """The current task's effective deadline (``math.inf`` when none)."""

    def poster(self) -> Callable[..., bool]: ...

    def wait_for_thread(
        self, send: Callable[[Callable[[], None]], None], abandon: Callable[[], None]
    ) -> Awaitable[None]: ...


class Signal(Protocol):
    """A one-shot wake-up for one waiting task; ``set`` before ``wait`` is not lost."""

    is_set: bool

    def set(self) -> None: ...

    def wake(self) -> None: ...

    def park(self) -> Awaitable[Any]: ...

    def wait(self) -> Awaitable[Any]: ...


# The running asyncio loop of this thread, or None. asyncio's own accessor: the public
# get_running_loop() raises instead, which costs ~1 µs per call on trio.
_running_asyncio_loop = asyncio.events._get_running_loop


def _in_trio_run() -> bool:
    trio = sys.modules.get("trio")
    # getattr: another thread may be importing trio right now (a half-made module).
    lowlevel = getattr(trio, "lowlevel", None)
    in_trio_run = getattr(lowlevel, "in_trio_run", None)
    return in_trio_run is not None and bool(in_trio_run())


def current() -> Backend:
    """The backend of the event loop running in this thread."""
    loop = _running_asyncio_loop()
    if loop is not None:
        from ._asyncio import AsyncioBackend

        return AsyncioBackend(loop)
    from ._trio import TrioBackend

    return TrioBackend()


_trio_token: Callable[[], object] | None = None


def loop_key() -> object:
    """The identity of the event loop running in this thread (cheap: per call)."""
    loop = _running_asyncio_loop()
    if loop is not None:
        return loop
    global _trio_token
    if _trio_token is None:
        from ._trio import trio_token

        _trio_token = trio_token
    return _trio_token()


def in_event_loop() -> bool:
    """Whether this thread runs an event loop (asyncio or trio)."""
    return _running_asyncio_loop() is not None or _in_trio_run()


def run_in_new_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on a new event loop in this thread (a serving thread's loop)."""
    import anyio

    anyio.run(main, backend="asyncio")


def call_outside_loop(fn: Callable[[Any], Any], arg: Any) -> Any:
    """``fn(arg)``, where ``fn`` sees no running event loop (it may block, or run one).

    For a sync batch function run in a serving thread's own loop thread.
    """
    loop = _running_asyncio_loop()
    if loop is None:
        return fn(arg)
    from ._asyncio import without_running_loop

    return without_running_loop(loop, fn, arg)
