"""The caller-driven driver: batching with no task of its own.

Outside ``async with``, a decorated function still batches, but nothing may outlive its
calls. So the waiting callers take turns as the collector: one of them, the leader,
waits for the batch to fill or for the oldest item's deadline, cuts the batch, hands the
leadership to another waiting caller, and runs the batch in its own task, shielded so
that its batch-mates are not hurt if it is cancelled meanwhile (it sees its own
cancellation when ``fn`` returns). A leader that leaves passes the leadership on; the
last caller out drops the driver, so nothing stays behind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar, final

import anyio
import anyio.lowlevel

from .._backends import current
from .._core.calls import DONE
from .._core.queue import Core, Cut
from .execute import Executor

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._backends import Backend
    from .._core.calls import CallCore
    from .._core.counts import Counts
    from .._settings import Settings

__all__ = ["Driven"]

T = TypeVar("T")


@final
class Driven:
    """One event loop's batching for a decorated function, driven by its callers."""

    __slots__ = (
        "backend",
        "busy",
        "callers",
        "core",
        "executor",
        "key",
        "leader",
        "max_workers",
        "new_call",
        "parked",
        "registry",
        "slot_wanted",
    )

    def __init__(
        self, settings: Settings, counts: Counts, registry: dict[object, Driven]
    ) -> None:
        self.backend: Backend = current()
        self.core = Core(settings, counts, self.backend.clock)
        # Deadlines are read by the leader (in its task) when it asks whether a batch is
        # due and when it cuts: an arrival does not wake a leader that waits for
        # timeout_ms (that would cost a wake-up per call), so a deadline arriving then
        # is seen at its next look; `async with` (the owned driver) sees it at once.
        self.core.track_deadlines(self._deadline_of, self.backend.current_deadline)
        self.executor = Executor(settings, self.core, None, self.backend)
        # A caller parks on its call many times: as a follower, and as the leader.
        self.new_call = self.backend.new_parked_call
        self.max_workers = settings.max_concurrent_batches
        self.key = self.backend.key  # the event loop this driver serves
        self.registry = registry  # where its batched function finds it, by key
        self.busy = 0  # batches running, each in the task of the caller that cut it
        self.leader: CallCore | None = None  # the caller acting as the collector
        self.slot_wanted = False  # the leader waits for a running batch to end
        self.parked: set[CallCore] = set()  # followers: callers waiting for their outcome
        self.callers = 0  # calls being served (or keyed calls waiting)

    def configure(self, settings: Settings) -> None:
        """New tunable settings (checked by the front, see ``Core.check``), effective
        from the next cut."""
        core = self.core
        core.apply(settings)
        n = settings.max_concurrent_batches
        self.executor.thread_limiter.total_tokens = n
        self.max_workers = n
        # The leader waits for a deadline or a slot that the new settings may have
        # moved: it asks afresh. Running batches go on (lower limits bind the next cut).
        leader = self.leader
        if leader is not None:
            self.slot_wanted = False
            leader.wake()

    def _deadline_of(self, call: CallCore) -> float:
        # The leader runs the core in its own task, not parked on its call.
        if call is self.leader:
            return self.backend.current_deadline()
        return self.backend.deadline_of(call)

    def release(self) -> None:
        """Drop the driver once its last caller has left: nothing of it stays behind."""
        if not self.callers and self.registry.get(self.key) is self:
            del self.registry[self.key]

    async def result(self, call: CallCore) -> Any:
        """Serve until the call is settled; its outcome."""
        await self.serve(call)
        return call.outcome()

    def _arrived(self) -> None:
        # The core's wake-up while the leader waits for its deadline: only a full batch
        # (the core calls it once batch_size items wait; under a length budget, on each
        # arrival, to check the budget) ends that wait early.
        core = self.core
        if core.full():
            if self.leader is not None:
                self.leader.wake()
        else:
            core.wakeup = self._arrived

    async def serve(self, me: CallCore) -> None:
        """Wait for ``me`` to be settled, leading the batching whenever it is our turn."""
        core = self.core
        parked = self.parked
        self.callers += 1
        try:
            while me.state != DONE:
                leader = self.leader
                if leader is None:
                    self.leader = leader = me
                if leader is me:
                    self._guarded(core.drain)
                    if not core.waiting:
                        # Our items are in a running batch: nothing to lead until more
                        # arrive, and a new caller takes the lead then.
                        self.leader = leader = None
                if leader is not me:
                    parked.add(me)
                    try:
                        await me.park()  # type: ignore[attr-defined]
                    finally:
                        parked.discard(me)
                    continue
                if self.busy >= self.max_workers:
                    self.slot_wanted = True
                    await me.park()  # type: ignore[attr-defined]  # a batch's end wakes it
                    continue
                deadline = self._guarded(core.due, self.backend.clock())
                if deadline is not None:
                    core.wakeup = self._arrived
                    core.wake_at = core.batch_size if not core.budget else 1
                    try:
                        await self.backend.wait_until(me, deadline)  # type: ignore[arg-type]
                    finally:
                        core.wakeup = None
                        core.wake_at = 1
                    continue
                await self._run_next(me)
                # The batch was shielded: a cancellation of this caller lands now.
                await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException as exc:
            # A cancellation may come after the outcome was set: the caller never sees
            # it, so it counts as cancelled. Only fn's BaseException (raised in the task
            # that ran the batch) leaves it DONE, failed like every other caller.
            if me.state != DONE or isinstance(exc, anyio.get_cancelled_exc_class()):
                core.abandon(me)
            raise
        finally:
            if self.leader is me:
                self.leader = None
            self._elect()
            self.callers -= 1
            if not self.callers:
                self.release()

    def _guarded(self, step: Callable[..., T], *args: Any) -> T:
        """A step of the core that runs a user's pool; a fault there ends the driver:
        every caller gets ``BatcherClosed`` chained to it, and the leader raises it."""
        try:
            return step(*args)
        except BaseException as exc:
            self.core.fail_all(exc)
            raise

    def _elect(self) -> None:
        """Wake a waiting caller to lead, if items wait and nobody leads."""
        if self.leader is not None or not self.core.queued:
            return
        parked = self.parked
        while parked:
            call = parked.pop()
            if call.state != DONE:
                self.leader = call
                call.wake()
                return
        # No follower: every waiting item belongs to a caller that is running a batch,
        # and it takes the lead when its batch ends.

    async def _run_next(self, me: CallCore) -> None:
        """Cut a batch and run it in this caller's task; another caller leads meanwhile."""
        batch = self._guarded(self.core.cut, self.backend.clock())
        self.busy += 1
        self.leader = None
        self._elect()
        try:
            # Shielded: this caller's cancellation must not cancel its batch-mates' batch.
            with anyio.CancelScope(shield=True):
                await self._run(batch)
        finally:
            if self.leader is None and me.state != DONE:
                self.leader = me

    async def _run(self, batch: Cut) -> None:
        core = self.core
        released = False

        def free() -> None:
            nonlocal released
            self._free_slot()
            released = True

        try:
            live = core.live(batch)
            if live:  # else every caller left before the batch started
                await self.executor.run(live, free, batch.reason, batch.waiting)
        except anyio.get_cancelled_exc_class():
            core.close_batch(batch)
            raise
        except BaseException as exc:
            # fn's BaseException: every waiting caller gets BatcherClosed, and it goes on
            # in the task of the caller that ran the batch.
            for fault in core.fail_all(exc):
                if not isinstance(fault, Exception):
                    raise fault from exc
            raise
        finally:
            core.done(batch)
            if not released:
                self._free_slot()

    def _free_slot(self) -> None:
        self.busy -= 1
        if self.slot_wanted:
            self.slot_wanted = False
            if self.leader is not None:
                self.leader.wake()
