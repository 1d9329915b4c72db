"""``run_schedule``: play a schedule of callers against a batcher on virtual time."""

from __future__ import annotations

import asyncio
import gc
import types
import warnings
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from .._core.items import length_of
from .._errors import Failure
from .._front.batcher import Batcher
from ._records import (
    Arrival,
    BatchOutcome,
    BatchRecord,
    CallerOutcome,
    PlannedError,
    Schedule,
    ScheduleResult,
    item_key,
)
from ._virtual_time import BACKEND_NAMES, VirtualTimeLoop, drain_reports, fresh_backend_options

__all__ = ["HANG_GUARD_S", "run_schedule"]

HANG_GUARD_S = 3600.0  # virtual seconds: a run still going after this counts as a hang
_BatchFn = Callable[[list[Any]], Awaitable[Any]]


class _Caller:
    def __init__(self, index: int, arrival: Arrival) -> None:
        self.index = index
        self.arrival = arrival
        self.kind = "missing"
        self.result: Any = None
        self.exception: BaseException | None = None
        self.submitted = -1  # µs
        self.done: int | None = None
        self.q_before = -1
        self.lengths: tuple[int | None, ...] = ()


class _Batch:
    def __init__(self, index: int, items: tuple[Any, ...], outcome: BatchOutcome, start: int):
        self.index = index
        self.items = items
        self.outcome = outcome
        self.start = start  # µs
        self.end = start
        self.results: tuple[Any, ...] | None = None
        self.error: BaseException | None = None
        self.cancelled = False


def _count_tasks() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # not asyncio
        import trio.lowlevel

        return trio.lowlevel.current_statistics().tasks_living


class _Player:
    """Runs one schedule; ``result()`` freezes what it saw."""

    def __init__(
        self,
        factory: Callable[[_BatchFn], Batcher[Any, Any]],
        schedule: Schedule,
        outcomes: Sequence[BatchOutcome],
        item_fn: Callable[[Any], Any],
    ) -> None:
        self.factory = factory
        self.schedule = schedule
        self.outcomes = outcomes
        self.item_fn = item_fn
        self.callers = [_Caller(i, a) for i, a in enumerate(schedule.arrivals)]
        self.batches: list[_Batch] = []
        self.batcher: Batcher[Any, Any] | None = None
        self.settings: dict[str, Any] = {}
        self.t0 = 0.0
        self.left = len(self.callers)
        self.all_done: anyio.Event | None = None
        self.hung = False
        self.escaped: BaseException | None = None
        self.tasks_left = 0

    def now(self) -> int:
        return round((anyio.current_time() - self.t0) * 1e6)

    async def fn(self, items: list[Any]) -> Any:
        k = len(self.batches)
        plan = self.outcomes[k] if k < len(self.outcomes) else BatchOutcome()
        rec = _Batch(k, tuple(items), plan, self.now())
        self.batches.append(rec)
        try:
            await anyio.sleep(plan.duration_ms / 1000)
            out = self._output(rec)
        except anyio.get_cancelled_exc_class():
            rec.end, rec.cancelled = self.now(), True
            raise
        except BaseException as exc:
            rec.end, rec.error = self.now(), exc
            raise
        rec.end = self.now()
        return out

    def _output(self, rec: _Batch) -> Any:
        kind, k = rec.outcome.kind, rec.index
        if kind == "raise":
            raise PlannedError(k)
        results = [self.item_fn(item) for item in rec.items]
        if kind == "item_failure":
            for pos in range(0, len(results), 2):
                results[pos] = Failure(PlannedError(k, pos))
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

    async def caller(self, b: Batcher[Any, Any], rec: _Caller) -> None:
        arrival = rec.arrival
        await anyio.sleep_until(self.t0 + arrival.at_ms / 1000)
        rec.submitted = self.now()
        cancel = arrival.cancel_after_ms
        scope = anyio.CancelScope() if cancel is None else anyio.move_on_after(cancel / 1000)
        with scope:
            rec.q_before = b.stats.queue_size  # no await between this and the call
            try:
                if arrival.many:
                    value: Any = await b.many(
                        arrival.items, priority=arrival.priority, wait=arrival.wait
                    )
                else:
                    value = await b(arrival.items[0], priority=arrival.priority, wait=arrival.wait)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # an outcome for the checks to judge
                rec.kind, rec.exception = "error", exc
            else:
                rec.kind, rec.result = "result", value
            rec.done = self.now()
        if scope.cancelled_caught:
            rec.kind, rec.done = "cancelled", self.now()
        self.left -= 1
        if self.left == 0 and self.all_done is not None:
            self.all_done.set()

    async def main(self) -> None:
        self.t0 = anyio.current_time()
        before = _count_tasks()
        with anyio.move_on_after(HANG_GUARD_S) as guard:
            await self.body()
        self.hung = guard.cancelled_caught
        await anyio.lowlevel.checkpoint()  # let finished tasks be reaped
        self.tasks_left = _count_tasks() - before

    async def body(self) -> None:
        b: object = self.factory(self.fn)
        if not isinstance(b, Batcher):
            msg = f"batcher_factory must return a batched.Batcher, not {type(b).__qualname__}"
            raise TypeError(msg)
        s = b._settings
        if s.cache is not None or s.dedupe:
            msg = "run_schedule needs a Batcher without cache or dedupe (fn sees every item)"
            raise ValueError(msg)
        self.batcher = b
        self.settings = {
            name: getattr(s, name)
            for name in (
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
            )
        }
        for rec in self.callers:
            rec.lengths = tuple(self._length(b, item) for item in rec.arrival.items)
        self.all_done = anyio.Event()
        if not self.callers:
            self.all_done.set()
        # The callers live outside the batcher's block: they may outlive it.
        async with anyio.create_task_group() as tg:
            try:
                async with b:
                    for rec in self.callers:
                        tg.start_soon(self.caller, b, rec)
                    await self.all_done.wait()
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:
                self.escaped = exc

    @staticmethod
    def _length(b: Batcher[Any, Any], item: Any) -> int | None:
        length_fn = b._settings.length_fn
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
        assert self.batcher is not None
        isolate = bool(self.settings.get("isolate_errors"))
        records: list[BatchRecord] = []
        seen: dict[Hashable, int] = {}  # item -> the latest call that got it
        for rec in self.batches:
            keys = [item_key(item) for item in rec.items]
            retry_of = seen.get(keys[0]) if keys else None
            if retry_of is not None:
                prev = self.batches[retry_of]
                prev_keys = {item_key(item) for item in prev.items}
                legit = isolate and prev.error is not None and len(prev.items) > 1
                if not (legit and prev_keys.issuperset(keys)):
                    retry_of = None
            seen.update((key, rec.index) for key in keys)
            records.append(
                BatchRecord(
                    index=rec.index,
                    items=rec.items,
                    start_ms=rec.start / 1000,
                    end_ms=rec.end / 1000,
                    outcome=rec.outcome,
                    results=rec.results,
                    error=rec.error,
                    cancelled=rec.cancelled,
                    retry_of=retry_of,
                )
            )
        callers = tuple(
            CallerOutcome(
                index=rec.index,
                arrival=rec.arrival,
                kind=rec.kind,
                result=rec.result,
                exception=rec.exception,
                submitted_ms=rec.submitted / 1000,
                done_ms=None if rec.done is None else rec.done / 1000,
                lengths=rec.lengths,
                queue_size_before=rec.q_before,
            )
            for rec in self.callers
        )
        return ScheduleResult(
            schedule=self.schedule,
            backend=backend,
            settings=types.MappingProxyType(self.settings),
            callers=callers,
            batches=tuple(records),
            stats=self.batcher.stats,
            hung=self.hung,
            escaped=self.escaped,
            tasks_left=self.tasks_left,
            loop_errors=reports,
        )


