"""The step loop of an open ``Continuous``: iteration-level batching over the core.

One task runs ``step`` over the active set again and again. Before every step the items
that left are dropped and waiting items join, cut by the core's rules (rule order,
``batch_size`` items in all, the summed lengths of the members' current states within
``max_batch_length``); with nothing active it waits like a batcher's collector
(``timeout_ms``, a full batch, or the intake closing). After the step each member's value
goes to its stream, and members that returned ``Last`` or a ``Failure`` leave.

Backpressure: none. Each stream's buffer is unbounded, so the loop never waits for a
reader: one slow reader must not hold up every other item's next step. A buffer holds
at most one item's output, which ``await c(item)`` keeps anyway, and is freed when its
reader leaves.
"""

from __future__ import annotations

import inspect
from array import array
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._backends import current
from .._core.calls import QUEUED
from .._core.items import length_of
from .._core.queue import Core
from .._core.results import check_results
from .._errors import Failure
from .._observe import report_step
from .._step import Last, Next
from .execute import _boxed, _not_ours
from .group import close_group, open_group
from .members import Member, Values

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anyio.abc import TaskGroup, TaskStatus

    from .._core.counts import Counts
    from .._settings import Settings

__all__ = ["Stepper"]

_OUTCOMES = (Next, Last, Failure)


def _bad_outcome(out: object, index: int) -> TypeError:
    msg = (
        f"the step function must return batched.Next, batched.Last or batched.Failure "
        f"for each state, not {type(out).__qualname__} (at index {index})"
    )
    return TypeError(msg)


