"""``run_schedule``: play a schedule of callers against a batcher on virtual time."""

from __future__ import annotations

import gc
import itertools
import math
import types
import warnings
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from .._core.items import length_of
from .._errors import Failure
from .._front.batcher import Batcher
from .._front.decorator import BatchedFunction
from ._recorder import BatchNotes, CallerNotes, current_run, freeze_batches, running_tasks
from ._records import (
    BatchOutcome,
    PlannedError,
    PlannedInterrupt,
    Schedule,
    ScheduleResult,
    item_key,
)
from ._virtual_time import BACKEND_NAMES, VirtualTimeLoop, drain_reports, fresh_backend_options

__all__ = ["HANG_GUARD_S", "run_schedule"]

HANG_GUARD_S = 3600.0  # virtual seconds: a run still going after this counts as a hang
_BatchFn = Callable[[list[Any]], Awaitable[Any]]
_Front = Batcher[Any, Any] | BatchedFunction[Any, Any]
_SETTINGS = (
    "batch_size",
    "timeout_ms",
    "max_batch_length",
    "length_fn",
    "strategy",
    "small_batch_threshold",
    "max_wait_ms",
    "max_queue_size",
    "max_concurrent_batches",
    "isolate_errors",
    "cache",
    "cache_key",
    "dedupe",
)


