"""The reliability suite: a stateful machine, an overload soak, faults injected into the
engine, and proof that ``batched.testing.check_invariants`` catches a planted bug.

1. A hypothesis ``RuleBasedStateMachine`` drives one ``Batcher`` through a blocking
   portal whose event loop runs on a *manual* clock (asyncio: ``ManualClockLoop`` below;
   trio: ``MockClock()`` without autojump). Time moves only in the ``advance`` rule, one
   tick at a time, and every rule lets the loop run until every task is blocked. A tick
   is 1/1024 s, so every time the batcher computes (arrival + timeout, start + fn time)
   is an exact float. The machine keeps no model of its own: it records the run as a
   ``batched.testing.ScheduleResult`` (in ticks) with a reading of ``stats.queue_size``
   after every rule, and ``check_invariants`` judges it, replaying the queue bound's
   admission rule against every reading. A machine with a planted off-by-one shows the
   judge can fail.
2. An overload soak on virtual time: arrivals at ten times the service rate for 60
   virtual seconds against ``max_queue_size=64``.
3. Faults injected into the engine through a user strategy (a pool whose ``cut`` or
   ``add`` raises): every waiting caller is released with ``BatcherClosed`` chained to
   the fault, nothing hangs, the fault leaves ``async with``.
4. A planted off-by-one in the cut (a user pool that cuts one item more than asked):
   ``check_invariants`` over ``run_schedule`` finds it and hypothesis shrinks it to a
   small counterexample.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import math
import selectors
import sys
import tracemalloc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
import trio.lowlevel
import trio.testing
from _helpers import running_tasks
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

import batched
from batched import BatcherClosed, QueueFull
from batched.testing import (
    Arrival,
    BatchOutcome,
    BatchRecord,
    CallerOutcome,
    PlannedError,
    Schedule,
    ScheduleResult,
    arrival_schedules,
    batcher_settings,
    check_invariants,
    run_schedule,
    settle,
    virtual_time_backends,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskStatus

BACKENDS = ["asyncio", "trio"]


class Boom(Exception):
    """An error injected into the engine."""


class Fatal(BaseException):
    """A BaseException that is not a cancellation, injected into the engine."""


class Planned(Exception):
    """What a batch marked by the ``fail_next_batch`` rule raises."""

    def __init__(self, batch: int) -> None:
        super().__init__(f"planned failure of batch {batch}")
        self.batch = batch


class Closing(Exception):
    """What ends the batcher's block in a fault test."""


# -- a manual clock for asyncio ----------------------------------------------------------


