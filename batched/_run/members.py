"""An item of ``Continuous`` as the core and its reader see it: a call, and its stream.

A :class:`Member` is a call of one item (the core queues it, counts it and lets its
reader leave like any call) that also carries the item's current state and the send side
of its values. Its outcome is counted when its stream ends: completed on ``Last``, failed
on a ``Failure``, a step error or ``BatcherClosed``; cancelled when its reader leaves
before that. :class:`Values` is the receive side its reader holds.
"""

from __future__ import annotations

from threading import get_ident
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

import anyio
import anyio.lowlevel
from anyio.abc import ObjectReceiveStream

from .._core.calls import INTAKE, QUEUED, CallCore

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["Member", "Values"]

R = TypeVar("R")


@final
class Member(CallCore):
    """One item of a ``Continuous``, from its call until its stream ends."""

    __slots__ = (
        "_pool",
        "arrival",
        "core",
        "current",
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
        "send",
        "seq",
        "state",
    )

    send: MemoryObjectSendStream[Any]
    current: Any  # the item's state: the item itself until its first step

    def __init__(self) -> None:
        # The core sets item, arrival, seq (and length, priority when they differ).
        self.state = QUEUED
        self._pool = INTAKE
        self.length = 1
        self.priority = 0
        self.out = self.err = self.err_tb = None
        self.err_index = 0
        self.remaining = 1
        self.room_wait = 0.0
        self.joined = -1.0  # when it joined the active set; -1: not yet

    def wake(self) -> None:
        # DONE: its last value is in the buffer (or it failed); the reader sees the end.
        self.send.close()


@final
class Values(ObjectReceiveStream[R], Generic[R]):
    """The values of one item, as its step emits them.

    Iterate it (``async for``) or ``receive()`` one at a time; it ends after the item's
    ``Last`` value, or raises the item's error (a ``Failure``'s exception, the step's
    exception, or :exc:`batched.BatcherClosed`) once the values before it are read.
    Closing it (``aclose``, leaving ``async with``, or dropping it) makes the item leave
    before the next step.
    """

    __slots__ = ("_closed", "_member", "_receive")

    def __init__(self, member: Member, receive: MemoryObjectReceiveStream[R]) -> None:
        self._member = member
        self._receive = receive
        self._closed = False

    def __repr__(self) -> str:
        return f"<batched stream of {self._member.item!r}>"

    async def receive(self) -> R:
        """The next value.

        :raises anyio.EndOfStream: after the item's last value
        :raises anyio.ClosedResourceError: if this stream was closed
        :raises Exception: the item's error, once the values before it are read
        """
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            member = self._member
            if member.err is None:
                raise
            member.outcome()  # raises the item's error
            raise  # unreachable: outcome() raised

    def close(self) -> None:
        """Stop reading: the item leaves before the next step (sync ``aclose``)."""
        if self._closed:
            return
        self._closed = True
        self._receive.close()
        member = self._member
        if member.state <= QUEUED:
            member.core.abandon_safely(member)
            member.send.close()

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
