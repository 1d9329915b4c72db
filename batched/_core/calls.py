"""A call's life, from submission to the outcome its caller sees, counted once.

States::

    ROOM ──► QUEUED ──► DONE
      └────────┴──────────┴──► CANCELLED

ROOM: waiting for queue room. QUEUED: accepted; its items wait or run. DONE: its
outcome is set and its caller woken. CANCELLED: its caller left without the outcome,
also after DONE when the caller was cancelled before it resumed (it never sees what
was set). Entering DONE counts the call's items as completed or failed; entering
CANCELLED counts them as cancelled, taking them back from completed or failed when it
comes after DONE. Nothing else changes those counters.

A call of one item is also that item's pool entry, so the per-item path makes one
object. A call of many items carries an :class:`batched.Entry` per item. How a caller
parks and is woken differs per backend: the concrete classes in ``_backends`` add the
storage and implement :meth:`CallCore.wake` and :meth:`CallCore.deliver`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, final

from .._errors import BatcherClosed

if TYPE_CHECKING:
    from contextvars import Context
    from types import TracebackType

    from .._strategies import Entry
    from .queue import Core

__all__ = [
    "CANCELLED",
    "CLOSED",
    "DONE",
    "INTAKE",
    "QUEUED",
    "ROOM",
    "CallCore",
    "SharedCall",
    "closed_error",
    "owner",
]

ROOM = 0
QUEUED = 1
DONE = 2
CANCELLED = 3


@final
class _Closed:
    """The outcome ``BatcherClosed``: a fresh exception is made for each caller."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CLOSED"


CLOSED: Any = _Closed()


@final
class _Intake:
    __slots__ = ()

    def __repr__(self) -> str:
        return "INTAKE"


# Where an entry is: INTAKE (accepted, not yet in a pool), its pool, or None (cut into a
# batch, or never accepted). The core reads it when a caller leaves.
INTAKE: Any = _Intake()


def closed_error(cause: BaseException | None, message: str | None = None) -> BatcherClosed:
    """A fresh ``BatcherClosed`` for one caller, chained to what closed the batcher."""
    error = BatcherClosed(message or "the batcher closed before this call was done")
    error.__cause__ = cause
    return error


def owner(entry: Any) -> CallCore:
    """The call an entry belongs to: itself for a call of one item."""
    call: CallCore = entry._call or entry
    return call