class _Player:
    """Runs one schedule, recording as it goes (times in µs); ``result()`` freezes it."""

    def __init__(
        self,
        factory: Callable[[_BatchFn], _Front],
        schedule: Schedule,
        outcomes: Sequence[BatchOutcome],
        item_fn: Callable[[Any], Any],
        repeats: bool,
    ) -> None:
        self.factory, self.schedule, self.repeats = factory, schedule, repeats
        self.shared = False
        self.outcomes, self.item_fn = outcomes, item_fn
        self.callers = [CallerNotes(i, a) for i, a in enumerate(schedule.arrivals)]
        self.batches: list[BatchNotes] = []
        self.front: _Front | None = None
        self.settings: dict[str, Any] = {}
        self.seq = itertools.count()
        self.t0 = 0.0
        self.left = len(self.callers)
        self.all_done: anyio.Event | None = None
        self.hung = self.owner_cancelled = False
        self.escaped: BaseException | None = None
        self.tasks_left = 0
        self.closed: int | None = None  # µs: the block's body ended normally
        self.block_ended: int | None = None
        self.close_seq = -1
        self.run_ref: weakref.ref[Any] | None = None

    def now(self) -> int:
        return round((anyio.current_time() - self.t0) * 1e6)

    def queue_size(self) -> int:
        assert self.front is not None
        return self.front.stats.queue_size

    # -- the batch function and the callers ---------------------------------------------

    async def fn(self, items: list[Any]) -> Any:
        k = len(self.batches)
        plan = self.outcomes[k] if k < len(self.outcomes) else BatchOutcome()
        rec = BatchNotes(k, tuple(items), plan, self.now(), next(self.seq))
        rec.task = anyio.get_current_task().id
        rec.q_start = self.queue_size()
        self.batches.append(rec)
        try:
            await anyio.sleep(plan.duration_ms / 1000)
            rec.q_end = self.queue_size()
            out = self._output(rec)
        except anyio.get_cancelled_exc_class():
            rec.cancelled = True
            raise
        except BaseException as exc:
            rec.error = exc
            raise
        finally:
            rec.end, rec.end_seq = self.now(), next(self.seq)
        return out

    def _output(self, rec: BatchNotes) -> Any:
        kind, k = rec.outcome.kind, rec.index
        if kind == "raise":
            raise PlannedError(k)
        if kind == "base_exception":
            raise PlannedInterrupt(k)
        results = [self.item_fn(item) for item in rec.items]
        if kind == "item_failure":
            for pos in range(0, len(results), 2):
                results[pos] = Failure(PlannedError(k, pos))
        if self.shared:  # name the computation, so a shared or cached result shows it
            results = [(result, k, pos) for pos, result in enumerate(results)]
        if kind in ("ok", "item_failure"):
            rec.results = tuple(results)
            return results
        if kind == "short":
            return results[:-1]
        if kind == "long":
            return [*results, None]
        # wrong_type: of the right length where it has one; only the type is wrong
        wrong: list[Any] = [dict(enumerate(results)), set(range(len(results))), iter(results)]
        return [*wrong, None][k % 4]

    async def caller(self, f: _Front, rec: CallerNotes) -> None:
        arrival = rec.arrival
        rec.task = anyio.get_current_task().id
        await anyio.sleep_until(self.t0 + arrival.at_ms / 1000)
        rec.submitted = self.now()
        cancel = arrival.cancel_after_ms
        scope = anyio.CancelScope() if cancel is None else anyio.move_on_after(cancel / 1000)
        with scope:
            # No await between these reads and the call.
            rec.q_before, rec.sent_seq = self.queue_size(), next(self.seq)
            try:
                if arrival.many:
                    value: Any = await f.many(
                        arrival.items, priority=arrival.priority, wait=arrival.wait
                    )
                else:
                    value = await f(arrival.items[0], priority=arrival.priority, wait=arrival.wait)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # an outcome for the checks to judge
                rec.kind, rec.exception = "error", exc
            else:
                rec.kind, rec.result = "result", value
            rec.done, rec.done_seq = self.now(), next(self.seq)
        if scope.cancelled_caught:
            rec.kind, rec.done, rec.done_seq = "cancelled", self.now(), next(self.seq)
        rec.q_after = self.queue_size()
        self.left -= 1
        if self.left == 0 and self.all_done is not None:
            self.all_done.set()

    # -- the run ------------------------------------------------------------------------

    async def main(self) -> None:
        self.t0 = anyio.current_time()
        before = running_tasks()
        with anyio.move_on_after(HANG_GUARD_S) as guard:
            await self.body()
        self.hung = guard.cancelled_caught
        await anyio.lowlevel.checkpoint()  # let finished tasks be reaped
        self.tasks_left = running_tasks() - before
        self.all_done = None  # an event may hold on to the loop
        self.run_ref = weakref.ref(current_run())

    async def body(self) -> None:
        f = self.front = self._front()
        for rec in self.callers:
            rec.lengths = tuple(self._length(f, item) for item in rec.arrival.items)
        self.all_done = anyio.Event()
        if not self.callers:
            self.all_done.set()
        # The callers live outside the batcher's block, so they may outlive it (and call
        # it once it closed); the owner's cancellation does not reach them.
        async with anyio.create_task_group() as tg:
            if isinstance(f, BatchedFunction):  # caller-driven: no block at all
                for rec in self.callers:
                    tg.start_soon(self.caller, f, rec)
                return
            started = False
            plan = self.schedule
            at = math.inf if plan.close_at_ms is None else self.t0 + plan.close_at_ms / 1000
            cancel_at, close_at = (at, math.inf) if plan.close_by == "cancel" else (math.inf, at)
            with anyio.CancelScope(deadline=cancel_at) as owner:
                try:
                    async with f:
                        for rec in self.callers:
                            tg.start_soon(self.caller, f, rec)
                        started = True
                        with anyio.CancelScope(deadline=close_at):
                            await self.all_done.wait()
                        if self.all_done.is_set() or plan.close_by == "exit":
                            self.closed, self.close_seq = self.now(), next(self.seq)
                        else:
                            self.close_seq = next(self.seq)
                            raise PlannedError(None)
                except anyio.get_cancelled_exc_class():
                    if self.close_seq < 0:
                        self.close_seq = next(self.seq)
                    raise
                except BaseException as exc:
                    self.escaped = exc
                finally:
                    self.block_ended = self.now()
            self.owner_cancelled = owner.cancelled_caught
            if not started:  # cancelled while entering: the callers find it closed
                for rec in self.callers:
                    tg.start_soon(self.caller, f, rec)

    def _front(self) -> _Front:
        f: object = self.factory(self.fn)
        if not isinstance(f, Batcher | BatchedFunction):
            msg = (
                "batcher_factory must return a batched.Batcher or a function made by "
                f"batched.dynamically, not {type(f).__qualname__}"
            )
            raise TypeError(msg)
        s = f._settings
        self.shared = s.cache is not None or s.dedupe
        if self.shared:
            if any(o.kind != "ok" for o in self.outcomes) or self.schedule.close_at_ms is not None:
                msg = "with a cache or dedupe, run_schedule plays only ok outcomes and no close"
                raise ValueError(msg)
        elif self.repeats:
            msg = "items must be distinct across a schedule, unless a cache or dedupe shares them"
            raise ValueError(msg)
        if isinstance(f, BatchedFunction):
            if self.schedule.close_at_ms is not None:
                msg = "a caller-driven function has no block to close: close_at_ms must be None"
                raise ValueError(msg)
            if any(o.kind == "base_exception" for o in self.outcomes):
                msg = "base_exception outcomes need a Batcher (a block for it to leave)"
                raise ValueError(msg)
        self.settings = {name: getattr(s, name) for name in _SETTINGS}
        return f

    @staticmethod
    def _length(f: _Front, item: Any) -> int | None:
        length_fn = f._settings.length_fn
        if length_fn is None:
            return 1
        try:
            return length_of(length_fn, item)
        except Exception:
            return None

    def play(self, backend: str) -> ScheduleResult:
        options = fresh_backend_options(backend)
        loops: list[VirtualTimeLoop] = []
        if backend == "asyncio":

            def loop_factory() -> VirtualTimeLoop:
                loops.append(VirtualTimeLoop())
                return loops[-1]

            options = {"loop_factory": loop_factory}
        # Older objects are frozen, so the collection that makes abandoned tasks and
        # unclosed streams report only walks what this run made.
        gc.freeze()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ResourceWarning)
                anyio.run(self.main, backend=backend, backend_options=options)
                errors = drain_reports(loops)
                loops.clear()  # only the weak reference is left
                gc.collect()
        finally:
            gc.unfreeze()
        reports = [str(context.get("message")) for context in errors]
        for w in caught:
            if issubclass(w.category, ResourceWarning):
                reports.append(f"ResourceWarning: {w.message}")
            else:  # not ours to swallow
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return self.result(backend, tuple(reports))

    def result(self, backend: str, reports: tuple[str, ...]) -> ScheduleResult:
        assert self.front is not None
        return ScheduleResult(
            schedule=self.schedule,
            backend=backend,
            settings=types.MappingProxyType(self.settings),
            callers=tuple(rec.freeze() for rec in self.callers),
            batches=freeze_batches(self.batches, bool(self.settings.get("isolate_errors"))),
            stats=self.front.stats,
            hung=self.hung,
            escaped=self.escaped,
            tasks_left=self.tasks_left,
            loop_errors=reports,
            driven=isinstance(self.front, BatchedFunction),
            closed_ms=None if self.closed is None else self.closed / 1000,
            block_ended_ms=None if self.block_ended is None else self.block_ended / 1000,
            close_seq=self.close_seq,
            owner_cancelled=self.owner_cancelled,
            loop_released=self._loop_released(),
        )

    def _loop_released(self) -> bool | None:
        errors = [self.escaped, *(c.exception for c in self.callers)]
        errors += [b.error for b in self.batches]
        if self.run_ref is None or any(error is not None for error in errors):
            return None  # a recorded traceback keeps the run's frames, and its loop
        return self.run_ref() is None


