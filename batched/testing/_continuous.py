"""``run_continuous``: play readers against a ``Continuous`` on virtual time, recording.

The kit's own step function drives every item by its :class:`ReaderPlan`: it emits the
values ``(reader, k)`` for ``k = 0, 1, ...``, ends the item with ``Last`` after
``values`` of them, or with ``Failure(PlannedError(step, position))`` at ``fail_at``. A
state is a :class:`StepState` whose ``len()`` is its planned length (``length`` plus
``growth`` per value emitted), so the default ``length_fn`` counts it.
"""

from __future__ import annotations

import gc
import itertools
import math
import types
import warnings
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._errors import Failure
from .._front.continuous import Continuous
from .._step import Last, Next
from ._continuous_records import (
    ContinuousResult,
    ContinuousSchedule,
    ReaderOutcome,
    ReaderPlan,
    StepRecord,
    StepState,
)
from ._recorder import running_tasks
from ._records import PlannedError
from ._virtual_time import BACKEND_NAMES, VirtualTimeLoop, drain_reports, fresh_backend_options

if TYPE_CHECKING:
    from collections.abc import Callable


__all__ = ["run_continuous"]

_HANG_GUARD_S = 3600.0
_SETTINGS = ("batch_size", "timeout_ms", "max_batch_length", "max_queue_size")