class CallCore:
    """What every call does, whatever wakes its caller (see the module docstring).

    Storage comes from the concrete classes; the defaults below are read from the class,
    so a call of one item stores only what differs from them.
    """

    if not TYPE_CHECKING:  # storage from the concrete classes; the checker sees fields
        __slots__ = ()

    # -- its item, as a pool sees it (the fields of batched.Entry) --
    item: Any
    arrival: float
    seq: int
    length: int = 1
    priority: float = 0
    deadline: float = math.inf  # set only where ByDeadline orders by it (deadlines.py)
    _call: Any = None  # None: the call is its own entry
    _index: int = 0
    _pool: Any = INTAKE

    # -- the call --
    core: Core  # the batcher's core, set when the call is made or submitted
    state: int = QUEUED
    n: int = 1
    remaining: int = 1
    entries: list[Entry] | None = None
    out: Any = None  # the result, or a list of results for a call of many items
    err: Any = None  # the first error (by item index), or CLOSED
    err_index: int = 0
    err_tb: TracebackType | None = None
    shared: SharedCall | None = None  # a keyed caller: the item it waits for
    # Its caller's contextvars.Context at call time, for batched.Batch. (A caller's
    # deadline is read from the task awaiting the call, when asked for: see _backends.)
    ctx: Context | None = None
    room_wait: float = 0.0  # how long it waited for queue room before it was accepted

    def init_many(self, entries: list[Entry]) -> None:
        """Make this a call of ``entries``; their results come back in their order."""
        self.entries = entries
        self.n = self.remaining = len(entries)
        self.out = [None] * len(entries)
        for index, entry in enumerate(entries):
            entry._call = self
            entry._index = index

    # -- outcomes, set by the core --------------------------------------------------------

    def deliver(self, value: Any) -> None:
        """Settle a call of one item with its result: DONE, woken. The core has set
        ``state`` and counts it (in bulk, for a whole batch)."""
        raise NotImplementedError

    def wake(self) -> None:
        """Wake the caller of a DONE call; it reads ``out`` or ``err``."""
        raise NotImplementedError

    def put_result(self, index: int, value: Any) -> None:
        if self.entries is None:
            self.out = value
        else:
            self.out[index] = value
        self.remaining -= 1
        if not self.remaining:
            self.finish()

    def put_error(self, index: int, error: BaseException, tb: TracebackType | None) -> None:
        if self.err is None or index < self.err_index:  # the first failing item wins
            self.err = error
            self.err_index = index
            self.err_tb = tb
        self.remaining -= 1
        if not self.remaining:
            self.finish()

    def fail_closed(self) -> None:
        """Settle the whole call with ``BatcherClosed`` now."""
        self.err = CLOSED
        self.finish()

    def finish(self) -> None:
        """Enter DONE: count the outcome, then wake the caller."""
        self.state = DONE
        counts = self.core.counts
        if self.err is None:
            counts.completed += self.n
        else:
            counts.failed += self.n
        self.wake()

    def leave(self) -> int:
        """The caller left (cancelled): enter CANCELLED; the state it left."""
        state = self.state
        if state == CANCELLED:
            return state
        self.state = CANCELLED
        counts = self.core.counts
        if state == DONE:  # set, but never seen
            if self.err is None:
                counts.completed -= self.n
            else:
                counts.failed -= self.n
        counts.cancelled += self.n
        return state

    # -- what the caller sees -------------------------------------------------------------

    def outcome(self) -> Any:
        """The result of a DONE call, or its error raised."""
        error = self.err
        if error is None:
            return self.out
        if error is CLOSED:
            raise closed_error(self.core.cause)
        # One exception object reaches every caller of a batch: reset its traceback so
        # that it does not grow by one caller's frames per raise.
        raise error.with_traceback(self.err_tb)


@final
class SharedCall(CallCore):
    """One keyed item, computed once for every caller waiting on an equal key.

    It waits in a pool like any call of one item, but nobody awaits it: its callers
    (subscribers) are calls of their own that never enter a pool, and each gets a copy
    of its outcome. Under dedupe it is registered by key while it waits, runs, or has
    its result written to the cache (it is settled only then), so that equal items join
    it; once settled, equal items read the cache.
    """

    __slots__ = (
        "_pool",
        "arrival",
        "core",
        "ctx",
        "deadline",
        "err",
        "err_index",
        "err_tb",
        "item",
        "key",
        "length",
        "out",
        "priority",
        "registry",
        "remaining",
        "room_wait",
        "seq",
        "state",
        "subscribers",
    )

    def __init__(
        self,
        core: Core,
        item: Any,
        length: int,
        priority: float,
        key: Any,
        registry: dict[Any, SharedCall] | None,
    ) -> None:
        self.core = core
        self.item = item
        self.length = length
        self.priority = priority
        self.key = key
        self.registry = registry
        self.state = QUEUED
        self._pool = INTAKE
        self.out = self.err = self.err_tb = None
        self.err_index = 0
        self.remaining = 1
        self.room_wait = 0.0
        self.ctx = None  # its first caller's (see _subscribe)
        self.subscribers: dict[CallCore, None] = {}

    def forget(self) -> None:
        """Leave the dedupe registry: later equal items start afresh."""
        registry = self.registry
        if registry is not None and registry.get(self.key) is self:
            del registry[self.key]

    def deliver(self, value: Any) -> None:
        self.out = value
        self.wake()

    def finish(self) -> None:
        # Not counted: its subscribers are, each as the call it is.
        self.state = DONE
        self.wake()

    def leave(self) -> int:
        state = self.state
        self.state = CANCELLED
        return state

    def wake(self) -> None:
        self.forget()
        subscribers, self.subscribers = self.subscribers, {}
        error = self.err
        for sub in subscribers:
            if sub.state != QUEUED:
                continue
            if error is None:
                sub.out = self.out
            else:
                sub.err = error
                sub.err_index = 0
                sub.err_tb = None if error is CLOSED else self.err_tb
            sub.finish()