def _identity(item: Any) -> Any:
    return item


def run_schedule(
    batcher_factory: Callable[[_BatchFn], Batcher[Any, Any]],
    schedule: Schedule,
    *,
    backend: str = "asyncio",
    outcomes: Sequence[BatchOutcome] | None = None,
    item_fn: Callable[[Any], Any] | None = None,
) -> ScheduleResult:
    """Play ``schedule`` against a batcher on virtual time; return what happened.

    ``batcher_factory(fn)`` builds the batcher around ``fn``, a recording async batch
    function: pass it on unchanged (a ``functools.partial`` is fine) so it sees the
    items as sent. Its k-th call plays ``outcomes[k]`` (default: results after 1 ms);
    a result is ``item_fn(item)`` (default: the item itself; keep it injective, so a
    result handed to the wrong caller shows). Each call runs in a fresh ``anyio.run``
    on ``backend`` ("asyncio" or "trio"): call it from a synchronous test. Example::

        result = run_schedule(lambda fn: Batcher(fn, batch_size=4), schedule)
        check_invariants(result)

    :raises ValueError: for items sent twice in the schedule, or a batcher with a cache
        or dedupe (``fn`` would not see every item)
    """
    if backend not in BACKEND_NAMES:
        msg = f"'backend' must be one of {BACKEND_NAMES}: {backend!r}"
        raise ValueError(msg)
    owners: dict[Hashable, int] = {}
    for index, arrival in enumerate(schedule.arrivals):
        for item in arrival.items:
            first = owners.setdefault(item_key(item), index)
            if first != index or arrival.items.count(item) > 1:
                msg = f"items must be distinct across a schedule: {item!r} is sent twice"
                raise ValueError(msg)
    player = _Player(batcher_factory, schedule, outcomes or (), item_fn or _identity)
    return player.play(backend)