class _Player:
    def __init__(
        self, factory: Callable[..., Continuous[Any, Any]], schedule: ContinuousSchedule
    ) -> None:
        self.factory, self.schedule = factory, schedule
        self.seq = itertools.count()
        self.t0 = 0.0
        n = len(schedule.readers)
        self.readers = [
            types.SimpleNamespace(kind="missing", got=[], exception=None, sent_seq=-1, left_seq=-1)
            for _ in range(n)
        ]
        self.emitted: list[list[Any]] = [[] for _ in range(n)]
        self.steps: list[types.SimpleNamespace] = []
        self.left = n
        self.all_done: anyio.Event | None = None
        self.c: Continuous[Any, Any] | None = None
        self.hung = False
        self.escaped: BaseException | None = None
        self.close_seq = self.block_ended_seq = -1
        self.abnormal = False
        self.tasks_left = 0

    def now(self) -> float:
        return (anyio.current_time() - self.t0) * 1000

    async def step(self, states: list[StepState]) -> list[Any]:
        k = len(self.steps)
        rec = types.SimpleNamespace(
            index=k,
            readers=tuple(s.reader for s in states),
            lengths=tuple(s.length for s in states),
            start_ms=self.now(),
            end_ms=-1.0,
            ends=(),
            raised=False,
            cancelled=False,
            start_seq=next(self.seq),
            end_seq=-1,
        )
        self.steps.append(rec)
        plan = self.schedule
        try:
            await anyio.sleep((plan.step_ms[k] if k < len(plan.step_ms) else 1.0) / 1000)
        except anyio.get_cancelled_exc_class():
            rec.cancelled = True
            raise
        finally:
            rec.end_ms, rec.end_seq = self.now(), next(self.seq)
        if k in plan.step_raises:
            rec.raised = True
            raise PlannedError(k)
        out: list[Any] = []
        for position, state in enumerate(states):
            reader = plan.readers[state.reader]
            value = (state.reader, state.k)
            if reader.fail_at is not None and state.k >= reader.fail_at:
                out.append(Failure(PlannedError(k, position)))
                continue
            self.emitted[state.reader].append(value)
            if state.k + 1 >= reader.values:
                out.append(Last(value))
            else:
                k1 = state.k + 1
                out.append(Next(value, StepState(state.reader, k1, state.length + reader.growth)))
        rec.ends = tuple(
            "failure" if type(o) is Failure else "last" if type(o) is Last else "next" for o in out
        )
        return out

    async def reader(self, c: Continuous[Any, Any], index: int) -> None:
        plan, rec = self.schedule.readers[index], self.readers[index]
        await anyio.sleep_until(self.t0 + plan.at_ms / 1000)
        cancel = plan.cancel_after_ms
        scope = anyio.CancelScope() if cancel is None else anyio.move_on_after(cancel / 1000)
        item = StepState(index, 0, plan.length)
        with scope:
            rec.sent_seq = next(self.seq)
            try:
                if plan.call:
                    rec.got = list(await c(item, priority=plan.priority, wait=plan.wait))
                    rec.kind = "end"
                else:
                    await self._read(c, item, plan, rec)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                rec.kind, rec.exception = "error", exc
        if scope.cancelled_caught:
            rec.kind = "cancelled"
            if rec.left_seq < 0:
                rec.left_seq = next(self.seq)
        self.left -= 1
        if self.left == 0 and self.all_done is not None:
            self.all_done.set()

    async def _read(
        self, c: Continuous[Any, Any], item: StepState, plan: ReaderPlan, rec: types.SimpleNamespace
    ) -> None:
        stream: Any = c.stream(item, priority=plan.priority, wait=plan.wait)
        try:
            if plan.leave_after == 0:
                rec.kind = "left"
                return
            async for value in stream:
                rec.got.append(value)
                if plan.leave_after is not None and len(rec.got) >= plan.leave_after:
                    rec.kind = "left"
                    return
            rec.kind = "end"
        finally:
            if rec.kind == "left" and plan.leave_by == "break":
                rec.left_seq = next(self.seq)
                del stream  # dropped, never closed: the reader is gone all the same
            else:
                if rec.kind in ("left", "missing"):  # missing: cancelled while reading
                    rec.left_seq = next(self.seq)
                await _close(stream)

    async def main(self) -> None:
        self.t0 = anyio.current_time()
        before = running_tasks()
        with anyio.move_on_after(_HANG_GUARD_S) as guard:
            await self.body()
        self.hung = guard.cancelled_caught
        await anyio.lowlevel.checkpoint()
        self.tasks_left = running_tasks() - before
        self.all_done = None

    async def body(self) -> None:
        made: object = self.factory(self.step)
        if not isinstance(made, Continuous):
            msg = f"the factory must return a batched.Continuous, not {type(made).__qualname__}"
            raise TypeError(msg)
        c = self.c = made
        self.all_done = anyio.Event()
        if not self.readers:
            self.all_done.set()
        plan = self.schedule
        at = math.inf if plan.close_at_ms is None else self.t0 + plan.close_at_ms / 1000
        cancel_at, close_at = (at, math.inf) if plan.close_by == "cancel" else (math.inf, at)
        started = False
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope(deadline=cancel_at):
                try:
                    async with c:
                        for index in range(len(self.readers)):
                            tg.start_soon(self.reader, c, index)
                        started = True
                        with anyio.CancelScope(deadline=close_at):
                            await self.all_done.wait()
                        self.close_seq = next(self.seq)
                        if not self.all_done.is_set() and plan.close_by == "raise":
                            self.abnormal = True
                            raise PlannedError(None)
                except anyio.get_cancelled_exc_class():
                    self.abnormal = True
                    if self.close_seq < 0:
                        self.close_seq = next(self.seq)
                    raise
                except BaseException as exc:
                    self.escaped = exc
                finally:
                    self.block_ended_seq = next(self.seq)
            if not started:  # cancelled while entering: the readers find it closed
                for index in range(len(self.readers)):
                    tg.start_soon(self.reader, c, index)

    def play(self, backend: str) -> ContinuousResult:
        options = fresh_backend_options(backend)
        loops: list[VirtualTimeLoop] = []
        if backend == "asyncio":

            def loop_factory() -> VirtualTimeLoop:
                loops.append(VirtualTimeLoop())
                return loops[-1]

            options = {"loop_factory": loop_factory}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            anyio.run(self.main, backend=backend, backend_options=options)
            errors = drain_reports(loops)
            loops.clear()
            gc.collect()
        reports = [str(context.get("message")) for context in errors]
        for w in caught:
            if issubclass(w.category, ResourceWarning):
                reports.append(f"ResourceWarning: {w.message}")
            else:  # not ours to swallow
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        assert self.c is not None
        s = self.c._settings
        return ContinuousResult(
            schedule=self.schedule,
            backend=backend,
            settings=types.MappingProxyType({name: getattr(s, name) for name in _SETTINGS}),
            readers=tuple(
                ReaderOutcome(
                    index=i,
                    plan=self.schedule.readers[i],
                    kind=r.kind,
                    got=tuple(r.got),
                    exception=r.exception,
                    sent_seq=r.sent_seq,
                    left_seq=r.left_seq,
                )
                for i, r in enumerate(self.readers)
            ),
            steps=tuple(StepRecord(**vars(rec)) for rec in self.steps),
            emitted=tuple(tuple(values) for values in self.emitted),
            stats=self.c.stats,
            hung=self.hung,
            escaped=self.escaped,
            tasks_left=self.tasks_left,
            loop_errors=tuple(reports),
            close_seq=self.close_seq,
            block_ended_seq=self.block_ended_seq,
            closed_abnormally=self.abnormal,
        )


async def _close(stream: Any) -> None:
    with anyio.CancelScope(shield=True):
        await stream.aclose()


def run_continuous(
    factory: Callable[..., Continuous[Any, Any]],
    schedule: ContinuousSchedule,
    *,
    backend: str = "asyncio",
) -> ContinuousResult:
    """Play ``schedule`` against a ``Continuous`` on virtual time; return what happened.

    ``factory(step)`` builds the ``Continuous`` around ``step``, the kit's recording step
    function (pass it on unchanged), used inside ``async with``. Each call runs in a
    fresh ``anyio.run`` on ``backend`` ("asyncio" or "trio"): call it from a synchronous
    test. Example::

        result = run_continuous(lambda step: Continuous(step, batch_size=4), schedule)
        check_continuous(result)
    """
    if backend not in BACKEND_NAMES:
        msg = f"'backend' must be one of {BACKEND_NAMES}: {backend!r}"
        raise ValueError(msg)
    return _Player(factory, schedule).play(backend)
