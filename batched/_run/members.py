"""An item of ``Continuous`` as the core and its reader see it: a call, and its stream.

A :class:`Member` is a call of one item (the core queues it, counts it and lets its
reader leave like any call) that also carries the item's current state and the send side
of its values. Its outcome is counted when its stream ends: completed on ``Last``, failed
on a ``Failure``, a step error or ``BatcherClosed``; cancelled when its reader leaves
before that. :class:`Values` is the receive side its reader holds: an anyio
``ObjectReceiveStream`` over the member's unbounded buffer, not a memory object stream,
because it must end with the item's error, and a reader may leave by dropping it (a
memory object stream warns when dropped open).
"""

from __future__ import annotations

from collections import deque
from threading import get_ident
from typing import Any, Generic, TypeVar, final

import anyio
import anyio.lowlevel
from anyio.abc import ObjectReceiveStream

from .._core.calls import INTAKE, QUEUED, CallCore

__all__ = ["Member", "Values"]

R = TypeVar("R")


@final
class Member(CallCore):
    """One item of a ``Continuous``, from its call until its stream ends."""

    __slots__ = (
        "_pool",
        "arrival",
        "buffer",
        "core",
        "ctx",
        "current",
        "deadline",
        "err",
        "err_index",
        "err_tb",
        "item",
        "joined",
        "length",
        "out",
        "priority",
        "remaining",
        "room_wait",
        "seq",
        "state",
        "waiter",
    )

    def __init__(self, item: Any) -> None:
        # The core sets arrival and seq (and length, priority when they differ).
        self.item = self.current = item  # current: the item's state for the next step
        self.state = QUEUED
        self._pool = INTAKE
        self.length = 1
        self.priority = 0
        self.out = self.err = self.err_tb = None
        self.err_index = 0
        self.remaining = 1
        self.room_wait = 0.0
        self.joined = -1.0  # when it joined the active set; -1: not yet
        self.buffer: deque[Any] = deque()  # values emitted and not yet read
        self.waiter: anyio.Event | None = None  # its reader, waiting for a value

    def emit(self, value: Any) -> None:
        self.buffer.append(value)
        self._wake_reader()

    def wake(self) -> None:
        # DONE: its last value is in the buffer (or it failed); the reader sees the end.
        self._wake_reader()

    def _wake_reader(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter.set()


@final
class Values(ObjectReceiveStream[R], Generic[R]):
    """The values of one item, as its step emits them.

    Iterate it (``async for``) or ``receive()`` one at a time; it ends after the item's
    ``Last`` value, or raises the item's error (a ``Failure``'s exception, the step's
    exception, or :exc:`batched.BatcherClosed`) once the values before it are read.
    Closing it (``aclose``, leaving ``async with``, or dropping it) makes the item leave
    before the next step. One task at a time may receive from it.
    """

    __slots__ = ("_closed", "_member")

    def __init__(self, member: Member) -> None:
        self._member = member
        self._closed = False

    def __repr__(self) -> str:
        return f"<batched stream of {self._member.item!r}>"

    async def receive(self) -> R:
        """The next value.

        :raises anyio.EndOfStream: after the item's last value
        :raises anyio.ClosedResourceError: if this stream was closed
        :raises Exception: the item's error, once the values before it are read
        """
        await anyio.lowlevel.checkpoint()
        member = self._member
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            buffer = member.buffer
            if buffer:
                value: R = buffer.popleft()
                return value
            if member.state > QUEUED:  # ended: DONE (or CANCELLED, its sender gone)
                if member.err is None:
                    raise anyio.EndOfStream
                member.outcome()  # raises the item's error
            member.waiter = waiter = anyio.Event()
            try:
                await waiter.wait()
            finally:
                member.waiter = None

    def close(self) -> None:
        """Stop reading: the item leaves before the next step (sync ``aclose``)."""
        if self._closed:
            return
        self._closed = True
        member = self._member
        member.buffer.clear()
        if member.state <= QUEUED:
            member.core.abandon_safely(member)
        member._wake_reader()  # a receive() of another task: ClosedResourceError

    async def aclose(self) -> None:
        """Stop reading: the item leaves before the next step."""
        self.close()
        await anyio.lowlevel.checkpoint()

    def __del__(self) -> None:
        # A reader that breaks out of ``async for`` without ``async with`` leaves when
        # its stream is dropped. Only in the thread that serves the item: the core is
        # not to be touched from another (a garbage collection there).
        if not self._closed and get_ident() == self._member.core.thread:
            self.close()