@final
class Stepper:
    """The task group and step loop of one open ``Continuous``."""

    __slots__ = (
        "active",
        "backend",
        "batch_size",
        "core",
        "fatal",
        "is_async",
        "length_fn",
        "max_len",
        "on_batch",
        "step",
        "tg",
    )

    def __init__(self, settings: Settings, counts: Counts) -> None:
        self.backend = current()
        self.core = core = Core(settings, counts, self.backend.clock)
        core.on_fault = self.crash
        step = settings.fn
        if step is None:  # Continuous checks its step: unreachable, but typed
            msg = "a Continuous needs a step function"
            raise TypeError(msg)
        self.step: Callable[[list[Any]], Any] = step
        self.is_async = settings.is_async
        self.batch_size = settings.batch_size
        self.max_len = core.max_len
        # Lengths of states are read only under a budget (the core's rule for items).
        self.length_fn = settings.length_fn if core.budget else None
        self.on_batch = settings.on_batch
        self.active: list[Member] = []  # in join order
        self.fatal: BaseException | None = None
        self.tg: TaskGroup | None = None

    # -- calls -----------------------------------------------------------------------------

    def stream(self, item: Any, priority: float, wait: bool) -> Values[Any]:
        """Queue an item; its stream of values."""
        member: Member = self.core.call_one(lambda: Member(item), item, priority, wait)  # type: ignore[assignment]
        return Values(member)

    def configure(self, settings: Settings) -> None:
        """New tunable settings (checked by the front), in force from the next join:
        active items are never evicted, so a smaller ``batch_size`` or budget lets
        nobody join until enough have left."""
        core = self.core
        core.check(settings)
        core.apply(settings)  # wakes the loop: a shorter timeout may start a step now
        self.batch_size = settings.batch_size
        self.max_len = core.max_len

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self.tg = await open_group(self._loop)

    async def close(self, exc: BaseException | None) -> bool | None:
        """Run what was accepted to its end (``exc`` is None), or end every stream with
        ``BatcherClosed`` now; then end the task group. What ``__aexit__`` returns."""
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
                self.fatal = fault
        for member in self.active:
            if member.state == QUEUED:
                member.fail_closed()
        self.active.clear()

    def crash(self, exc: BaseException) -> None:
        """A BaseException from ``step`` (or a fault in a pool) ends the ``Continuous``:
        every stream ends with ``BatcherClosed`` chained to it, and ``close`` raises it."""
        if self.fatal is None:
            self.fatal = exc
        self._fail_all(exc)
        assert self.tg is not None
        self.tg.cancel_scope.cancel()

    # -- the loop --------------------------------------------------------------------------

    async def _loop(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        try:
            await self._serve()
        except anyio.get_cancelled_exc_class():
            self._fail_all(None)
            raise
        except BaseException as exc:
            self.crash(exc)

    async def _wait(self, deadline: float | None) -> None:
        """Sleep until an item is accepted (or the intake closes), or until ``deadline``."""
        core = self.core
        signal = self.backend.signal()
        core.wakeup = signal.set
        try:
            if deadline is None:
                await signal.wait()
            else:
                await self.backend.wait_until(signal, deadline)
        finally:
            core.wakeup = None

    async def _serve(self) -> None:
        core, clock, active = self.core, self.backend.clock, self.active
        while True:
            # Readers that left since the last step are dropped here, before the next.
            active[:] = [member for member in active if member.state == QUEUED]
            core.drain()
            if not active:
                if not core.waiting:
                    if core.draining:
                        return
                    await self._wait(None)
                    continue
                deadline = core.due(clock())
                if deadline is not None:
                    await self._wait(deadline)
                    continue
            joined: list[Member] = []
            if core.waiting and len(active) < self.batch_size:
                joined = self._join(active)
                if not active:  # a user's pool that cut nothing: let others run
                    await anyio.lowlevel.checkpoint()
                    continue
            await self._step_once(active, joined)
            # Readers run (and may leave) before the next step; a step that never
            # awaits must not hold the event loop either.
            await anyio.lowlevel.checkpoint()

    def _join(self, active: list[Member]) -> list[Member]:
        used = sum(member.length for member in active) if self.length_fn is not None else 0
        now = self.backend.clock()
        joined: list[Member] = self.core.join(
            now, self.batch_size - len(active), self.max_len - used, not active
        )
        for member in joined:
            member.joined = now
        active += joined
        return joined

    def _reason(self, stepped: int) -> str:
        """Why a step holds the items it holds (``BatchInfo.reason``), read after the
        join: the questions a batch's cut answers, asked of the active set."""
        core = self.core
        if stepped >= self.batch_size:
            return "full"
        if core.waiting:  # room was left, and the length budget kept them waiting
            return "budget"
        if core.draining:
            return "closing"
        return "timeout"

    async def _step_once(self, active: list[Member], joined: list[Member]) -> None:
        members = list(active)  # closing may clear ``active`` while the step runs
        states = [member.current for member in members]
        on_batch = self.on_batch
        if on_batch is not None:
            reason, waiting = self._reason(len(members)), self.core.queued
        clock = self.backend.clock
        start = clock()
        outcomes, error = await self._step(states)
        end = clock()
        # As a batch of fn: what timeout_ms="auto" reads (the cost of a step) is fed too.
        self.core.counts.ran(len(states), end - start)
        if outcomes is None:
            assert error is not None
            tb = error.__traceback__
            for member in members:
                if member.state == QUEUED:
                    member.put_error(0, error, tb)
                    self._sample(member, end)
            active.clear()
        else:
            active[:] = self._hand_out(members, outcomes, end)
        if on_batch is not None:
            report_step(on_batch, members, joined, reason, start, end, waiting)

    async def _step(self, states: list[Any]) -> tuple[Sequence[Any] | None, Exception | None]:
        """Run ``step`` once: its outcomes, checked, or the error for every member."""
        try:
            if self.is_async:
                out = await self.step(states)
            else:
                (out,) = await anyio.to_thread.run_sync(_boxed, self.step, states)
                if inspect.isawaitable(out):  # a plain function that hands back a coroutine
                    out = await out
        except Exception as exc:
            return None, exc
        except anyio.get_cancelled_exc_class() as exc:
            if self.backend.cancelling():
                raise  # closing: the loop's own cancellation
            return None, _not_ours(exc)
        try:
            outcomes = check_results(out, len(states))
        except Exception as exc:
            exc.add_note(f"returned by the step function {self.step!r}: one outcome per state")
            return None, exc
        for index, outcome in enumerate(outcomes):
            if type(outcome) not in _OUTCOMES:
                return None, _bad_outcome(outcome, index)
        return outcomes, None

    def _hand_out(self, members: list[Member], outcomes: Sequence[Any], now: float) -> list[Member]:
        """Each member's value to its stream; the members that go on."""
        length_fn = self.length_fn
        going_on: list[Member] = []
        for member, outcome in zip(members, outcomes, strict=True):
            if member.state != QUEUED:
                continue  # its reader left while the step ran
            kind = type(outcome)
            if kind is Failure:
                exc = outcome.exception
                member.put_error(0, exc, exc.__traceback__)
                self._sample(member, now)
                continue
            member.emit(outcome.value)
            if kind is Last:
                member.finish()
                self._sample(member, now)
                continue
            member.current = outcome.state
            if length_fn is not None:
                try:
                    member.length = length_of(length_fn, member.current)
                except Exception as exc:
                    member.put_error(0, exc, exc.__traceback__)
                    self._sample(member, now)
                    continue
            going_on.append(member)
        return going_on

    def _sample(self, member: Member, now: float) -> None:
        # Wait: arrival to its first step; latency: the call to its stream's end.
        arrival = member.arrival
        self.core.counts.samples.add(
            member.joined, now, array("d", (arrival,)), array("d", (arrival - member.room_wait,))
        )
