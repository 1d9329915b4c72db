"""The owned driver: an open ``Batcher``'s task group, its collector and its slots.

``open`` starts a task group and in it the collector, which sleeps until calls arrive,
waits for a free slot, then for the batch to be due (full, or its oldest item's
deadline, or the batcher closing), cuts it and hands it to a slot. A slot is a worker
task, started on first need up to ``max_concurrent_batches`` and kept (spawning a task
per batch costs more than handing one over). When ``fn`` returns, the slot cuts the
next due batch itself and starts it before the hand-back, so the woken callers never
hold up the device. ``close`` drains (normal exit) or releases everyone (exception).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel

from .._backends import current
from .._core.queue import Core, Cut
from .execute import Executor
from .group import close_group, open_group

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from anyio.abc import TaskGroup, TaskStatus

    from .._backends import Backend, Signal
    from .._core.calls import CallCore
    from .._core.counts import Counts
    from .._settings import Settings

__all__ = ["Owned"]

# Batches a slot may cut for itself in a row before it yields to the event loop: a
# backlog of batches of a fn that never awaits would otherwise hold the loop.
_STREAK = 16


@final
class _Worker:
    """An execution slot: a task that runs one batch at a time, handed over by a signal."""

    __slots__ = ("batch", "retired", "signal", "streak")

    def __init__(self, signal: Signal) -> None:
        self.batch: Cut | None = None
        self.signal = signal
        self.streak = 0  # batches it has cut itself in a row, without yielding
        self.retired = False  # ended by a lower max_concurrent_batches (see _retire)


@final
class Owned:
    """The task group, collector and slots of one open batcher."""

    __slots__ = (
        "alone",
        "backend",
        "collecting",
        "core",
        "executor",
        "fatal",
        "idle",
        "inline",
        "max_workers",
        "new_call",
        "slot_freed",
        "tg",
        "workers",
    )

    def __init__(self, settings: Settings, counts: Counts) -> None:
        self.backend: Backend = current()
        self.core = core = Core(settings, counts, self.backend.clock)
        core.on_fault = self.crash
        core.track_deadlines(self.backend.deadline_of, self.backend.current_deadline)
        self.executor = Executor(settings, core, self._spawn, self.backend)
        # Callers await their calls directly: no frame of ours between them and fn.
        self.new_call = self.backend.new_call
        self.max_workers = settings.max_concurrent_batches
        # One slot: the collector runs each batch itself (see _collect_alone) until
        # configure() gives it more; `inline` is the batch it runs.
        self.alone = self.max_workers == 1
        self.inline: Cut | None = None
        self.workers = 0  # worker tasks alive
        self.idle: list[_Worker] = []  # workers waiting for a batch
        self.slot_freed: Signal | None = None  # set when a worker goes idle
        self.collecting = True  # the collector may still hand out batches
        self.fatal: BaseException | None = None  # raised from close()
        self.tg: TaskGroup | None = None

    def result(self, call: CallCore) -> Awaitable[Any]:
        """What a caller awaits for its outcome: the call itself."""
        return call  # type: ignore[return-value]

    def release(self) -> None:
        """Nothing to let go of: the owning block ends the driver."""

    def configure(self, settings: Settings) -> None:
        """New tunable settings (checked by the front), effective from the next cut."""
        core = self.core
        core.check(settings)
        core.apply(settings)
        n = settings.max_concurrent_batches
        self.executor.thread_limiter.total_tokens = n
        self.max_workers = n
        if self.alone and n > 1 and self.collecting:
            # The collector that runs batches itself goes on with workers: woken, at
            # once; while it runs a batch, a new collector takes over (call this from a
            # task), and that batch holds a slot until it ends.
            self.alone = False
            if self.inline is not None:
                self.workers = 1
                assert self.tg is not None
                self.tg.start_soon(self._collector)
        # Fewer slots: idle workers beyond them end now, busy ones when their batch has
        # run (_free_slot); no running batch is cancelled. More: a collector waiting for
        # a slot may start a worker now.
        while self.idle and self.workers > n:
            self._retire(self.idle.pop())
        signal = self.slot_freed
        if signal is not None and (self.idle or self.workers < n):
            self.slot_freed = None
            signal.set()

    def _retire(self, worker: _Worker) -> None:
        """End an idle worker: there are more than ``max_concurrent_batches`` slots."""
        worker.retired = True
        self.workers -= 1  # now, not when its task ends: the slot is gone at once
        worker.batch = None
        worker.signal.set()

    def _spawn(self, fn: Any, *args: Any) -> None:
        assert self.tg is not None
        self.tg.start_soon(fn, *args)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self.tg = await open_group(self._collector)

    async def close(self, exc: BaseException | None) -> bool | None:
        """Drain (``exc`` is None) or release every caller, then end the task group;
        what ``__aexit__`` returns."""
        tg = self.tg
        assert tg is not None
        core = self.core
        try:
            # Drain: refuse new calls, finish what was accepted, then let tasks end.
            return await close_group(
                tg, exc, core.close_intake, lambda: self._fail_all(None), lambda: self.fatal
            )
        finally:
            core.accepting = False

    def _fail_all(self, cause: BaseException | None) -> None:
        for fault in self.core.fail_all(cause):
            if not isinstance(fault, Exception) and self.fatal is None:
                self.fatal = fault  # a user's pool raised a BaseException while emptied

    def crash(self, exc: BaseException) -> None:
        """A BaseException from ``fn``, or a fault in the collector or a pool, ends the
        batcher: every waiting caller gets ``BatcherClosed`` chained to it, and it is
        raised from ``close`` in the task that owns the batcher (never from a worker:
        asyncio would re-raise a KeyboardInterrupt out of the loop)."""
        if self.fatal is None:
            self.fatal = exc
        self._fail_all(exc)
        assert self.tg is not None
        self.tg.cancel_scope.cancel()

    # -- the collector ---------------------------------------------------------------------

    async def _collector(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        handed_over = False
        try:
            if self.alone:
                how = await self._collect_alone()
                handed_over = how == "handed"
                if how == "switch":
                    await self._collect()
            else:
                await self._collect()
        except anyio.get_cancelled_exc_class():
            self._fail_all(None)
            raise
        except BaseException as exc:
            self.crash(exc)
        finally:
            if not handed_over:
                self._end_collecting()

    def _end_collecting(self) -> None:
        # Idle workers wait for a batch that will not come: let them end.
        self.collecting = False
        for worker in self.idle:
            worker.signal.set()
        self.idle.clear()

    async def _wait(self, deadline: float | None) -> None:
        """Sleep until a call is accepted (or the intake closes), or until ``deadline``."""
        core = self.core
        signal = self.backend.signal()
        core.wakeup = signal.set
        try:
            if deadline is None:
                await signal.wait()
            else:
                await self.backend.wait_until(signal, deadline)
        finally:
            if core.wakeup == signal.set:  # else it woke, or another collector waits now
                core.wakeup = None

    async def _collect(self) -> None:
        core = self.core
        clock = self.backend.clock
        while True:
            if not core.waiting:
                core.drain()
                if not core.waiting:
                    if core.draining:
                        return
                    await self._wait(None)
                    continue
            worker = await self._slot()
            cut = False
            # The slot is held while the batch becomes due: configure() may lower
            # max_concurrent_batches meanwhile, and then the slot is given back.
            while self.workers <= self.max_workers:
                core.drain()
                if not core.waiting:
                    break
                deadline = core.due(clock())
                if deadline is None:
                    cut = True
                    break
                await self._wait(deadline)
            if not cut:
                if worker is None:
                    self.workers -= 1
                elif self.workers > self.max_workers:
                    self._retire(worker)
                else:
                    self.idle.append(worker)
                continue
            batch = core.cut(clock())
            if worker is None:
                assert self.tg is not None
                self.tg.start_soon(self._worker, batch)
            else:
                worker.batch = batch
                worker.signal.set()

    async def _collect_alone(self) -> str:
        """With one slot, the collector is the slot: it runs each batch itself, one task
        wake-up per batch instead of two. When ``fn`` returns, the next due batch is cut
        and its ``fn`` started before the woken callers run (they are only scheduled).

        Returns "drained"; "switch" when ``configure`` gave more slots while it waited
        (it goes on with workers); "handed" when that happened while it ran a batch (a
        new collector has taken over)."""
        core = self.core
        clock = self.backend.clock
        streak = 0
        while True:
            if not self.alone:
                return "switch"
            core.drain()
            if not core.waiting:
                if core.draining:
                    return "drained"
                await self._wait(None)
                streak = 0
                continue
            deadline = core.due(clock())
            if deadline is not None:
                await self._wait(deadline)
                streak = 0
                continue
            if streak >= _STREAK:
                await anyio.lowlevel.checkpoint()
                streak = 0
                continue
            streak += 1
            batch = self.inline = core.cut(clock())
            try:
                await self._run_batch(batch)
            except anyio.get_cancelled_exc_class():
                core.close_batch(batch)
                raise
            except BaseException as exc:
                self.crash(exc)
            finally:
                core.done(batch)
                self.inline = None
            if self._inline_done():
                return "handed"

    def _inline_done(self) -> bool:
        """The collector's own batch ended: True if it handed collecting over meanwhile
        (the batch held a slot of the collector with workers, free now)."""
        if self.alone:
            return False
        self.workers -= 1
        signal = self.slot_freed
        if signal is not None:
            self.slot_freed = None
            signal.set()
        return True

    async def _run_batch(self, batch: Cut) -> None:
        """Compute a batch and hand back its outcomes, in this task."""
        live = self.core.live(batch)
        if live:  # else every caller left before the batch started
            await self.executor.run(live, None, batch.reason, batch.waiting)

    # -- slots -----------------------------------------------------------------------------

    async def _slot(self) -> _Worker | None:
        """Wait for a free slot: an idle worker, or room to start one (None)."""
        while not self.idle:
            if self.workers < self.max_workers:
                self.workers += 1
                return None
            self.slot_freed = signal = self.backend.signal()
            await signal.wait()
        return self.idle.pop()

    def _free_slot(self, worker: _Worker) -> None:
        """The worker's batch function returned: it may take the next batch."""
        worker.signal = self.backend.signal()
        if not self.collecting:
            worker.signal.set()  # no batch will come: let the worker end
            return
        if self.workers > self.max_workers:
            self._retire(worker)
            return
        self.idle.append(worker)
        signal = self.slot_freed
        if signal is not None:
            self.slot_freed = None
            signal.set()

    def _next_batch(self, worker: _Worker) -> Cut | None:
        # A slot whose fn just returned takes the next batch itself when one is due, so
        # that it starts before the collector's and the callers' wake-ups run. Every so
        # often it yields instead (see _STREAK).
        core = self.core
        if not self.collecting or (not core.accepting and not (core.draining or core.stopped)):
            return None
        if self.workers > self.max_workers:
            return None  # configure() lowered max_concurrent_batches: this slot ends
        if worker.streak >= _STREAK:
            worker.streak = 0
            return None
        core.drain()
        if not core.waiting or core.due(self.backend.clock()) is not None:
            worker.streak = 0
            return None
        worker.streak += 1
        return core.cut(self.backend.clock())

    async def _worker(self, batch: Cut) -> None:
        worker = _Worker(self.backend.signal())
        try:
            while True:
                following = await self._run(batch, worker)
                if following is not None:
                    batch = following
                    continue
                await worker.signal.wait()
                if worker.batch is None:
                    return  # the collector has ended
                batch, worker.batch = worker.batch, None
        finally:
            if not worker.retired:
                self.workers -= 1

    async def _run(self, batch: Cut, worker: _Worker) -> Cut | None:
        """Run one batch and hand back its outcomes; the batch this slot runs next, if
        one was due when ``fn`` returned."""
        core = self.core
        following: Cut | None = None
        released = False

        def next_or_free() -> None:
            # The next batch is cut before the hand-back, and its fn is started before
            # the woken callers run: the device does not idle while they do.
            nonlocal following, released
            following = self._next_batch(worker)
            if following is None:
                self._free_slot(worker)
            released = True

        try:
            live = core.live(batch)
            if live:  # else every caller left before the batch started
                await self.executor.run(live, next_or_free, batch.reason, batch.waiting)
        except anyio.get_cancelled_exc_class():
            core.close_batch(batch)
            if following is not None:
                core.close_batch(following)
                core.done(following)
            raise
        except BaseException as exc:
            following = None  # crash() has released its callers too
            self.crash(exc)
        finally:
            core.done(batch)
            if not released:
                self._free_slot(worker)
        return following
