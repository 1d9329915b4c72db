"""The loop-bound half of a ``Batcher``: intake, collector and pools.

``Batcher.__aenter__`` makes one engine and ``__aexit__`` ends it, so nothing bound to
an event loop outlives the ``async with`` block or leaks into the next one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import TYPE_CHECKING

import anyio

from ._call import CANCELLED, DONE, INTAKE, QUEUED, ROOM, Call, SharedCall, Signal, backend_classes
from ._dispatch import Batch, Dispatcher
from ._errors import QueueFull

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from anyio.abc import TaskGroup, TaskStatus

    from ._dispatch import Worker
    from ._settings import Settings
    from ._stats import _Recorder
    from ._strategies import Entry, Pool

OPEN = 1
CLOSING = 2
CLOSED = 3
# Batches a slot may cut for itself in a row before it yields to the event loop.
_STREAK = 16


def _timer() -> Callable[[float, Callable[[], None]], asyncio.TimerHandle] | None:
    """``loop.call_at`` on asyncio, None on trio: see ``Engine._wait_until``."""
    try:
        return asyncio.get_running_loop().call_at
    except RuntimeError:
        return None


def _clock() -> Callable[[], float]:
    # The same clock anyio.current_time() reads, without its per-call dispatch.
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        return trio.lowlevel.current_clock().current_time
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic  # what BaseEventLoop.time returns, without its frame
    return loop.time


class Engine(Dispatcher):
    """Intake, collector and pools of one open batcher; the dispatcher is its base.

    ``_driven.DrivenEngine`` reuses the intake, pools and cut with the callers as the
    collector, for the decorator outside ``async with``.
    """

    __slots__ = (
        "abandons",
        "batch_size",
        "bulk",
        "cache_key",
        "callers",
        "cause",
        "clock",
        "collecting",
        "fatal",
        "fn",
        "inflight",
        "intake",
        "intake_open",
        "intake_queue",
        "is_async",
        "isolate",
        "lengths",
        "make_call",
        "make_signal",
        "max_len",
        "max_queue",
        "max_wait",
        "padded",
        "queued",
        "room",
        "room_waiting",
        "running",
        "seq",
        "small",
        "state",
        "stats",
        "tg",
        "threshold",
        "timeout",
        "timer",
        "waiting",
        "waiting_len",
    )

    def __init__(self, settings: Settings, stats: _Recorder) -> None:
        super().__init__(settings.max_concurrent_batches)
        self.fn = settings.fn
        self.is_async = settings.is_async
        self.batch_size = settings.batch_size
        self.timeout = settings.timeout_ms / 1000.0
        self.max_wait = settings.max_wait_ms / 1000.0
        self.max_len: float = (
            math.inf if settings.max_batch_length is None else settings.max_batch_length
        )
        self.max_queue = settings.max_queue_size
        self.padded = settings.padded
        # Padded with a budget: how many waiting items have each length, so the padded
        # size of what waits (longest x items) is known without a scan.
        self.lengths: dict[int, int] | None = (
            {} if self.padded and self.max_len != math.inf else None
        )
        self.threshold = settings.small_batch_threshold
        self.isolate = settings.isolate_errors
        self.cache = settings.cache
        self.cache_key = settings.cache_key
        # Under dedupe: the keyed items waiting or running, so equal items join them.
        self.inflight: dict[object, SharedCall] | None = {} if settings.dedupe else None
        self.stats = stats
        self.small: Pool = settings.strategy.new_pool()
        self.bulk: Pool = settings.strategy.new_pool()
        # The intake: callers append, the collector drains. A deque and a Signal, not an
        # anyio memory stream: its send_nowait/receive_nowait pair costs ~0.3 µs per item
        # and its blocking receive() an event, a task lookup and a checkpoint per wake-up.
        self.intake_queue: deque[Call] = deque()
        self.intake_open = True
        self.collecting = True  # the collector may still hand out batches
        self.intake: Signal | None = None  # set when a call arrives for a waiting collector
        self.make_call, self.make_signal = backend_classes()
        self.clock = _clock()
        self.timer = _timer()
        self.state = OPEN
        self.queued = 0  # items accepted and not yet cut: the stream and the pools
        self.waiting = 0  # items in the pools
        self.waiting_len = 0  # their summed length; kept exact only under a length budget
        self.room: deque[Call] = deque()  # calls waiting for queue room, FIFO
        self.room_waiting = 0
        self.running: set[Batch] = set()
        self.seq = 0
        self.abandons = 0  # callers that left, so a batch knows whether to re-check its own
        self.cause: BaseException | None = None  # what BatcherClosed is chained to
        self.fatal: BaseException | None = None  # raised from __aexit__
        self.tg: TaskGroup | None = None
        self.callers = 0  # calls waiting; read by the caller-driven engine only

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self.tg = tg
        try:
            await tg.start(self._collector)
        except BaseException as exc:
            tg.cancel_scope.cancel()
            await tg.__aexit__(type(exc), exc, exc.__traceback__)
            raise

    async def stop(self, exc: BaseException | None) -> bool | None:
        tg = self.tg
        assert tg is not None
        suppress: bool | None = None
        try:
            if exc is None:
                # Drain: refuse new calls, finish what was accepted, then let tasks end.
                self.state = CLOSING
                self._close_room()
                self._close_intake()
                await tg.__aexit__(None, None, None)
            else:
                self.fail_all()
                tg.cancel_scope.cancel()
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    # The task group's scope may own this cancellation: it must see it.
                    suppress = await tg.__aexit__(type(exc), exc, exc.__traceback__)
                else:
                    # Any other exception propagates unchanged, never in an ExceptionGroup.
                    await tg.__aexit__(None, None, None)
        except BaseException:
            # fn's BaseException wins over the block's own cancellation, which the task
            # group re-raises when fn raised it as the owner was being cancelled.
            if self.fatal is None:
                raise
        finally:
            self.state = CLOSED
        if self.fatal is not None:
            raise self.fatal
        return suppress

    def hurry(self) -> None:
        """Send what waits without waiting out ``timeout_ms`` (its front-end is closing);
        calls waiting for queue room get ``BatcherClosed``, as on any close."""
        self.timeout = 0.0
        self._close_room()
        if self.intake is not None:
            self.intake.set()

    def release(self) -> None:
        """Nothing to let go of: the owning block ends an engine (see DrivenEngine)."""

    def crash(self, exc: BaseException) -> None:
        """A BaseException from ``fn``, or a fault in the collector, ends the batcher.

        It is raised from ``__aexit__`` in the task that owns the batcher, so it never
        escapes a worker task (asyncio would re-raise a KeyboardInterrupt out of the loop).
        """
        if self.fatal is None:
            self.fatal = exc
        self.fail_all(exc)
        assert self.tg is not None
        self.tg.cancel_scope.cancel()

    def _close_room(self) -> None:
        room = self.room
        while room:
            call = room.popleft()
            if call.state == ROOM:
                call.close()
        self.room_waiting = 0

    def fail_all(self, cause: BaseException | None = None) -> None:
        """Release every caller still waiting with ``BatcherClosed``, now."""
        self.state = CLOSED
        self.abandons += 1
        if cause is not None and self.cause is None:
            self.cause = cause
        self._close_room()
        intake = self.intake_queue
        while intake:
            call = intake.popleft()
            if call.state == QUEUED:
                call.close()
        for pool in (self.small, self.bulk):
            for entry in self._empty(pool):
                entry._pool = None
                if entry._call.state == QUEUED:
                    entry._call.close()
        for batch in self.running:
            for entry in batch.entries:
                if entry._call.state == QUEUED:
                    entry._call.close()
        self.queued = self.waiting = self.waiting_len = 0
        if self.lengths is not None:
            self.lengths.clear()

    def _empty(self, pool: Pool) -> list[Entry]:
        """Every entry of a pool, even of one whose ``cut`` fails (a fault in a user's
        pool must not keep its callers waiting): then one ``oldest``/``remove`` at a time.

        A BaseException from the pool is kept to be raised from ``__aexit__``, after
        every caller is released and the task group has ended.
        """
        try:
            return pool.cut(len(pool), math.inf)
        except BaseException as exc:  # the fault is reported where it happened
            self._keep_fatal(exc)
        entries: list[Entry] = []
        try:
            for _ in range(self.waiting + 1):
                entry = pool.oldest()
                if entry is None:
                    break
                pool.remove(entry)
                entries.append(entry)
        except BaseException as exc:  # nothing more can be taken from it
            self._keep_fatal(exc)
        return entries

    def _keep_fatal(self, exc: BaseException) -> None:
        if not isinstance(exc, Exception) and self.fatal is None:
            self.fatal = exc

    # -- the caller's side -------------------------------------------------------------

    def submit(self, call: Call, wait: bool) -> None:
        """Accept the call, or queue it for room; ``QueueFull`` if it may not wait."""
        max_queue = self.max_queue
        if max_queue is not None and (
            self.room_waiting or (self.queued and self.queued + call.n > max_queue)
        ):
            if not wait:
                self.stats.rejected += call.n
                msg = (
                    f"no room for {call.n} item(s): {self.queued} of max_queue_size="
                    f"{max_queue} are taken and {self.room_waiting} call(s) wait for room"
                )
                raise QueueFull(msg)
            self.room.append(call)
            self.room_waiting += 1
            return
        self._accept(call, call.started)

    def _accept(self, call: Call, now: float) -> None:
        call.state = QUEUED
        entries = call.entries
        if entries is None:
            call.arrival = now
            call.seq = self.seq
            call._pool = INTAKE
            self.seq += 1
            self.queued += 1
        else:
            seq = self.seq
            for entry in entries:
                entry.arrival = now
                entry.seq = seq
                entry._pool = INTAKE
                seq += 1
            self.seq = seq
            self.queued += call.n
        self.intake_queue.append(call)
        intake = self.intake
        if intake is not None:
            self.intake = None
            intake.set()

    def _grant_room(self) -> None:
        room, max_queue = self.room, self.max_queue
        assert max_queue is not None
        while room:
            call = room[0]
            if call.state != ROOM:
                room.popleft()
                continue
            if self.queued and self.queued + call.n > max_queue:
                return
            room.popleft()
            self.room_waiting -= 1
            self._accept(call, self.clock())

    def subscribe(
        self, item: object, key: object, length: int, priority: float, wait: bool
    ) -> Call:
        """A keyed call: join the equal item waiting or running, or send a new one.

        The caller waits on the returned call, which never enters a pool; the shared
        item lives on while any of its callers waits.
        """
        now = self.clock()
        inflight = self.inflight
        shared = inflight.get(key) if inflight is not None else None
        call = self.make_call(item, 0, priority, now, None)
        if shared is not None and shared.state == DONE and shared.error is None:
            # Computed, its cache write under way: the result is here already.
            call.result = shared.result
            call.state = DONE
            return call
        if shared is None or shared.state > QUEUED:
            shared = SharedCall(item, length, priority, now, key, inflight)
            shared.storing = self.cache is not None
            self.submit(shared, wait)
            if inflight is not None:
                inflight[key] = shared
        call.state = QUEUED
        call.shared = shared
        shared.subscribers[call] = None
        return call

    def abandon(self, call: Call, count: bool = True) -> None:
        """The caller left (cancelled): drop its waiting items and free their room."""
        if count:
            self.stats.cancelled += call.n
        shared = call.shared
        if shared is not None:
            # A subscriber: the shared item goes only with its last caller.
            call.state = CANCELLED
            subscribers = shared.subscribers
            subscribers.pop(call, None)
            if not subscribers and shared.state <= QUEUED:
                if shared.state == QUEUED and shared._pool is None:
                    # Cut into a batch: fn computes it (and the cache keeps it) anyway, so
                    # an equal call may still join it until it settles.
                    return
                shared.forget()
                self.abandon(shared, count=False)
            return
        self.abandons += 1
        state = call.state
        call.state = CANCELLED
        if state == ROOM:
            self.room_waiting -= 1
        elif state == QUEUED:
            for entry in call.entries or (call,):
                pool = entry._pool
                if pool is None:
                    continue  # already cut into a batch
                if pool is not INTAKE:
                    pool.remove(entry)
                    self.waiting -= 1
                    self.waiting_len -= entry.length
                    if self.lengths is not None:
                        self._forget_lengths((entry,))
                entry._pool = None
                self.queued -= 1
        if self.room and self.state == OPEN:
            self._grant_room()

    # -- the collector -----------------------------------------------------------------

    async def _collector(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        try:
            await self._collect()
        except anyio.get_cancelled_exc_class():
            self.fail_all()
            raise
        except BaseException as exc:
            self.crash(exc)

    def _pool_call(self, call: Call) -> None:
        if call.state != QUEUED:
            return  # its caller left while it was in the stream
        pool = self.small if call.n <= self.threshold else self.bulk
        entries = call.entries
        lengths = self.lengths
        if entries is None:
            pool.add(call)
            call._pool = pool
            self.waiting += 1
            self.waiting_len += call.length
            if lengths is not None:
                lengths[call.length] = lengths.get(call.length, 0) + 1
            return
        length = 0
        for entry in entries:
            pool.add(entry)
            entry._pool = pool
            length += entry.length
            if lengths is not None:
                lengths[entry.length] = lengths.get(entry.length, 0) + 1
        self.waiting += call.n
        self.waiting_len += length

    def _drain(self) -> bool:
        """Move everything the intake holds into the pools; True once it has closed."""
        intake = self.intake_queue
        if intake and self.lengths is not None:
            while intake:
                self._pool_call(intake.popleft())
        elif intake:
            # Single-item calls, the bulk of the traffic, go to their pool inline.
            pool = self.small if self.threshold else self.bulk
            add, pool_call = pool.add, self._pool_call
            count = length = 0
            while intake:
                call = intake.popleft()
                if call.entries is None and call.state == QUEUED:
                    add(call)
                    call._pool = pool
                    count += 1
                    length += call.length
                else:
                    pool_call(call)
            self.waiting += count
            self.waiting_len += length
        return not self.intake_open

    def _oldest(self) -> Entry | None:
        a, b = self.small.oldest(), self.bulk.oldest()
        if a is None or (b is not None and b.seq < a.seq):
            return b
        return a

    async def _collect(self) -> None:
        try:
            await self._collect_batches()
        finally:
            # Idle workers wait for a batch that will not come: let them end.
            self.collecting = False
            for worker in self.idle:
                worker.event.set()
            self.idle.clear()

    async def _wait_intake(self) -> None:
        """Sleep until a call is sent or the intake closes.

        Callers set a per-backend signal (see ``_call``): anyio's memory stream ``receive()``
        built an event, a task lookup and a checkpoint per wake-up, more than a whole
        batch of one item costs.
        """
        self.intake = signal = self.make_signal()
        try:
            await signal.wait()
        finally:
            self.intake = None

    async def _wait_until(self, waiter: Signal | Call, deadline: float) -> None:
        """Wait for ``waiter`` to be woken, or for ``deadline``, whichever comes first.

        On asyncio a timer of the loop wakes it: an anyio cancel scope's deadline costs
        ~70 µs more per wait there (it cancels the task and delivers the cancellation),
        which a lone request pays on top of ``timeout_ms``. Trio's own deadlines are cheap.
        """
        timer = self.timer
        if timer is None:
            with anyio.CancelScope(deadline=deadline):
                await waiter.wait()
            return
        handle = timer(deadline, waiter.wake)
        try:
            await waiter.wait()
        finally:
            handle.cancel()

    def _close_intake(self) -> None:
        self.intake_open = False
        if self.intake is not None:
            self.intake.set()

    async def _collect_batches(self) -> None:
        draining = False
        while True:
            if not self.waiting:
                if draining:
                    return
                draining = self._drain()
                if not self.waiting and not draining:
                    await self._wait_intake()
                continue
            worker = await self._slot()
            cut = False
            while True:
                draining = self._drain() or draining
                if not self.waiting:
                    break
                deadline = self._due()
                if deadline is None:
                    cut = True
                    break
                self.intake = signal = self.make_signal()
                try:
                    await self._wait_until(signal, deadline)
                finally:
                    self.intake = None
            if not cut:
                if worker is None:
                    self.workers -= 1
                else:
                    self.idle.append(worker)
                continue
            batch = self._take()
            if worker is None:
                assert self.tg is not None
                self.tg.start_soon(self._worker, batch)
            else:
                worker.batch = batch
                worker.event.set()

    def _due(self) -> float | None:
        """None when the waiting items make a batch now (full, overdue, or the intake has
        closed); else the time they will. Call it after ``_drain`` with items waiting."""
        if (
            not self.intake_open
            or self.waiting >= self.batch_size
            or self.waiting_len >= self.max_len
            or (self.lengths is not None and max(self.lengths) * self.waiting >= self.max_len)
        ):
            # Padded, a batch is full once the longest waiting item times the items
            # waiting reaches the budget: a cut then stops on it, or fills it exactly.
            return None
        oldest = self._oldest()
        assert oldest is not None
        deadline = oldest.arrival + self.timeout
        return None if self.clock() >= deadline else deadline

    def _take(self) -> Batch:
        """Cut the next batch for a free slot; it counts as running from now."""
        batch = Batch(self._cut(self.clock()), self.abandons)
        self.running.add(batch)
        if self.room:
            self._grant_room()
        return batch

    def _next_batch(self, worker: Worker | None) -> Batch | None:
        # A slot whose fn just returned takes the next batch itself when one is due, so
        # the batch starts before the collector's and the callers' wake-ups run. Every
        # so often it yields instead: a backlog of batches of a fn that never awaits
        # would otherwise hold the event loop until the backlog is gone.
        if worker is None or not self.collecting or self.state == CLOSED:
            return None
        if worker.streak >= _STREAK:
            worker.streak = 0
            return None
        self._drain()
        if not self.waiting or self._due() is not None:
            worker.streak = 0
            return None
        worker.streak += 1
        return self._take()

    def _cut(self, now: float) -> list[Entry]:
        """Take the next batch, applying the rules: overdue, small calls, strategy."""
        room, budget = self.batch_size, self.max_len
        if self.padded and budget != math.inf:
            return self._cut_padded(now)
        batch: list[Entry] = []
        limit = now - self.max_wait
        while room:
            entry = self._oldest()
            if entry is None or entry.arrival > limit:
                break
            if entry.length > budget:
                if not batch:
                    batch.append(entry)  # oversize: it travels alone
                    entry._pool.remove(entry)
                room = 0
                break
            entry._pool.remove(entry)
            batch.append(entry)
            room -= 1
            budget -= entry.length
        for pool in (self.small, self.bulk):
            if not room:
                break
            got = pool.cut(room, budget)
            batch += got
            room -= len(got)
            if budget != math.inf:
                budget -= sum(entry.length for entry in got)
            if room and len(pool):
                # The pool stopped on the budget; the whole cut stops with it.
                if not batch:
                    batch = pool.cut(1, math.inf)
                break
        for entry in batch:
            entry._pool = None
        self.waiting -= len(batch)
        if self.max_len != math.inf:
            self.waiting_len -= sum([entry.length for entry in batch])
        self.queued -= len(batch)
        return batch

    def _cut_padded(self, now: float) -> list[Entry]:
        """``_cut`` where the length budget counts the padded size: longest x items.

        An item fits when the batch with it stays within the budget: with ``k`` items
        taken and the longest ``m`` long, the next may be at most ``budget // (k + 1)``
        long, and none fits once ``m * (k + 1)`` exceeds the budget. Asking the pool for
        one entry within that length keeps its rule: the cut stops at the first item
        (in its order) that does not fit.
        """
        room, budget = self.batch_size, self.max_len
        batch: list[Entry] = []
        longest = 0
        limit = now - self.max_wait
        stopped = False
        while room:
            entry = self._oldest()
            if entry is None or entry.arrival > limit:
                break
            k = len(batch) + 1
            if longest * k > budget or entry.length * k > budget:
                if not batch:
                    batch.append(entry)  # oversize: it travels alone
                    entry._pool.remove(entry)
                stopped = True
                break
            entry._pool.remove(entry)
            batch.append(entry)
            longest = max(longest, entry.length)
            room -= 1
        if not stopped:
            for pool in (self.small, self.bulk):
                while room and len(pool):
                    k = len(batch) + 1
                    if longest * k > budget:
                        stopped = True
                        break
                    got = pool.cut(1, budget // k)
                    if not got:
                        if not batch:
                            batch = pool.cut(1, math.inf)  # oversize: it travels alone
                        stopped = True
                        break
                    batch += got
                    longest = max(longest, got[0].length)
                    room -= 1
                if stopped or not room:
                    break
        for entry in batch:
            entry._pool = None
        self.waiting -= len(batch)
        self.waiting_len -= sum([entry.length for entry in batch])
        self.queued -= len(batch)
        if self.lengths is not None:
            self._forget_lengths(batch)
        return batch

    def _forget_lengths(self, entries: Iterable[Entry]) -> None:
        lengths = self.lengths
        assert lengths is not None
        for entry in entries:
            left = lengths[entry.length] - 1
            if left:
                lengths[entry.length] = left
            else:
                del lengths[entry.length]


__all__ = ["CLOSED", "CLOSING", "OPEN", "Engine"]