class _WaitForWakeup(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Never sleeps towards a timer: time moves only when the test moves it, so an idle
    loop waits for I/O or a call from the test thread (the self-pipe)."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return super().select(0 if timeout is not None and timeout <= 0 else None)  # type: ignore[no-any-return]


class ManualClockLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose ``time()`` is ``now``, set by the test; the asyncio twin of
    ``trio.testing.MockClock()`` without autojump. Exception-handler reports are kept."""

    def __init__(self) -> None:
        self.now = 0.0
        self.recorded_errors: list[dict[str, Any]] = []
        super().__init__(_WaitForWakeup())

    def time(self) -> float:
        return self.now

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.recorded_errors.append(context)

    def due(self) -> bool:
        """Whether a callback is ready or a timer is due: the loop has work at ``now``."""
        return bool(self._ready) or any(  # type: ignore[attr-defined]
            not handle.cancelled() and handle.when() <= self.now
            for handle in self._scheduled  # type: ignore[attr-defined]
        )


# -- 1. the stateful machine ---------------------------------------------------------------

TICK = 1 / 1024  # seconds: a binary fraction, so sums of ticks are exact floats
TICK_MS = 1000 / 1024  # the tick in milliseconds (exactly 0.9765625)
MAX_WAIT_TICKS = 1024  # the default max_wait_ms, 1000 ms, in ticks


@dataclass(eq=False)
class BatchRec:
    """One call of the batch function, as it saw it (times in ticks)."""

    index: int
    items: tuple[int, ...]
    start: int
    start_seq: int
    queue_size: int
    task: int
    error: Planned | None
    end: int = -1
    end_seq: int = -1
    queue_size_at_end: int = -1
    cancelled: bool = False


@dataclass(eq=False)
class CallerRec:
    """One caller: what it sent and what it got (times in ticks)."""

    index: int
    items: tuple[int, ...]
    many: bool
    wait: bool
    priority: int
    submit: int
    scope: anyio.CancelScope | None = None
    task: int | None = None
    sent_seq: int = -1
    queue_size: int = -1
    kind: str = "missing"  # "result", "error" or "cancelled" once its task ended
    value: Any = None
    error: BaseException | None = None
    done: int | None = None
    done_seq: int = -1
    queue_size_after: int = -1
    cancel_at: int | None = None  # the tick of the cancel rule
    cancel_seq: int = -1


class BatcherMachine(RuleBasedStateMachine):
    """A ``Batcher`` on a manual clock, driven rule by rule, judged by batched.testing.

    The rules submit calls, move the clock, cancel a caller, make the next batch fail and
    close the block (normally, or by an error); after every rule the loop runs until every
    task waits and nothing is due, and the machine reads ``stats.queue_size``. At the end
    it writes down what happened as a ``batched.testing.ScheduleResult`` (times in ticks,
    the settings' times too) and ``check_invariants`` judges it: the same oracle as the
    property tests, plus, since every reading was taken while every task waited, the
    replay of the queue bound's admission rule against each reading.
    """

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.backend = backend
        self.stack = contextlib.ExitStack()
        self.portal: Any = None
        self.loop: ManualClockLoop | None = None
        self.clock: trio.testing.MockClock | None = None
        self.tg: Any = None
        self.now = 0  # ticks
        self.seq = itertools.count()
        self.callers: list[CallerRec] = []
        self.batches: list[BatchRec] = []  # appended by fn, in the loop thread
        self.readings: list[tuple[int, float, int]] = []
        self.next_item = 0
        self.fail_next = False
        self.closed: str | None = None  # "exit" or "raise" once the close rule ran
        self.close_at = -1
        self.close_seq = -1
        self.close_error: PlannedError | None = None
        self.close_event: Any = None
        self.owner_done: int | None = None  # the tick `async with` was over
        self.escaped: BaseException | None = None
        self.baseline = 0

    # -- plumbing (the loop thread) ------------------------------------------------------

    def strategy(self, strategy: batched.Strategy) -> batched.Strategy:
        """The batcher's strategy (a subclass may plant a bug here)."""
        return strategy

    def _new_loop(self) -> ManualClockLoop:
        self.loop = ManualClockLoop()
        return self.loop

    async def _settle(self) -> None:
        """Run the loop until every task is blocked and nothing is due at this tick."""
        for _ in range(1000):
            await settle()
            if self.loop is None or not self.loop.due():
                return
            await anyio.lowlevel.checkpoint()
        raise AssertionError("the loop never settled: something is due at every turn")

    async def _step(self, action: Callable[[], object] | None = None) -> None:
        if action is not None:
            action()
        await self._settle()

    async def _tick(self) -> None:
        self.now += 1
        target = self.now * TICK
        if self.loop is not None:
            self.loop.now = target
        else:
            assert self.clock is not None
            self.clock.jump(target - self.clock.current_time())
        await self._settle()

    async def _advance(self, ticks: int) -> None:
        for _ in range(ticks):
            await self._tick()

    async def _run_out(self, limit: int) -> bool:
        for _ in range(limit):
            if self.owner_done is not None and all(c.kind != "missing" for c in self.callers):
                return True
            await self._tick()
        return False

    async def _tasks_left(self) -> int:
        return running_tasks() - 1 - self.baseline  # less this call's own task

    def queue_size(self) -> int:
        return self.batcher.stats.queue_size

    async def fn(self, items: list[int]) -> list[tuple[str, int]]:
        index = len(self.batches)
        error = Planned(index) if self.fail_next else None
        self.fail_next = False
        task = anyio.get_current_task().id
        rec = BatchRec(
            index, tuple(items), self.now, next(self.seq), self.queue_size(), task, error
        )
        self.batches.append(rec)
        try:
            await anyio.sleep(self.fn_ticks * TICK)
        except anyio.get_cancelled_exc_class():
            rec.cancelled = True
            rec.end, rec.end_seq = self.now, next(self.seq)
            raise
        rec.queue_size_at_end = self.queue_size()
        rec.end, rec.end_seq = self.now, next(self.seq)
        if rec.error is not None:
            raise rec.error
        return [("r", item) for item in items]

    async def _host(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self.tg = tg
            self.close_event = anyio.Event()
            self.baseline = running_tasks()
            tg.start_soon(self._owner)
            task_status.started()
            await anyio.sleep_forever()

    async def _owner(self) -> None:
        try:
            async with self.batcher:
                await self.close_event.wait()
                if self.close_error is not None:
                    raise self.close_error
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            self.escaped = exc
        finally:
            self.owner_done = self.now

    async def _caller(self, c: CallerRec) -> None:
        b = self.batcher
        c.task = anyio.get_current_task().id
        with anyio.CancelScope() as scope:
            c.scope = scope
            c.queue_size, c.sent_seq = self.queue_size(), next(self.seq)
            try:
                if c.many:
                    value: Any = await b.many(list(c.items), priority=c.priority, wait=c.wait)
                else:
                    value = await b(c.items[0], priority=c.priority, wait=c.wait)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                c.kind, c.error = "error", exc
            else:
                c.kind, c.value = "result", value
            c.done, c.done_seq = self.now, next(self.seq)
        if scope.cancelled_caught:
            c.kind, c.done, c.done_seq = "cancelled", self.now, next(self.seq)
        c.queue_size_after = self.queue_size()

    def _do(self, action: Callable[[], object] | None = None) -> None:
        self.portal.call(self._step, action)
        self.readings.append((next(self.seq), float(self.now), self.portal.call(self.queue_size)))

    # -- rules -----------------------------------------------------------------------

    @initialize(
        batch_size=st.integers(1, 4),
        timeout=st.integers(0, 4),
        max_queue=st.none() | st.integers(1, 5),
        priority_order=st.booleans(),
        threshold=st.integers(0, 3),
        fn_ticks=st.integers(0, 3),
    )
    def start(
        self,
        batch_size: int,
        timeout: int,
        max_queue: int | None,
        priority_order: bool,
        threshold: int,
        fn_ticks: int,
    ) -> None:
        self.fn_ticks = fn_ticks
        strategy = self.strategy(batched.ByPriority() if priority_order else batched.Fifo())
        self.batcher = batched.Batcher(
            self.fn,
            batch_size=batch_size,
            timeout_ms=timeout * TICK_MS,
            max_queue_size=max_queue,
            strategy=strategy,
            small_batch_threshold=threshold,
        )
        # What check_invariants reads, in ticks.
        self.settings = {
            "batch_size": batch_size,
            "timeout_ms": timeout,
            "max_batch_length": None,
            "length_fn": None,
            "strategy": strategy,
            "small_batch_threshold": threshold,
            "max_wait_ms": MAX_WAIT_TICKS,
            "max_queue_size": max_queue,
            "max_concurrent_batches": 1,
            "isolate_errors": False,
        }
        if self.backend == "asyncio":
            options: dict[str, Any] = {"loop_factory": self._new_loop}
        else:
            self.clock = trio.testing.MockClock()  # rate 0, no autojump: a manual clock
            options = {"clock": self.clock}
        self.portal = self.stack.enter_context(start_blocking_portal(self.backend, options))
        # Older objects are frozen (until teardown), so the collection that makes abandoned
        # tasks report (drain_errors) only walks what this example made.
        gc.freeze()
        self.portal.start_task(self._host)
        self._do()

    @rule(
        n=st.integers(1, 3),
        many=st.booleans(),
        wait=st.booleans(),
        priority=st.integers(0, 2),
    )
    def submit(self, n: int, many: bool, wait: bool, priority: int) -> None:
        items = tuple(range(self.next_item, self.next_item + n))
        self.next_item += n
        c = CallerRec(len(self.callers), items, many or n > 1, wait, priority, self.now)
        self.callers.append(c)
        self._do(lambda: self.tg.start_soon(self._caller, c))

    @rule(ticks=st.integers(1, 6))
    def advance(self, ticks: int) -> None:
        self.portal.call(self._advance, ticks)
        self._do()

    @precondition(lambda self: any(c.kind == "missing" for c in self.callers))
    @rule(pick=st.integers(0, 63))
    def cancel(self, pick: int) -> None:
        pending = [c for c in self.callers if c.kind == "missing"]
        c = pending[pick % len(pending)]
        c.cancel_at, c.cancel_seq = self.now, next(self.seq)
        assert c.scope is not None
        self._do(c.scope.cancel)

    @rule()
    def fail_next_batch(self) -> None:
        self.fail_next = True

    @precondition(lambda self: self.closed is None)
    @rule(error=st.booleans())
    def close(self, error: bool) -> None:
        # An error leaves the block at once (every waiting caller gets BatcherClosed);
        # a normal exit finishes the accepted items first.
        self.closed, self.close_at, self.close_seq = (
            "raise" if error else "exit",
            self.now,
            next(self.seq),
        )
        if error:
            self.close_error = PlannedError(None)
        self._do(self.close_event.set)

    # -- the end ---------------------------------------------------------------------

    def teardown(self) -> None:
        """Close normally (unless a rule closed it), run the clock until the block has
        ended and every caller has its outcome, and judge the record; after a failed
        step, only clean up, so that step's error is the one reported."""
        if self.portal is None:
            return
        failing = sys.exc_info()[1] is not None
        ended = False
        try:
            if not failing:
                if self.closed is None:
                    self.close(error=False)
                ended = self.portal.call(self._run_out, 5000)
                stats = self.portal.call(lambda: self.batcher.stats)
                tasks_left = self.portal.call(self._tasks_left)
        finally:
            if self.tg is not None:
                self.portal.call(self.tg.cancel_scope.cancel)
            self.stack.close()
        try:
            errors = [] if failing else drain_errors(self.loop)
        finally:
            gc.unfreeze()
        if not failing:
            result = self.result(stats, hung=not ended, tasks_left=tasks_left, errors=errors)
            check_invariants(result)

    def result(
        self, stats: batched.BatchStats, *, hung: bool, tasks_left: int, errors: list[str]
    ) -> ScheduleResult:
        """The run as batched.testing records one: times in ticks, written as ms."""
        callers = []
        for c in self.callers:
            cancel = None if c.cancel_at is None else c.cancel_at - c.submit
            arrival = Arrival(c.submit, c.items, c.many, c.priority, cancel, c.wait)
            # A stepped driver orders a cancellation where it asked for it.
            done_seq = c.cancel_seq if c.kind == "cancelled" else c.done_seq
            callers.append(
                CallerOutcome(
                    index=c.index,
                    arrival=arrival,
                    kind=c.kind,
                    result=c.value,
                    exception=c.error,
                    submitted_ms=c.submit,
                    done_ms=c.done,
                    lengths=(1,) * len(c.items),
                    queue_size_before=c.queue_size,
                    queue_size_after=c.queue_size_after,
                    sent_seq=c.sent_seq,
                    done_seq=done_seq,
                    task=c.task,
                )
            )
        batches = [
            BatchRecord(
                index=b.index,
                items=b.items,
                start_ms=b.start,
                end_ms=b.end,
                outcome=BatchOutcome(self.fn_ticks, "ok" if b.error is None else "raise"),
                results=None if b.error or b.cancelled else tuple(("r", i) for i in b.items),
                error=None if b.cancelled else b.error,  # what it raised, if it did
                cancelled=b.cancelled,
                retry_of=None,
                queue_size_at_start=b.queue_size,
                queue_size_at_end=b.queue_size_at_end,
                start_seq=b.start_seq,
                end_seq=b.end_seq,
                task=b.task,
            )
            for b in self.batches
        ]
        schedule = Schedule(
            [c.arrival for c in callers], close_at_ms=self.close_at, close_by=self.closed or "exit"
        )
        return ScheduleResult(
            schedule=schedule,
            backend=self.backend,
            settings=self.settings,
            callers=tuple(callers),
            batches=tuple(batches),
            stats=stats,
            hung=hung,
            escaped=self.escaped,
            tasks_left=tasks_left,
            loop_errors=tuple(errors),
            closed_ms=self.close_at if self.closed == "exit" else None,
            block_ended_ms=self.owner_done,
            close_seq=self.close_seq,
            queue_sizes=tuple(self.readings),
        )


def drain_errors(loop: ManualClockLoop | None) -> list[str]:
    """What reached the exception handler of ``loop`` (closed), late reports included."""
    if loop is None:
        return []
    loop.set_exception_handler(None)
    gc.collect()
    return [str(context.get("message")) for context in loop.recorded_errors]


@pytest.mark.parametrize("backend", BACKENDS)
def test_stateful_model(backend: str) -> None:
    profile = settings()
    run_state_machine_as_test(
        lambda: BatcherMachine(backend),
        settings=settings(
            profile,
            max_examples=max(10, profile.max_examples // 4),
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[*profile.suppress_health_check, HealthCheck.too_slow],
        ),
    )


class GreedyMachine(BatcherMachine):
    """The machine with a planted bug: its pools cut one item more than asked."""

    def strategy(self, strategy: batched.Strategy) -> batched.Strategy:
        return GreedyStrategy(strategy)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stateful_machine_catches_an_off_by_one(backend: str) -> None:
    """The machine's judge can fail: it finds the planted bug and names batch_size."""
    with pytest.raises(AssertionError, match="batch_size"):
        run_state_machine_as_test(
            lambda: GreedyMachine(backend),
            settings=settings(
                settings(),
                max_examples=200,
                stateful_step_count=30,
                deadline=None,
                database=None,
                phases=[Phase.generate],  # the first failure will do: no need to shrink it
                suppress_health_check=list(HealthCheck),
            ),
        )


# -- 2. the overload soak ----------------------------------------------------------------
#
# Arrivals at ten times the service rate for 60 virtual seconds. The example's timeline
# (fn 10 ms per batch of 8, arrivals every 0.1 ms) is stretched 200x, with arrivals at
# exactly ten times the service rate, so the run has 2,400 callers: fn takes 2 s per
# batch of up to 8 (4 items/s), a caller arrives every 25 ms (40/s). The monitor samples
# the queue halfway between every two arrivals and at every batch start: 80 samples per
# batch, where every virtual ms of the example gives 10. (Every virtual ms over 60 s
# would be 60,000 stats snapshots: too slow under tracemalloc.)

SOAK_S = 60.0  # virtual seconds of arrivals
FN_S = 2.0  # per batch of up to BATCH items
BATCH = 8
SERVICE_RATE = BATCH / FN_S  # 4 items/s
ARRIVAL_S = 0.025  # 40 arrivals/s: ten times the service rate
MAX_QUEUE = 64
TIMEOUT_MS = 5.0
DEADLINE_S = 10.0  # wait=True callers give up after this
MEMORY_SLACK = 256 * 1024  # bytes the traced memory may grow from 20 s to 60 s


@dataclass
class Soak:
    max_queue_seen: int = 0
    samples: int = 0
    completed: int = 0
    rejected: int = 0
    timed_out: int = 0
    max_latency: float = 0.0
    memory: dict[int, int] = field(default_factory=dict)


@pytest.mark.virtual_time
@pytest.mark.anyio
@pytest.mark.parametrize("wait", [False, True], ids=["wait=False", "wait=True+deadline"])
async def test_overload_soak(wait: bool) -> None:
    """Ten times more arrivals than the batch function serves, for 60 virtual seconds:
    the waiting items never exceed ``max_queue_size``, traced memory stays flat after
    warm-up, admitted callers' latency stays bounded, and ``fn`` runs full batches back
    to back. With ``wait=False`` the rest get ``QueueFull``; with ``wait=True`` callers
    wait for room and give up after ``DEADLINE_S``."""
    n = round(SOAK_S / ARRIVAL_S)
    soak = Soak()

    def sample_queue() -> None:
        soak.max_queue_seen = max(soak.max_queue_seen, b.stats.queue_size)
        soak.samples += 1

    async def fn(items: list[int]) -> list[int]:
        sample_queue()  # just after the cut and the room it granted
        await anyio.sleep(FN_S)
        return [item * 2 for item in items]

    b = batched.Batcher(fn, batch_size=BATCH, timeout_ms=TIMEOUT_MS, max_queue_size=MAX_QUEUE)

    async def caller(item: int) -> None:
        start = anyio.current_time()
        with anyio.move_on_after(DEADLINE_S if wait else math.inf) as scope:
            try:
                result = await b(item, wait=wait)
            except QueueFull:
                soak.rejected += 1
                return
            assert result == item * 2
            soak.completed += 1
            soak.max_latency = max(soak.max_latency, anyio.current_time() - start)
        if scope.cancelled_caught:
            soak.timed_out += 1

    async def monitor(t0: float) -> None:
        for k in range(n):
            await anyio.sleep_until(t0 + (k + 0.5) * ARRIVAL_S)
            sample_queue()

    def sample_memory(at: int) -> None:
        gc.collect()
        soak.memory[at] = tracemalloc.get_traced_memory()[0]

    gc.freeze()  # older objects (hypothesis' among them) stay out of the collections
    tracemalloc.start()
    try:
        with anyio.fail_after(SOAK_S * 2):
            t0 = anyio.current_time()
            async with b, anyio.create_task_group() as tg:
                tg.start_soon(monitor, t0)
                for i in range(n):
                    await anyio.sleep_until(t0 + i * ARRIVAL_S)
                    if i == round(20 / ARRIVAL_S):
                        sample_memory(20)
                    tg.start_soon(caller, i)
                await anyio.sleep_until(t0 + SOAK_S)
                sample_memory(60)
    finally:
        tracemalloc.stop()
        gc.unfreeze()

    stats = b.stats
    report = f"{soak}\n{stats}"
    assert soak.samples > n, report
    assert soak.max_queue_seen == MAX_QUEUE, (
        f"the queue bound was not kept (or never reached): {report}"
    )
    growth = soak.memory[60] - soak.memory[20]
    assert growth < MEMORY_SLACK, f"memory grew by {growth} bytes from 20 s to 60 s: {report}"
    # fn never idles and runs full batches: the overload costs no throughput.
    assert stats.total_batches >= SOAK_S / FN_S, report
    assert stats.avg_batch_size >= BATCH - 0.5, report
    if wait:
        assert soak.rejected == 0, report
        bound = DEADLINE_S
        assert soak.completed > 0, report
        # The window also holds the items of callers that gave up while their batch ran.
        assert stats.latency_p99_ms <= (DEADLINE_S + FN_S) * 1000, report
    else:
        # An admitted caller waits at most for the batch running when it arrives (FN_S)
        # and for the MAX_QUEUE items queued up to and including its own, in full
        # batches (MAX_QUEUE / SERVICE_RATE); and once, at the start, for the timeout.
        bound = MAX_QUEUE / SERVICE_RATE + FN_S + TIMEOUT_MS / 1000
        assert soak.timed_out == 0, report
        assert soak.rejected > 0.85 * n, report
        assert soak.completed >= SOAK_S * SERVICE_RATE, report
        assert stats.latency_p99_ms <= bound * 1000 + 1e-6, report
    assert soak.max_latency <= bound + 1e-9, f"latency {soak.max_latency} s > {bound} s: {report}"
    assert soak.completed + soak.rejected + soak.timed_out == n, report
    assert stats.submitted == n, report
    got = (stats.completed, stats.rejected, stats.cancelled, stats.failed)
    assert got == (soak.completed, soak.rejected, soak.timed_out, 0), report
    print(f"soak wait={wait}: {report}")


# -- 3. faults injected into the engine ---------------------------------------------------


class FaultyStrategy:
    """FIFO pools whose ``fail_on``-th cut (counted over all pools of the strategy)
    raises ``fault``; with ``stay``, every cut from then on raises too. Once
    ``fails_in`` names ``add`` or ``oldest``, every call of that method raises ``fault``."""

    def __init__(self, fault: BaseException, fail_on: int, stay: bool = False) -> None:
        self.fault, self.fail_on, self.stay = fault, fail_on, stay
        self.cuts = 0
        self.fails_in: str | None = None

    def new_pool(self) -> batched.Pool:
        return FaultyPool(self)


class FaultyPool:
    def __init__(self, strategy: FaultyStrategy) -> None:
        self.inner = batched.Fifo().new_pool()
        self.strategy = strategy

    def add(self, entry: batched.Entry) -> None:
        if self.strategy.fails_in == "add":
            raise self.strategy.fault
        self.inner.add(entry)

    def remove(self, entry: batched.Entry) -> None:
        self.inner.remove(entry)

    def __len__(self) -> int:
        return len(self.inner)

    def oldest(self) -> batched.Entry | None:
        if self.strategy.fails_in == "oldest":
            raise self.strategy.fault
        return self.inner.oldest()

    def cut(self, max_items: int, budget: float) -> list[batched.Entry]:
        s = self.strategy
        s.cuts += 1
        if s.cuts == s.fail_on or (s.stay and s.cuts > s.fail_on):
            raise s.fault
        return self.inner.cut(max_items, budget)


@dataclass
class FaultRun:
    outcomes: dict[int, Any] = field(default_factory=dict)
    fn_log: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    escaped: BaseException | None = None
    body_done: bool = False


async def crash_scene(
    b: batched.Batcher[int, int], run: FaultRun, arm: Callable[[], None], last: list[int]
) -> None:
    """Batch A (items 0-3) runs from 0 ms on one of two slots; at 1 ms items 4-6 wait in
    the pool; then ``arm()``, and a last call of ``last`` (with ``max_queue_size=4``: in
    the intake if it is one item, waiting for room if more). Records what every caller
    got and what left ``async with``."""

    async def caller(items: list[int]) -> None:
        try:
            run.outcomes[items[0]] = await (b.many(items) if len(items) > 1 else b(items[0]))
        except Exception as exc:
            run.outcomes[items[0]] = exc

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            try:
                async with b:
                    for i in range(4):
                        tg.start_soon(caller, [i])
                        await settle()
                    await anyio.sleep(0.001)
                    for i in range(4, 7):
                        tg.start_soon(caller, [i])
                        await settle()
                    assert b.stats.queue_size == 3
                    arm()
                    tg.start_soon(caller, last)
                    await settle()
                    await anyio.sleep(1)
                    run.body_done = True
            except BaseException as exc:
                run.escaped = exc


async def batch_fn_for(run: FaultRun, items: list[int]) -> list[int]:
    run.fn_log.append(("start", tuple(items)))
    try:
        await anyio.sleep(0.010)
    except anyio.get_cancelled_exc_class():
        run.fn_log.append(("cancelled", tuple(items)))
        raise
    run.fn_log.append(("end", tuple(items)))
    return items


def assert_crashed(run: FaultRun, fault: BaseException) -> None:
    """Every caller got BatcherClosed chained to the fault, the running batch was
    cancelled, the block's body was interrupted, and the fault left ``async with`` as
    itself (not in an ExceptionGroup)."""
    assert run.escaped is fault, f"`async with` raised {run.escaped!r}, not {fault!r}"
    assert not run.body_done, "the fault did not interrupt the block's body"
    assert sorted(run.outcomes) == [0, 1, 2, 3, 4, 5, 6, 7], run.outcomes
    for first, outcome in run.outcomes.items():
        assert isinstance(outcome, BatcherClosed), f"caller of {first} got {outcome!r}"
        assert outcome.__cause__ is fault, f"caller of {first}: cause {outcome.__cause__!r}"
    assert run.fn_log == [("start", (0, 1, 2, 3)), ("cancelled", (0, 1, 2, 3))], run.fn_log


@pytest.mark.virtual_time
@pytest.mark.anyio
@pytest.mark.parametrize("fault_type", [Boom, Fatal])
async def test_pool_cut_fault_closes_the_batcher(fault_type: type[BaseException]) -> None:
    """The pool's second cut raises (at the 6 ms timeout of items 4-6) while batch A runs
    on one of two slots."""
    fault = fault_type("injected into Pool.cut")
    strategy = FaultyStrategy(fault, fail_on=2)
    run = FaultRun()
    b = batched.Batcher(
        functools.partial(batch_fn_for, run),
        batch_size=4,
        timeout_ms=5,
        max_queue_size=4,
        max_concurrent_batches=2,
        strategy=strategy,
    )
    start = anyio.current_time()
    await crash_scene(b, run, lambda: None, last=[7, 8])
    assert anyio.current_time() - start == pytest.approx(0.006)
    assert_crashed(run, fault)
    # The batcher starts afresh after the crash.
    strategy.fail_on = 0
    run.fn_log.clear()
    async with b:
        assert await b(10) == 10


@pytest.mark.virtual_time
@pytest.mark.anyio
@pytest.mark.parametrize("fault_type", [Boom, Fatal])
@pytest.mark.parametrize(
    "method",
    ["oldest", "add"],
)
async def test_collector_fault_closes_the_batcher(
    method: str, fault_type: type[BaseException]
) -> None:
    """The pool's ``method`` raises once armed, on the collector's next wake-up, as item
    7's call arrives: items 4-6 in the pool, batch A running. ``add`` raises as item 7's
    call is taken in from the intake, ``oldest`` once it is in the pool."""
    fault = fault_type(f"injected into Pool.{method}")
    strategy = FaultyStrategy(fault, fail_on=0)  # cuts never fail

    def arm() -> None:
        strategy.fails_in = method

    run = FaultRun()
    b = batched.Batcher(
        functools.partial(batch_fn_for, run),
        batch_size=4,
        timeout_ms=5,
        max_queue_size=4,
        max_concurrent_batches=2,
        strategy=strategy,
    )
    start = anyio.current_time()
    await crash_scene(b, run, arm, last=[7])
    assert anyio.current_time() - start == pytest.approx(0.001)
    assert_crashed(run, fault)


def run_isolated(backend: str, main: Callable[[], Awaitable[None]]) -> BaseException | None:
    """Run ``main`` in its own ``anyio.run`` on virtual time; what the runner raised.

    For faults that may corrupt the running task's cancel-scope stack (see
    ``BASE_EXCEPTION_IN_CLOSE``): kept out of the ``anyio_backend`` fixture so that
    cannot leak into its checks.
    """
    options = dict(virtual_time_backends())[backend]
    try:
        anyio.run(main, backend=backend, backend_options=options)
    except BaseException as exc:
        return exc
    return None


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


FAULT_TYPES = [Boom, Fatal]


@pytest.mark.parametrize("fault_type", FAULT_TYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pool_fault_while_closing_on_an_error(
    backend: str, fault_type: type[BaseException]
) -> None:
    """The pool's second cut raises, and it is the one ``fail_all`` makes to release the
    waiting callers when the block ends with an exception while item 2 waits in the
    pool: every caller still gets ``BatcherClosed``, the owner task is left intact, and
    the block's own exception leaves ``async with`` unchanged (a BaseException from the
    pool leaves in its place)."""
    fault = fault_type("injected into the second Pool.cut")
    closing = Closing("the body failed")
    outcomes: dict[int, Any] = {}
    escaped: list[BaseException] = []

    async def fn(items: list[int]) -> list[int]:
        await anyio.sleep(0.010)
        return items

    async def main() -> None:
        b = batched.Batcher(
            fn, batch_size=2, timeout_ms=5, strategy=FaultyStrategy(fault, fail_on=2)
        )

        async def caller(i: int) -> None:
            try:
                outcomes[i] = await b(i)
            except Exception as exc:
                outcomes[i] = exc

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                try:
                    async with b:
                        for i in range(3):  # 0 and 1: batch A (cut 1); 2 waits in the pool
                            tg.start_soon(caller, i)
                            await settle()
                        await anyio.sleep(0.001)
                        raise closing
                except BaseException as exc:
                    escaped.append(exc)

    runner_error = run_isolated(backend, main)
    assert runner_error is None, f"the run ended with {first_line(runner_error)}"
    if isinstance(fault, Exception):
        assert escaped == [closing], escaped
    else:
        # A BaseException from the pool (KeyboardInterrupt, say) is raised from
        # __aexit__ once every caller is released, chained to the block's exception.
        assert escaped == [fault], escaped
        assert fault.__context__ is closing
    assert sorted(outcomes) == [0, 1, 2], outcomes
    assert all(isinstance(o, BatcherClosed) for o in outcomes.values()), outcomes


@pytest.mark.parametrize("fault_type", FAULT_TYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pool_that_keeps_failing_still_releases_every_caller(
    backend: str, fault_type: type[BaseException]
) -> None:
    """The pool raises on its second cut and on every cut after it, so the crash
    handler's own attempt to empty the pool fails too: the crash still ends as one that
    fails once (``assert_crashed``)."""
    fault = fault_type("injected into every Pool.cut from the second on")
    run = FaultRun()

    async def main() -> None:
        b = batched.Batcher(
            functools.partial(batch_fn_for, run),
            batch_size=4,
            timeout_ms=5,
            max_queue_size=4,
            max_concurrent_batches=2,
            strategy=FaultyStrategy(fault, fail_on=2, stay=True),
        )
        await crash_scene(b, run, lambda: None, last=[7, 8])

    runner_error = run_isolated(backend, main)
    assert runner_error is None, f"the run ended with {first_line(runner_error)}"
    assert_crashed(run, fault)


# -- 4. the invariants catch a planted off-by-one ----------------------------------------


class GreedyStrategy:
    """``inner``'s pools with an off-by-one: each cut takes one item more than asked."""

    def __init__(self, inner: batched.Strategy) -> None:
        self.inner = inner

    def new_pool(self) -> batched.Pool:
        return GreedyPool(self.inner.new_pool())


class GreedyPool:
    def __init__(self, inner: batched.Pool) -> None:
        self.inner = inner

    def add(self, entry: batched.Entry) -> None:
        self.inner.add(entry)

    def remove(self, entry: batched.Entry) -> None:
        self.inner.remove(entry)

    def __len__(self) -> int:
        return len(self.inner)

    def oldest(self) -> batched.Entry | None:
        return self.inner.oldest()

    def cut(self, max_items: int, budget: float) -> list[batched.Entry]:
        return self.inner.cut(max_items + 1, budget)


def greedy(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with their strategy's pools made greedy (see ``GreedyStrategy``)."""
    strategy = options.get("strategy", batched.Fifo())
    if isinstance(strategy, batched.PriorityStrategy):
        strategy = strategy.to_strategy()
    return {**options, "strategy": GreedyStrategy(strategy)}


def test_invariants_catch_an_off_by_one_in_the_cut() -> None:
    """Hypothesis searches both backends for a schedule that ``check_invariants`` fails,
    and shrinks it; the shrunk counterexample then fails on every backend."""

    def failure(backend: str, options: dict[str, Any], schedule: Schedule) -> str | None:
        result = run_schedule(
            lambda fn: batched.Batcher(fn, **greedy(options)), schedule, backend=backend
        )
        try:
            check_invariants(result)
        except AssertionError as exc:
            return str(exc)
        return None

    # Without a length budget (its own check would speak of max_batch_length instead);
    # settings that do not bear on the size of a cut are fixed, to keep the search short.
    examples = st.tuples(
        st.sampled_from(BACKENDS),
        batcher_settings(
            max_batch_length=None,
            small_batch_threshold=8,
            max_wait_ms=1000,
            isolate_errors=False,
            max_concurrent_batches=st.integers(1, 2),
        ),
        arrival_schedules(max_callers=4, max_items=2),
    )
    try:
        backend, options, schedule = find(
            examples,
            lambda example: failure(*example) is not None,
            settings=settings(settings(), database=None, deadline=None, derandomize=True),
        )
    except NoSuchExample:
        pytest.fail("check_invariants never noticed batches one item over batch_size")
    messages = {name: failure(name, options, schedule) for name in BACKENDS}
    report = "\n".join(
        [
            f"shrunk counterexample (found on {backend}): Batcher(fn, **{options!r})",
            *(f"  caller {i}: {a.describe()}" for i, a in enumerate(schedule.arrivals)),
            *(f"check_invariants on {name}: {message}" for name, message in messages.items()),
        ]
    )
    print(report)
    for message in messages.values():
        assert message is not None, report
        assert "batch_size" in message, report
