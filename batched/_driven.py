"""The caller-driven engine: batching with no task of its own.

Outside ``async with``, a decorated function still batches, but nothing may outlive its
calls. So the waiting callers take turns as the collector: one of them, the leader,
waits for the batch to fill or for the oldest item's deadline, cuts the batch, hands
the leadership to another waiting caller, and runs the batch in its own task, shielded
so that its batch-mates are not hurt if it is cancelled meanwhile. A leader that leaves
(its call is done, or it is cancelled) passes the leadership on; the last caller out
leaves nothing behind.

The intake, pools, cut and hand-back are the engine's own (see ``_engine``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, final

import anyio
import anyio.lowlevel

from ._call import DONE, Call
from ._dispatch import Batch
from ._engine import Engine

if TYPE_CHECKING:
    from ._dispatch import Worker
    from ._settings import Settings
    from ._stats import _Recorder

__all__ = ["DrivenEngine"]


@final
class DrivenEngine(Engine):
    """Intake and pools of one event loop's callers, driven by the callers themselves."""

    __slots__ = (
        "busy",
        "key",
        "leader",
        "leader_waits",
        "parked",
        "registry",
        "slot_wanted",
    )

    def __init__(
        self,
        settings: Settings,
        stats: _Recorder,
        key: object,
        registry: dict[object, DrivenEngine],
    ) -> None:
        super().__init__(settings, stats)
        self.key = key  # the event loop this engine serves
        self.registry = registry  # where its batched function finds it, by key
        self.busy = 0  # batches running, each in the task of the caller that cut it
        self.leader: Call | None = None  # the caller acting as the collector
        self.leader_waits = False  # the leader waits for more items or its deadline
        self.slot_wanted = False  # the leader waits for a running batch to end
        self.parked: set[Call] = set()  # followers: callers waiting for their outcome

    # -- the caller's side -------------------------------------------------------------

    def _accept(self, call: Call, now: float) -> None:
        Engine._accept(self, call, now)
        # Only a full batch (or a length budget) can end the leader's wait early.
        if self.leader_waits and (self.queued >= self.batch_size or self.max_len != math.inf):
            self.leader_waits = False
            assert self.leader is not None
            self.leader.wake()

    def release(self) -> None:
        """Drop the engine once its last caller has left: nothing of it stays behind."""
        if not self.callers and self.registry.get(self.key) is self:
            del self.registry[self.key]

    async def serve(self, me: Call) -> None:
        """Wait for ``me`` to be settled, leading the batching whenever it is our turn."""
        self.callers += 1
        parked = self.parked
        try:
            while me.state != DONE:
                leader = self.leader
                if leader is None:
                    self.leader = leader = me
                if leader is me:
                    self._drain()
                    if not self.waiting:
                        # Our items are in a running batch: nothing to lead until more
                        # arrive, and a new caller takes the lead then.
                        self.leader = leader = None
                if leader is not me:
                    parked.add(me)
                    try:
                        await me.wait()
                    finally:
                        parked.discard(me)
                    continue
                if self.busy >= self.max_workers:
                    self.slot_wanted = True
                    await me.wait()  # a batch's end wakes the leader
                    continue
                deadline = self._due()
                if deadline is not None:
                    self.leader_waits = True
                    try:
                        await self._wait_until(me, deadline)
                    finally:
                        self.leader_waits = False
                    continue
                await self._run_next(me)
                # The batch was shielded: a cancellation of this caller lands now.
                await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException as exc:
            # A cancellation may come after the outcome was set: the caller never sees
            # it, so it counts as cancelled. Only fn's BaseException leaves it DONE.
            if me.state != DONE or isinstance(exc, anyio.get_cancelled_exc_class()):
                self.abandon(me)
            else:
                self.stats.failed += me.n  # fn's BaseException, raised in this task
            raise
        finally:
            if self.leader is me:
                self.leader = None
            self._elect()
            self.callers -= 1
            if not self.callers:
                self.release()

    def _elect(self) -> None:
        """Wake a waiting caller to lead, if items wait and nobody leads."""
        if self.leader is not None or not self.queued:
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

    async def _run_next(self, me: Call) -> None:
        """Cut a batch and run it in this caller's task; another caller leads meanwhile."""
        batch = Batch(self._cut(self.clock()), self.abandons)
        self.running.add(batch)
        if self.room:
            self._grant_room()
        self.busy += 1
        self.leader = None
        self._elect()
        try:
            # Shielded: this caller's cancellation must not cancel its batch-mates' batch.
            with anyio.CancelScope(shield=True):
                await self._run(batch, None)
        finally:
            if self.leader is None and me.state != DONE:
                self.leader = me

    # -- the dispatcher's hooks --------------------------------------------------------

    def _free_slot(self, worker: Worker | None) -> None:
        self.busy -= 1
        if self.slot_wanted:
            self.slot_wanted = False
            if self.leader is not None:
                self.leader.wake()

    def crash(self, exc: BaseException) -> None:
        # A BaseException from fn: every waiting caller gets BatcherClosed, and the
        # exception goes on in the task of the caller that ran the batch.
        self.fail_all(exc)
        raise exc
