"""The pulled driver: a ``Batcher`` without ``fn`` hands its batches to consumer tasks.

Each ``batches()`` is a consumer: a receive stream whose waiting ``receive()`` is a free
slot. The dispatcher, the one task of the batcher's block, waits until a consumer waits
and a batch is due (full, its oldest item's deadline, the block closing), cuts it and
hands it to the consumer that has waited longest. A batch goes to exactly one consumer;
one handed to a consumer cancelled in that instant goes to the next. The consumer answers
it (``Batch.set_results`` / ``fail``); a batch still out when its consumer's stream
closes fails its callers with ``BatcherClosed`` chained to why the stream closed.

Leaving the block normally stops intake, still cuts what waits, then ends the streams:
consumers started outside it finish on their own. Leaving it by an exception releases
every caller at once, and ends the streams too.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

from .._backends import current
from .._batch import Batch
from .._core.calls import closed_error
from .._core.queue import Core
from .._observe import report, tally
from .group import close_group, open_group

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup, TaskStatus

    from .._backends import Backend, Signal
    from .._core.calls import CallCore
    from .._core.counts import Counts
    from .._settings import Settings

__all__ = ["Batches", "Pulled"]


class Batches(MemoryObjectReceiveStream["Batch[Any]"]):
    """One consumer of a batcher's batches: ``async for batch in batches``.

    An anyio memory object receive stream whose items are cut only while it waits.
    Close it (``async with batches:``) when done: a batch it received and left
    unanswered then fails its callers with ``BatcherClosed``, chained to the exception
    that left the block.
    """

    def __init__(self, hub: Pulled) -> None:
        # A stream state of its own, for anyio's bookkeeping (statistics, closing): the
        # batches themselves come from the hub.
        send, receive = anyio.create_memory_object_stream["Batch[Any]"](0)
        super().__init__(receive._state)
        send.close()
        receive.close()
        self._hub = hub
        self._given: Batch[Any] | None = None
        self._signal: Signal | None = None
        self._out: set[Batch[Any]] = set()  # received, not answered
        self._left = False
        hub.count(+1)

    def receive_nowait(self) -> Batch[Any]:
        """A batch handed back by a consumer cancelled as it received it, if any.

        :raises anyio.WouldBlock: none is ready (a batch is cut only for a waiting
            consumer)
        :raises anyio.EndOfStream: the batcher has closed
        """
        if self._closed:
            raise anyio.ClosedResourceError
        hub = self._hub
        if hub.ready:
            return self._own(hub.ready.popleft())
        if hub.ended:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def receive(self) -> Batch[Any]:
        """Wait for the next batch (this consumer is a free slot meanwhile).

        :raises anyio.EndOfStream: the batcher has closed and handed out everything
        """
        if self._closed:
            raise anyio.ClosedResourceError
        hub = self._hub
        if hub.ended:  # the dispatcher is gone: take what was handed back, or end
            await anyio.lowlevel.checkpoint()
            if hub.ready:
                return self._own(hub.ready.popleft())
            raise anyio.EndOfStream
        self._signal = signal = hub.backend.signal()
        hub.waiting.append(self)
        hub.kick()
        try:
            await signal.wait()
        except BaseException:
            given, self._given = self._given, None
            if given is not None:
                hub.hand_back(given)  # handed over in the instant it was cancelled
            elif self in hub.waiting:
                hub.waiting.remove(self)
                hub.kick()
            raise
        given, self._given = self._given, None
        if given is None:
            if self._closed:
                raise anyio.ClosedResourceError
            raise anyio.EndOfStream
        return self._own(given)

    def _own(self, batch: Batch[Any]) -> Batch[Any]:
        # Weakly: a stream dropped with a batch out is collected at once, and releases it.
        batch.consumer = weakref.ref(self)
        self._out.add(batch)
        return batch

    def clone(self) -> Batches:
        """Another consumer of the same batcher (each batch goes to one of them)."""
        if self._closed:
            raise anyio.ClosedResourceError
        return self._hub.consumer()

    def close(self) -> None:
        self._leave(None)
        super().close()

    async def aclose(self) -> None:
        self.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._leave(exc_val)
        super().__exit__(exc_type, exc_val, exc_tb)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._leave(exc_val)
        self.close()

    def __del__(self) -> None:
        # Dropped unclosed: its batches must not keep their callers waiting. Their
        # BatcherClosed says so; anyio's ResourceWarning would only repeat it.
        if not self._closed:
            self._leave(None)
            self._closed = True

    def _leave(self, cause: BaseException | None) -> None:
        """The consumer is gone: its unanswered batches fail, and a task still waiting
        in ``receive`` on this stream wakes (with ``ClosedResourceError``)."""
        if self._left:
            return
        self._left = True
        hub = self._hub
        hub.count(-1)
        if self in hub.waiting:
            hub.waiting.remove(self)
            signal = self._signal
            if signal is not None:
                self._closed = True
                signal.set()
        out, self._out = self._out, set()
        for batch in out:
            error = closed_error(
                cause,
                "the consumer of this pulled batch closed its stream without answering it",
            )
            batch.close(error)
        hub.kick()


@final
class Pulled:
    """The core, dispatcher and consumers of one open batcher without ``fn``."""

    __slots__ = (
        "backend",
        "consumers",
        "core",
        "ended",
        "new_call",
        "on_batch",
        "ready",
        "signal",
        "tg",
        "waiting",
    )

    def __init__(self, settings: Settings, counts: Counts) -> None:
        self.backend: Backend = current()
        self.core = Core(settings, counts, self.backend.clock)
        self.core.track_deadlines(self.backend.deadline_of, self.backend.current_deadline)
        self.new_call = self.backend.new_call
        self.on_batch = settings.on_batch
        self.waiting: deque[Batches] = deque()  # consumers waiting in receive(), FIFO
        self.ready: deque[Batch[Any]] = deque()  # cut, handed back by a cancelled consumer
        self.consumers = 0  # consumers whose stream is open
        self.count(0)
        self.ended = False  # no batch will come: receive() ends
        self.signal: Signal | None = None  # the dispatcher's wake-up, while it waits
        self.tg: TaskGroup | None = None

    def result(self, call: CallCore) -> Awaitable[Any]:
        return call  # type: ignore[return-value]

    def release(self) -> None:
        """Nothing to let go of: the owning block ends the driver."""

    def consumer(self) -> Batches:
        return Batches(self)

    def count(self, change: int) -> None:
        """A consumer opened (+1) or left (-1) its stream. Each consumer is a slot: what
        ``timeout_ms="auto"`` counts as slots (never fewer than one)."""
        self.consumers += change
        self.core.slots = max(1, self.consumers)

    def configure(self, settings: Settings) -> None:
        """New tunable settings (checked by the front), effective from the next cut;
        ``max_concurrent_batches`` does not apply (each waiting consumer is a slot)."""
        self.core.check(settings)
        self.core.apply(settings)
        self.count(0)  # apply() took max_concurrent_batches as the slots
        self.kick()  # the dispatcher asks `due` afresh

    def kick(self) -> None:
        signal = self.signal
        if signal is not None:
            self.signal = None
            signal.set()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self.tg = await open_group(self._dispatcher)

    async def close(self, exc: BaseException | None) -> bool | None:
        tg = self.tg
        assert tg is not None
        core = self.core
        def drain() -> None:
            core.close_intake()
            self.kick()

        try:
            return await close_group(tg, exc, drain, lambda: self._release_all(None))
        finally:
            core.accepting = False
            self._end()

    def _end(self) -> None:
        """No batch will come: waiting consumers' ``receive`` ends."""
        self.ended = True
        waiting, self.waiting = self.waiting, deque()
        for consumer in waiting:
            signal = consumer._signal
            if signal is not None:
                signal.set()

    def _release_all(self, cause: BaseException | None) -> None:
        """Every caller still waiting, or whose batch is out, gets ``BatcherClosed``."""
        self.ready.clear()
        for fault in self.core.fail_all(cause):
            if not isinstance(fault, Exception):
                raise fault

    # -- the dispatcher --------------------------------------------------------------------

    async def _dispatcher(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        try:
            await self._dispatch()
        except anyio.get_cancelled_exc_class():
            self._release_all(None)
            raise
        except BaseException as exc:
            # A fault in a user's pool: the batcher ends; everyone is released.
            self._release_all(exc)
            self._end()
            raise

    async def _wait(self, deadline: float | None, arrivals: bool) -> None:
        """Sleep until kicked (a consumer waits or leaves, a batch is handed back, the
        block closes) or, with ``arrivals``, a call is accepted; or until ``deadline``."""
        core = self.core
        self.signal = signal = self.backend.signal()
        if arrivals:
            core.wakeup = signal.set
        try:
            if deadline is None:
                await signal.wait()
            else:
                await self.backend.wait_until(signal, deadline)
        finally:
            core.wakeup = None
            self.signal = None

    async def _dispatch(self) -> None:
        core = self.core
        clock = self.backend.clock
        while True:
            core.drain()
            if self.ready and self.waiting:
                self._give(self.ready.popleft())
                continue
            if core.draining and not self.consumers:
                # Nobody will pull what still waits: its callers must not hang.
                if core.queued or self.ready:
                    self._release_all(None)
                return
            if not core.waiting:
                if core.draining and not self.ready:
                    return  # everything was handed out
                await self._wait(None, arrivals=True)
                continue
            if not self.waiting:
                await self._wait(None, arrivals=core.draining)
                continue
            deadline = core.due(clock())
            if deadline is not None:
                await self._wait(deadline, arrivals=True)
                continue
            now = clock()
            cut = core.cut(now)
            entries = cut.entries
            if not entries:  # every item's deadline had passed: no batch to hand out
                core.done(cut)
                continue
            batch: Batch[Any] = Batch(
                entries,
                [entry.item for entry in entries],
                cut.reason,
                self.backend.deadline_of,
                self,
            )
            batch.cut = cut
            batch.started = now
            self._give(batch)

    def _give(self, batch: Batch[Any]) -> None:
        consumer = self.waiting.popleft()
        consumer._given = batch
        signal = consumer._signal
        assert signal is not None
        signal.set()

    def hand_back(self, batch: Batch[Any]) -> None:
        """A batch given to a consumer cancelled before it saw it: the next consumer's."""
        if self.ended and not self.waiting:
            error = closed_error(None, "the batcher closed before a consumer took this batch")
            batch.close(error)
            return
        self.ready.appendleft(batch)
        if self.ended:
            self._give(self.ready.popleft())
        self.kick()

    # -- answers ---------------------------------------------------------------------------

    def answer(
        self,
        batch: Batch[Any],
        results: Sequence[Any] | None,
        error: Exception | None,
        counted: bool = True,
    ) -> None:
        core = self.core
        cut = batch.cut
        consumer = None if batch.consumer is None else batch.consumer()
        if consumer is not None:
            consumer._out.discard(batch)
        entries = cut.entries
        computed = core.clock()
        live = core.live(cut)
        if results is not None:
            if len(live) == len(entries):
                core.deliver(entries, results)
            else:  # some callers left while the batch was out: their results drop
                keep = set(map(id, live))
                core.deliver(
                    live, [r for e, r in zip(entries, results, strict=True) if id(e) in keep]
                )
        elif error is not None:
            core.fail(live, error)
        core.done(cut)
        if counted:
            called = (
                None
                if core.max_queue is None
                else [e.arrival - _owner_room_wait(e) for e in entries]
            )
            core.counts.ran(len(entries), computed - batch.started)
            ended = core.clock()
            core.counts.waited(batch.started, ended, [e.arrival for e in entries], called)
            on_batch = self.on_batch
            if on_batch is not None:
                report(
                    on_batch,
                    entries,
                    cut.reason,
                    batch.started,
                    ended,
                    cut.waiting,
                    None,
                    tally(entries, results, error),
                )


def _owner_room_wait(entry: Any) -> float:
    from .._core.calls import owner

    return owner(entry).room_wait