def _identity(item: Any) -> Any:
    return item


def run_schedule(
    batcher_factory: Callable[[_BatchFn], _Front],
    schedule: Schedule,
    *,
    backend: str = "asyncio",
    outcomes: Sequence[BatchOutcome] | None = None,
    item_fn: Callable[[Any], Any] | None = None,
) -> ScheduleResult:
    """Play ``schedule`` against a batcher on virtual time; return what happened.

    ``batcher_factory(fn)`` builds the batcher around ``fn``, a recording async batch
    function: pass it on unchanged (a ``functools.partial`` is fine) so it sees the
    items as sent. It may return a ``batched.Batcher``, used inside ``async with``, or a
    function made by ``batched.dynamically``, which the callers then drive themselves
    (no ``async with``: its caller-driven mode). Its k-th call plays ``outcomes[k]``
    (default: results after 1 ms); a result is ``item_fn(item)`` (default: the item
    itself; keep it injective, so a result handed to the wrong caller shows). Each call
    runs in a fresh ``anyio.run`` on ``backend`` ("asyncio" or "trio"): call it from a
    synchronous test. Example::

        result = run_schedule(lambda fn: Batcher(fn, batch_size=4), schedule)
        check_invariants(result)

    With a cache or dedupe, equal items (by ``cache_key``) may be sent by many callers
    and share one computation: a result is then ``(item_fn(item), call, position)``,
    naming the call of ``fn`` that computed it, and only ``ok`` outcomes and no early
    close may be played.

    :raises ValueError: for items sent twice in the schedule (without a cache or
        dedupe), a keyed batcher with outcomes other than ``ok`` or a close, or a
        caller-driven function with a schedule that closes a block or outcomes with
        ``base_exception``
    """
    if backend not in BACKEND_NAMES:
        msg = f"'backend' must be one of {BACKEND_NAMES}: {backend!r}"
        raise ValueError(msg)
    sent = [item_key(item) for arrival in schedule.arrivals for item in arrival.items]
    repeats = len(set(sent)) != len(sent)
    player = _Player(batcher_factory, schedule, outcomes or (), item_fn or _identity, repeats)
    return player.play(backend)
