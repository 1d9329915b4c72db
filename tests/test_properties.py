"""The property-based core (TESTING.md): one generated script drives a ``Batcher``.

Each hypothesis example runs one script in its own ``anyio.run`` on a virtual clock
(asyncio: ``VirtualTimeLoop``; trio: ``MockClock(autojump_threshold=0)``), records what
every caller got, every batch the function saw and when, and samples the queue size;
then plain synchronous code checks the invariants against those records.

Times are recorded in integer microseconds since the script started. Every planned time
is a whole number of milliseconds, so events that coincide in the plan share one
timestamp exactly; where two events share a timestamp their order is unknown to the
test, and every check allows both orders (they are written to be conservative there).

Which checks run where (each ``check_*`` docstring gives the argument):

1. one outcome per caller, no hang ......... always (check_outcomes, check_exit)
2. a result is fn of the caller's items .... always (check_outcomes)
3. no item twice, none of a departed caller  always (check_processing)
4. batch size and length budget ............ always (check_batches)
5. bounded wait: wait <= timeout + time all slots were busy (check_wait_bound), only
   with ``max_queue_size=None`` (then arrival = sending); the bound is ``timeout`` when
   the cut order is plain arrival order (one strategy key, one pool class), else
   ``max(timeout, max_wait)``. Exact form, every configuration: no slot is free while
   the items certainly waiting make a batch due (check_no_idle_slot)
6. no premature dispatch ................... always, before any close (check_no_premature)
7. arrival order within one key ............ always, per (pool class, strategy key)
   (check_order); the rules of the cut (overdue, small calls, strategy) against items
   certainly waiting (check_rule_order), before an abnormal close
8. failing batches fail exactly their callers, BaseException closes the batcher and
   leaves ``async with`` ...................... always (check_outcomes, check_exit)
9. queue bound and rejections .............. ``max_queue_size`` set; bounds on the
   reported queue size from the records in every configuration (check_queue)
10. stats add up ........................... always (check_stats)
11. later callers complete after a failure . always (check_outcomes: exact outcomes)
12. clean exit: no exception handler call, no task left, nothing left open (check_exit)
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest
import trio
from hypothesis import example, given, settings
from strategies import BatchPlan, CallerPlan, ClosePlan, Config, Script, fails_alone, scripts

import batched
from batched.testing import VirtualTimeLoop, fresh_backend_options

BACKENDS = ["asyncio", "trio"]
HANG_GUARD_S = 3600.0
DEFAULT_PLAN = BatchPlan(duration_ms=1, outcome="ok")


class PlannedError(Exception):
    """What a batch planned to ``raise`` raises (one instance per batch)."""


class ItemError(Exception):
    """What ``batched.Failure`` carries under ``item_failure`` (one instance per item)."""


class Boom(BaseException):
    """What a batch planned to raise a ``base_exception`` raises."""


def us(ms: int | float) -> int:
    return round(ms * 1000)


# -- records ---------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str  # "result" | "error" | "cancelled" | "rejected"
    value: Any
    at: int  # µs
    seq: int


@dataclass
class CallerRec:
    index: int
    plan: CallerPlan
    submit: int = -1  # µs
    q_before: int = -1  # stats.queue_size read just before the call, in the same step
    enter_seq: int = -1
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.plan.items)

    @property
    def outcome(self) -> Outcome:
        return self.outcomes[0]


@dataclass
class BatchRec:
    index: int
    items: tuple[int, ...]
    plan: BatchPlan
    start: int  # µs
    start_seq: int
    end: int = -1  # µs: returned, raised or cancelled
    status: str = "running"  # "returned" | "raised" | "killed" | "boom"
    exc: BaseException | None = None
    item_errors: dict[int, ItemError] = field(default_factory=dict)  # under item_failure

    @property
    def finished(self) -> bool:
        """``fn`` returned or raised an ``Exception``: its callers' outcomes follow from it."""
        return self.status in ("returned", "raised")


@dataclass
class Sample:
    seq: int
    at: int
    queue_size: int
    where: str


class ScriptRun:
    """Runs one script; everything the checks need is left on the instance."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.callers = [CallerRec(i, plan) for i, plan in enumerate(script.callers)]
        self.owner: dict[int, CallerRec] = {}
        self.lengths: dict[int, int] = {}
        for rec in self.callers:
            for item, length in zip(rec.plan.items, rec.plan.lengths, strict=True):
                self.owner[item] = rec
                self.lengths[item] = length
        self.batches: list[BatchRec] = []
        self.samples: list[Sample] = []
        self.seq = itertools.count()
        self.t0 = 0.0
        self.hang = False
        self.escaped: BaseException | None = None  # what left `async with batcher`
        self.body_done = False
        self.t_norm: int | None = None  # the owner left the block normally (drain)
        self.t_block_end: int | None = None  # `async with batcher` was over
        self.owner_cancelled_caught = False
        self.after_block = False
        self.tasks_before = -1
        self.tasks_after = -1
        self.stats: batched.BatchStats | None = None
        self.finished_callers = 0
        self.all_done: anyio.Event | None = None
        self.loop: VirtualTimeLoop | None = None
        self.resource_warnings: list[str] = []

    # -- helpers run inside the loop ----------------------------------------------------

    def now(self) -> int:
        return round((anyio.current_time() - self.t0) * 1e6)

    def sample(self, b: batched.Batcher[Any, Any], where: str) -> int:
        q = b.stats.queue_size
        self.samples.append(Sample(next(self.seq), self.now(), q, where))
        return q

    def record(self, rec: CallerRec, kind: str, value: Any) -> None:
        rec.outcomes.append(Outcome(kind, value, self.now(), next(self.seq)))

    async def fn(self, items: list[int]) -> Any:
        k = len(self.batches)
        plan = self.script.batches[k] if k < len(self.script.batches) else DEFAULT_PLAN
        rec = BatchRec(k, tuple(items), plan, self.now(), next(self.seq))
        self.batches.append(rec)
        self.sample(self.batcher, "fn start")
        try:
            await anyio.sleep(plan.duration_ms / 1000)
        except BaseException:
            rec.end, rec.status = self.now(), "killed"
            raise
        rec.end = self.now()
        self.sample(self.batcher, "fn end")
        out: list[Any] = [("r", item) for item in items]
        outcome = plan.outcome
        if outcome == "ok":
            rec.status = "returned"
            return out
        if outcome in ("raise", "base_exception"):
            rec.exc = exc = PlannedError(k) if outcome == "raise" else Boom(k)
            rec.status = "raised" if outcome == "raise" else "boom"
            raise exc
        rec.status = "returned"
        if outcome == "short":
            return out[:-1]
        if outcome == "long":
            return [*out, ("r", "extra")]
        if outcome == "item_failure":
            for pos, item in enumerate(items):
                if fails_alone(item):
                    rec.item_errors[item] = error = ItemError(item)
                    out[pos] = batched.Failure(error)
            return out
        assert outcome == "wrong_type"
        # Of the right length where it has one: the type alone is wrong.
        wrong: list[Any] = [dict(zip(items, out, strict=True)), set(out), iter(out), None]
        return wrong[k % len(wrong)]

    async def caller(self, b: batched.Batcher[Any, Any], rec: CallerRec) -> None:
        plan = rec.plan
        await anyio.sleep_until(self.t0 + plan.arrival_ms / 1000)
        rec.submit = self.now()
        scope = (
            anyio.CancelScope()
            if plan.cancel_after_ms is None
            else anyio.move_on_after(plan.cancel_after_ms / 1000)
        )
        with scope:
            rec.q_before = self.sample(b, f"before caller {rec.index}")
            rec.enter_seq = next(self.seq)
            # No await between the sample, the sequence number and the submission.
            try:
                if rec.n == 1:
                    value: Any = await b(plan.items[0], priority=plan.priority, wait=plan.wait)
                else:
                    value = await b.many(list(plan.items), priority=plan.priority, wait=plan.wait)
            except batched.QueueFull as exc:
                self.record(rec, "rejected", exc)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # anything else is an outcome the checks judge
                self.record(rec, "error", exc)
            else:
                self.record(rec, "result", value)
        if scope.cancelled_caught:
            self.record(rec, "cancelled", None)
        self.sample(b, f"after caller {rec.index}")
        self.finished_callers += 1
        if self.finished_callers == len(self.callers):
            assert self.all_done is not None
            self.all_done.set()

    def count_tasks(self) -> int:
        try:
            return len(asyncio.all_tasks())
        except RuntimeError:
            return trio.lowlevel.current_statistics().tasks_living

    async def main(self) -> None:
        self.t0 = anyio.current_time()
        self.tasks_before = self.count_tasks()
        try:
            with anyio.fail_after(HANG_GUARD_S):
                await self.body()
        except TimeoutError:
            self.hang = True
        await anyio.lowlevel.checkpoint()  # let finished tasks be reaped
        self.tasks_after = self.count_tasks()
        self.stats = self.batcher.stats

    async def body(self) -> None:
        script, cfg = self.script, self.script.config
        self.all_done = anyio.Event()
        self.batcher = b = batched.Batcher(
            self.fn,
            batch_size=cfg.batch_size,
            timeout_ms=cfg.timeout_ms,
            max_batch_length=cfg.max_batch_length,
            length_fn=self.lengths.__getitem__,
            strategy=cfg.strategy,
            small_batch_threshold=cfg.small_batch_threshold,
            max_wait_ms=cfg.max_wait_ms,
            max_queue_size=cfg.max_queue_size,
            max_concurrent_batches=cfg.max_concurrent_batches,
        )
        close = script.close
        cancel_at = close.at_ms / 1000 if close and close.kind == "cancel" else math.inf
        close_at = close.at_ms / 1000 if close and close.kind == "close" else math.inf
        # The callers live outside the batcher's block, so they can outlive it (and call
        # it after it closed); the owner's cancellation does not reach them.
        async with anyio.create_task_group() as callers_tg:
            started = False
            with anyio.CancelScope(deadline=self.t0 + cancel_at) as owner:
                try:
                    async with b:
                        for rec in self.callers:
                            callers_tg.start_soon(self.caller, b, rec)
                        started = True
                        with anyio.CancelScope(deadline=self.t0 + close_at):
                            await self.all_done.wait()
                        self.body_done = True
                        self.t_norm = self.now()
                    self.after_block = True
                except anyio.get_cancelled_exc_class():
                    raise
                except BaseException as exc:
                    self.escaped = exc
                finally:
                    self.t_block_end = self.now()
            self.owner_cancelled_caught = owner.cancelled_caught
            if not started:  # cancelled while entering: the callers find it closed
                for rec in self.callers:
                    callers_tg.start_soon(self.caller, b, rec)

    def run(self, backend: str) -> None:
        options = fresh_backend_options(backend)
        if backend == "asyncio":

            def loop_factory() -> VirtualTimeLoop:
                self.loop = VirtualTimeLoop()
                return self.loop

            options = {"loop_factory": loop_factory}
        # Everything older than this example is frozen, so the collection below (which
        # makes abandoned tasks and unclosed streams report) only walks what it made.
        gc.freeze()
        try:
            with warnings.catch_warnings(record=True) as caught:
                # Recorded rather than raised in __del__, where pytest would report it at
                # teardown, for no example in particular.
                warnings.simplefilter("always", ResourceWarning)
                anyio.run(self.main, backend=backend, backend_options=options)
                if self.loop is not None:
                    # As tests/conftest.py does: drop anyio's handler so that abandoned
                    # tasks reach the recording one.
                    self.loop.set_exception_handler(None)
                gc.collect()
        finally:
            gc.unfreeze()
        self.resource_warnings = [
            str(w.message) for w in caught if issubclass(w.category, ResourceWarning)
        ]


# -- derived facts ---------------------------------------------------------------------


class Facts:
    """What the checks share: where each item went, when the batcher closed, busy time."""

    def __init__(self, run: ScriptRun) -> None:
        self.run = run
        cfg = run.script.config
        self.cfg = cfg
        self.timeout = us(cfg.timeout_ms)
        self.max_wait = us(cfg.max_wait_ms)
        self.max_len = math.inf if cfg.max_batch_length is None else cfg.max_batch_length
        # item -> (batch, position); duplicates are reported by check_processing
        self.where: dict[int, tuple[BatchRec, int]] = {}
        self.duplicates: list[int] = []
        for batch in run.batches:
            for pos, item in enumerate(batch.items):
                if item in self.where:
                    self.duplicates.append(item)
                self.where[item] = (batch, pos)
        booms = [batch for batch in run.batches if batch.status == "boom"]
        self.booms = booms
        self.t_boom = min((batch.end for batch in booms), default=None)
        # The owner's cancellation took effect if its deadline came while the block was
        # still open (at the same instant as the block's end it may or may not have).
        self.t_cancel: int | None = None
        close = run.script.close
        if close is not None and close.kind == "cancel":
            deadline = us(close.at_ms)
            if run.t_block_end is not None and deadline <= run.t_block_end:
                self.t_cancel = deadline
        abnormal = [t for t in (self.t_boom, self.t_cancel) if t is not None]
        self.t_abn = min(abnormal) if abnormal else None
        closes = [t for t in (self.t_abn, run.t_norm) if t is not None]
        self.t_close = min(closes) if closes else None
        self.busy = self._busy_intervals()

    def _busy_intervals(self) -> list[tuple[int, int]]:
        """Maximal intervals during which every execution slot ran a batch function."""
        slots = self.cfg.max_concurrent_batches
        events: list[tuple[int, int]] = []
        for batch in self.run.batches:
            if batch.end > batch.start:
                events += [(batch.start, +1), (batch.end, -1)]
        events.sort(key=lambda e: (e[0], e[1]))  # ends before starts at one instant
        out: list[tuple[int, int]] = []
        running, since = 0, 0
        for at, delta in events:
            before = running
            running += delta
            if before < slots <= running:
                since = at
            elif running < slots <= before and at > since:
                out.append((since, at))
        return out

    def busy_between(self, a: int, b: int) -> int:
        return sum(max(0, min(b, hi) - max(a, lo)) for lo, hi in self.busy)

    def key(self, rec: CallerRec, j: int) -> tuple[bool, Any]:
        """Items with equal keys must leave in arrival order (rule 7)."""
        small = rec.n <= self.cfg.small_batch_threshold
        strategy = self.cfg.strategy
        if isinstance(strategy, batched.ByPriority):
            return small, rec.plan.priority
        if isinstance(strategy, batched.ByLength):
            return small, rec.plan.lengths[j]
        return small, None

    def closed_at_entry(self, rec: CallerRec) -> bool:
        """The caller may have called a batcher that was already closing."""
        return self.t_close is not None and rec.submit >= self.t_close

    def accepted_at_once(self, rec: CallerRec) -> bool:
        """The call was certainly accepted when sent, so its items' arrival is ``submit``.

        Without a queue bound every call is; with one, a call sent to an empty queue is
        (while the batcher is open, an empty queue has nobody waiting for room).
        """
        return (
            rec.outcome.kind != "rejected"
            and not self.closed_at_entry(rec)
            and (self.cfg.max_queue_size is None or rec.q_before == 0)
        )

    def dispatched_by(self, item: int, t: int) -> bool:
        return item in self.where and self.where[item][0].start <= t

    def rank(self, rec: CallerRec, j: int) -> tuple[bool, Any, int, int]:
        """The cut order outside the overdue rule: small calls, strategy key, arrival."""
        small, key = self.key(rec, j)
        return (not small, key, rec.enter_seq, j)

    def running_after(self, t: int) -> int:
        """Batch functions still running once everything at instant ``t`` has happened."""
        return sum(1 for batch in self.run.batches if batch.start <= t < batch.end)


def expected_error(batch: BatchRec) -> tuple[type[BaseException], BaseException | None]:
    """The exception type (and, for ``raise``, the very object) a finished batch hands out."""
    outcome = batch.plan.outcome
    if outcome == "raise":
        return PlannedError, batch.exc
    if outcome in ("short", "long"):
        return batched.BatchSizeMismatch, None
    if outcome == "wrong_type":
        return TypeError, None
    raise AssertionError(f"batch {batch.index} with outcome {outcome} did not fail")


# -- the checks ------------------------------------------------------------------------


def check_exit(run: ScriptRun, facts: Facts) -> None:
    """1 (hang), 12 (clean exit), and what leaves ``async with`` (8, BaseException)."""
    assert not run.hang, "hang: the virtual fail_after(3600) fired"
    if run.loop is not None:
        assert run.loop.recorded_errors == [], (
            f"asyncio exception handler called: {run.loop.recorded_errors}"
        )
    assert not run.resource_warnings, f"resources left open: {run.resource_warnings}"
    assert run.tasks_after == run.tasks_before, (
        f"tasks left running: {run.tasks_before} before, {run.tasks_after} after"
    )
    escaped = run.escaped
    if facts.booms:
        # The BaseException leaves `async with`, alone or in a BaseExceptionGroup.
        assert escaped is not None, "a BaseException from fn did not leave `async with`"
        leaves: list[BaseException] = [escaped]
        if isinstance(escaped, BaseExceptionGroup):
            leaves = list(_leaves(escaped))
        boom_objects = [batch.exc for batch in facts.booms]
        assert all(any(leaf is boom for boom in boom_objects) for leaf in leaves), (
            f"`async with` raised {escaped!r}, not the Boom from fn"
        )
    else:
        assert escaped is None, f"`async with` raised {escaped!r}"
    if not run.body_done:
        # The body was interrupted: by the owner's cancellation, or by a BaseException
        # from fn (the batcher's task group, entered in the owner's task, is cancelled).
        # Either way the block ends at once: closing takes no virtual time.
        assert facts.t_abn is not None, "the block's body was interrupted for no reason"
        assert run.t_block_end == facts.t_abn, (
            f"the block closed at {facts.t_abn} µs but ended at {run.t_block_end} µs"
        )
        if not facts.booms:
            # The cancellation must propagate (never swallowed, never wrapped).
            assert run.owner_cancelled_caught, "the owner's cancellation was swallowed"
            assert not run.after_block, "the owner's cancellation did not propagate"


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


def check_batches(run: ScriptRun, facts: Facts) -> None:
    """4: ``1 <= len(batch) <= batch_size``; the length budget, except an oversize item alone."""
    cfg = facts.cfg
    for batch in run.batches:
        assert 1 <= len(batch.items) <= cfg.batch_size, (
            f"batch {batch.index} has {len(batch.items)} items (batch_size={cfg.batch_size})"
        )
        total = sum(run.lengths[item] for item in batch.items)
        assert len(batch.items) == 1 or total <= facts.max_len, (
            f"batch {batch.index} {batch.items} has length {total} > {facts.max_len}"
        )


def check_processing(run: ScriptRun, facts: Facts) -> None:
    """3: no item twice; an item whose caller left (or was refused) before its batch
    started never reaches ``fn``. The cut and the call of ``fn`` happen at one instant,
    so "before the cut" is "strictly before the batch's start"; at the same instant the
    order is unknown and both are allowed."""
    assert not facts.duplicates, f"items processed twice: {facts.duplicates}"
    for item, (batch, _) in facts.where.items():
        assert item in run.owner, f"fn got an item nobody sent: {item!r}"
        rec = run.owner[item]
        assert rec.outcomes, f"caller {rec.index} has no outcome"
        outcome = rec.outcome
        assert outcome.kind != "rejected", f"item {item} was rejected, yet processed"
        assert rec.submit <= batch.start, f"item {item} processed before it was sent"
        assert outcome.at >= batch.start, (
            f"caller {rec.index} got {outcome.kind} at {outcome.at} µs, yet its item {item} "
            f"reached fn later, in batch {batch.index} at {batch.start} µs"
        )


def check_outcomes(run: ScriptRun, facts: Facts) -> None:
    """1, 2, 8, 11: one outcome each, and exactly the one the batches imply.

    A caller whose items all went through batches that finished (``fn`` returned or
    raised an ``Exception``) gets its results, in input order, or the exception of its
    first failing item; a caller with an item that never finished must have been
    closed by the batcher: ``BatcherClosed`` at the abnormal close (a ``BaseException``
    from ``fn``, the owner's cancellation), at entry after any close, or, waiting for
    queue room, at the normal close. Batches that ended at the instant of an abnormal
    close may go either way. So "nobody else gets an error" and "later callers still
    complete after a failure" (11) are both exact here.
    """
    cfg = facts.cfg
    for rec in run.callers:
        assert len(rec.outcomes) == 1, f"caller {rec.index} had outcomes {rec.outcomes}"
        out, plan, s = rec.outcome, rec.plan, rec.submit
        deadline = None if plan.cancel_after_ms is None else s + us(plan.cancel_after_ms)
        label = f"caller {rec.index} {plan}"
        if out.kind == "cancelled":
            assert deadline is not None, f"{label}: cancelled, yet nobody cancelled it"
            assert out.at == deadline, f"{label}: cancelled at {out.at} µs"
            continue
        if deadline is not None:
            assert out.at <= deadline, f"{label}: outcome after its own cancellation"
        if out.kind == "rejected":
            assert not plan.wait, f"{label}: QueueFull for a call that may wait"
            assert cfg.max_queue_size is not None, f"{label}: QueueFull without a bound"
            assert out.at == s, f"{label}: QueueFull after waiting"
            assert facts.t_close is None or s <= facts.t_close, (
                f"{label}: QueueFull instead of BatcherClosed after the close"
            )
            continue
        fates = [facts.where.get(item) for item in plan.items]
        finished = all(f is not None and f[0].finished for f in fates)
        natural: tuple[str, Any] | None = None
        if finished:
            natural = ("result", None)
            for item, fate in zip(plan.items, fates, strict=True):
                assert fate is not None
                batch = fate[0]
                if batch.plan.outcome == "item_failure":
                    if item in batch.item_errors:
                        natural = ("item", batch.item_errors[item])
                        break
                elif batch.plan.outcome != "ok":
                    natural = ("error", batch)
                    break
        either = (
            finished
            and facts.t_abn is not None
            and any(f is not None and f[0].end >= facts.t_abn for f in fates)
        )
        if natural is not None and not (either and _is_closed(out)):
            _check_natural(rec, natural, label)
            continue
        # BatcherClosed is the only outcome left: was it justified?
        assert _is_closed(out), (
            f"{label}: expected BatcherClosed (items not all finished: "
            f"{[(f[0].index, f[0].status) if f else None for f in fates]}), got {out}"
        )
        processed = any(f is not None for f in fates)
        t_abn, t_norm = facts.t_abn, run.t_norm
        ok = (t_abn is not None and out.at == max(s, t_abn)) or (
            t_norm is not None
            and not processed
            and (
                (s >= t_norm and out.at == s)
                or (cfg.max_queue_size is not None and s <= t_norm and out.at == t_norm)
            )
        )
        assert ok, (
            f"{label}: BatcherClosed at {out.at} µs (sent {s}) is unexplained: abnormal close "
            f"at {t_abn}, normal close at {t_norm}, processed={processed}"
        )
        if (
            facts.t_boom is not None
            and facts.t_cancel is None
            and s < facts.t_boom
            and out.at == facts.t_boom
            and (t_norm is None or t_norm > facts.t_boom)
        ):
            cause = out.value.__cause__
            assert any(cause is batch.exc for batch in facts.booms), (
                f"{label}: BatcherClosed not chained to the BaseException from fn: {cause!r}"
            )


def _is_closed(out: Outcome) -> bool:
    return out.kind == "error" and type(out.value) is batched.BatcherClosed


def _check_natural(rec: CallerRec, natural: tuple[str, Any], label: str) -> None:
    out = rec.outcome
    kind, batch = natural
    if kind == "result":
        want: Any = ("r", rec.plan.items[0])
        if rec.n > 1:
            want = [("r", item) for item in rec.plan.items]
        assert out.kind == "result", f"{label}: expected a result, got {out}"
        assert out.value == want, f"{label}: got {out.value!r}, its own is {want!r}"
        return
    if kind == "item":
        assert out.kind == "error", f"{label}: expected its own Failure's {batch!r}, got {out}"
        assert out.value is batch, f"{label}: expected its own {batch!r}, got {out.value!r}"
        return
    exc_type, exc_object = expected_error(batch)
    assert out.kind == "error", f"{label}: expected {exc_type.__name__} from batch {batch.index}"
    got = out.value
    assert type(got) is exc_type, (
        f"{label}: expected {exc_type.__name__} from batch {batch.index} "
        f"({batch.plan.outcome}), got {got!r}"
    )
    if exc_object is not None:
        assert got is exc_object, f"{label}: got another batch's exception {got!r}"
    if isinstance(got, batched.BatchSizeMismatch):
        assert got.expected == len(batch.items), f"{label}: {got} for batch {batch.items}"
        assert got.got == len(batch.items) + (1 if batch.plan.outcome == "long" else -1)


def check_wait_bound(run: ScriptRun, facts: Facts) -> None:
    """5: an item waits at most ``timeout`` plus the time every slot was busy.

    Argument: once an item x has waited ``timeout`` the oldest waiting item has too, so
    whenever a slot is free a batch is cut at once; each cut takes the first item in the
    cut order. In plain arrival order (Fifo, or one key under ByLength/ByPriority, and
    all calls in one pool class: at most or above ``small_batch_threshold`` items) the
    items before x leave first, so every free moment after ``arrival + timeout`` would
    have taken x. Otherwise, once x has also waited ``max_wait`` it is overdue and only
    older (overdue) items go first: the bound is ``max(timeout, max_wait)``.

    Only with ``max_queue_size=None``: an item's arrival (its acceptance) is then the
    moment it was sent, which the test sees. "Leaves" is the start of its batch, or its
    caller's outcome for an item that never reached ``fn``.
    """
    cfg = facts.cfg
    if cfg.max_queue_size is not None:
        return
    keys = {facts.key(rec, j) for rec in run.callers for j in range(rec.n)}
    bound = facts.timeout if len(keys) == 1 else max(facts.timeout, facts.max_wait)
    for rec in run.callers:
        for item in rec.plan.items:
            fate = facts.where.get(item)
            left = fate[0].start if fate is not None else rec.outcome.at
            busy = facts.busy_between(rec.submit, left)
            assert left - rec.submit <= bound + busy, (
                f"item {item} (caller {rec.index}) sent at {rec.submit} µs left at {left} µs: "
                f"waited {left - rec.submit} > bound {bound} + busy {busy} (busy intervals "
                f"{facts.busy})"
            )


def check_no_premature(run: ScriptRun, facts: Facts) -> None:
    """6: a batch leaves before its oldest item waited ``timeout`` only when full.

    At the start ``d`` of a batch (before any close, which drains at once), the pool the
    batch was cut from is a subset of W: items sent at or before ``d``, not refused,
    whose caller had no outcome before ``d``, not in a batch started before ``d``. If W
    holds fewer than ``batch_size`` items and less than ``max_batch_length`` in length,
    the cut can only have been the timeout's, so some item of W was sent at least
    ``timeout`` before ``d`` (its arrival is no earlier than its sending). Valid for
    every strategy, many() and queue room alike.
    """
    cfg = facts.cfg
    for batch in run.batches:
        d = batch.start
        if facts.t_close is not None and d >= facts.t_close:
            continue
        waiting = [
            (rec, item)
            for rec in run.callers
            if rec.submit <= d and rec.outcome.kind != "rejected" and rec.outcome.at >= d
            for item in rec.plan.items
            if not (item in facts.where and facts.where[item][0].start < d)
        ]
        count = len(waiting)
        length = sum(run.lengths[item] for _, item in waiting)
        if count >= cfg.batch_size or length >= facts.max_len:
            continue
        oldest = min(rec.submit for rec, _ in waiting)
        assert d - oldest >= facts.timeout, (
            f"batch {batch.index} {batch.items} left at {d} µs, not full ({count} items, "
            f"length {length} waiting), oldest sent at {oldest} µs: under timeout "
            f"{facts.timeout} µs"
        )


def check_no_idle_slot(run: ScriptRun, facts: Facts) -> None:
    """5 (exact form): no execution slot stays free while a batch is due.

    Once everything at an instant ``t`` has happened, if some slot is free (fewer batch
    functions running than ``max_concurrent_batches``), the items certainly waiting must
    not make a batch due: fewer than ``batch_size``, less than ``max_batch_length`` in
    length, none sent ``timeout`` ago or more. Certainly waiting: the call was accepted
    when sent (``Facts.accepted_at_once``), sent at or before ``t``, the item reached no
    batch by ``t`` and its caller still waits after ``t``. The instants are every
    recorded event and every ``submit + timeout``; only before an abnormal close. Valid
    in every configuration; it catches a full batch left waiting for its timeout too.
    """
    cfg = facts.cfg
    instants = {batch.start for batch in run.batches} | {batch.end for batch in run.batches}
    for rec in run.callers:
        instants |= {rec.submit, rec.outcome.at, rec.submit + facts.timeout}
    for t in sorted(instants):
        if facts.t_abn is not None and t >= facts.t_abn:
            break
        if facts.running_after(t) >= cfg.max_concurrent_batches:
            continue
        waiting = [
            (rec, item)
            for rec in run.callers
            if facts.accepted_at_once(rec) and rec.submit <= t < rec.outcome.at
            for item in rec.plan.items
            if not facts.dispatched_by(item, t)
        ]
        if not waiting:
            continue
        length = sum(run.lengths[item] for _, item in waiting)
        oldest = min(rec.submit for rec, _ in waiting)
        assert len(waiting) < cfg.batch_size, (
            f"at {t} µs a slot is free and {len(waiting)} items wait "
            f"({[item for _, item in waiting]}), yet no batch left"
        )
        assert length < facts.max_len, (
            f"at {t} µs a slot is free and items of length {length} wait "
            f"({[item for _, item in waiting]}), yet no batch left"
        )
        assert t - oldest < facts.timeout, (
            f"at {t} µs a slot is free and an item sent at {oldest} µs waited past the "
            f"timeout ({[item for _, item in waiting]}), yet no batch left"
        )


def check_rule_order(run: ScriptRun, facts: Facts) -> None:
    """7 (the rules of cutting): overdue first, then small calls, then the strategy.

    For a batch starting at ``d`` and an item x certainly in the pool at the cut
    (accepted when sent, sent before ``d``, in no batch started by ``d``, its caller
    still there after ``d``), no item y of the batch may come after x in rule order:
    - x had waited more than ``max_wait_ms`` (overdue) and y arrived after x;
    - y had not waited ``max_wait_ms`` even counted from its sending (so it was cut by
      the strategy, not as overdue) and x ranks before y: a small call's item before a
      larger call's, then the strategy's key, then arrival.
    A cut never skips an item: it stops at the first that does not fit. Only before an
    abnormal close; every configuration.
    """
    for batch in run.batches:
        d = batch.start
        if facts.t_abn is not None and d >= facts.t_abn:
            continue
        pool = [
            (rec, j)
            for rec in run.callers
            if facts.accepted_at_once(rec) and rec.submit < d < rec.outcome.at
            for j, item in enumerate(rec.plan.items)
            if not facts.dispatched_by(item, d)
        ]
        for y in batch.items:
            yrec = run.owner[y]
            yj = yrec.plan.items.index(y)
            y_rank = facts.rank(yrec, yj)
            y_fresh = d - yrec.submit < facts.max_wait
            for xrec, xj in pool:
                x = xrec.plan.items[xj]
                if d - xrec.submit > facts.max_wait and (xrec.enter_seq, xj) < (
                    yrec.enter_seq,
                    yj,
                ):
                    raise AssertionError(
                        f"batch {batch.index} at {d} µs took item {y} (sent at "
                        f"{yrec.submit} µs) over the overdue item {x} sent at {xrec.submit} µs"
                    )
                if y_fresh:
                    assert not facts.rank(xrec, xj) < y_rank, (
                        f"batch {batch.index} at {d} µs took item {y} (rank {y_rank}) "
                        f"before item {x} (rank {facts.rank(xrec, xj)}) that waited"
                    )


def check_order(run: ScriptRun, facts: Facts) -> None:
    """7: items with one key leave in arrival order, also after a budget deferral.

    The key is (pool class, strategy key): the small-call rule orders the two pool
    classes, the strategy orders keys, overdue items go in arrival order and are older
    than every item with the same key behind them, and a cut stops at (never skips) an
    item over the budget. Arrival order is the order of entering ``b()``: a call waiting
    for room is granted in that order and makes later calls wait too. Batches that start
    at one instant were cut in some order the test cannot see: they are put in the order
    of their earliest item, which a correct cut sequence satisfies.
    """
    groups: dict[Any, list[tuple[BatchRec, tuple[int, int]]]] = {}
    for batch in run.batches:
        for item in batch.items:
            rec = run.owner[item]
            j = rec.plan.items.index(item)
            groups.setdefault(facts.key(rec, j), []).append((batch, (rec.enter_seq, j)))
    for key, members in groups.items():
        per_batch: dict[int, list[tuple[int, int]]] = {}
        starts: dict[int, int] = {}
        for batch, order in members:
            per_batch.setdefault(batch.index, []).append(order)
            starts[batch.index] = batch.start
        sequence: list[tuple[int, int]] = []
        for index in sorted(per_batch, key=lambda i: (starts[i], min(per_batch[i]))):
            sequence += per_batch[index]
        assert sequence == sorted(sequence), (
            f"key {key}: items left out of arrival order: "
            f"{[(index, per_batch[index]) for index in sorted(per_batch)]}"
        )


def check_queue(run: ScriptRun, facts: Facts) -> None:
    """9: the queue bound and rejections, against the records.

    The reported ``queue_size`` (items accepted, not yet cut) is bounded above by the
    items sent, not refused, whose caller had no outcome yet and which were not in a
    batch that had started (cancelled entries must free their room at once). Below, by
    the items certainly accepted at once (no queue bound, or the queue was empty when
    they were sent) that are still in no batch and whose caller is still there, away
    from instants where a batch started or a caller left, and before an abnormal close.
    With ``max_queue_size`` the queue never holds more, save one call larger than the
    bound accepted into an empty queue; ``QueueFull`` only when the call did not fit or
    another call waited for room, and always then (``wait=False``).
    """
    cfg = facts.cfg
    limit = None
    if cfg.max_queue_size is not None:
        limit = max(cfg.max_queue_size, max(rec.n for rec in run.callers))
    for sample in run.samples:
        k, t = sample.seq, sample.at
        upper = lower = 0
        lower_known = facts.t_abn is None or t < facts.t_abn
        for rec in run.callers:
            if rec.enter_seq < 0 or rec.enter_seq > k or rec.outcome.kind == "rejected":
                continue
            if rec.outcome.seq < k:
                continue
            uncut = [
                item
                for item in rec.plan.items
                if not (item in facts.where and facts.where[item][0].start_seq < k)
            ]
            upper += len(uncut)
            accepted_at_once = (cfg.max_queue_size is None or rec.q_before == 0) and not (
                facts.closed_at_entry(rec)
            )
            if accepted_at_once and rec.outcome.at != t:
                lower += sum(
                    1
                    for item in uncut
                    if not (item in facts.where and facts.where[item][0].start == t)
                )
        assert sample.queue_size <= upper, (
            f"queue_size {sample.queue_size} at {t} µs ({sample.where}) exceeds the {upper} "
            f"items that can be waiting"
        )
        if lower_known:
            assert sample.queue_size >= lower, (
                f"queue_size {sample.queue_size} at {t} µs ({sample.where}) is under the "
                f"{lower} items certainly waiting"
            )
        if limit is not None:
            assert sample.queue_size <= limit, (
                f"queue_size {sample.queue_size} at {t} µs ({sample.where}) > {limit}"
            )
            if lower_known:
                assert lower <= limit, f"{lower} items certainly waiting at {t} µs > {limit}"
    if cfg.max_queue_size is None:
        return
    # Who may have waited for room: a call that did not fit, or came while one such
    # waited (room is granted in order). Still there, and with nothing in a batch yet.
    possible_room: list[CallerRec] = []

    def waited_then(at_seq: int) -> list[int]:
        return [
            other.index
            for other in possible_room
            if other.enter_seq < at_seq < other.outcome.seq
            and not any(
                item in facts.where and facts.where[item][0].start_seq < at_seq
                for item in other.plan.items
            )
        ]

    for rec in sorted(run.callers, key=lambda rec: rec.enter_seq):
        if rec.enter_seq < 0 or rec.outcome.kind == "rejected" or facts.closed_at_entry(rec):
            continue
        q, n = rec.q_before, rec.n
        if rec.plan.wait and q > 0 and (q + n > cfg.max_queue_size or waited_then(rec.enter_seq)):
            possible_room.append(rec)
    for rec in run.callers:
        if rec.plan.wait or facts.closed_at_entry(rec):
            continue
        q, n = rec.q_before, rec.n
        label = f"caller {rec.index} ({n} items, queue_size {q} of {cfg.max_queue_size})"
        if rec.outcome.kind != "rejected":
            assert q == 0 or q + n <= cfg.max_queue_size, f"{label}: accepted, did not fit"
            continue
        assert q > 0, f"{label}: QueueFull with an empty queue"
        if q + n <= cfg.max_queue_size:
            assert waited_then(rec.enter_seq), (
                f"{label}: QueueFull though it fit and nobody waited for room"
            )


def check_stats(run: ScriptRun, facts: Facts) -> None:
    """10: the final stats add up, item by item, to what the callers got."""
    stats = run.stats
    assert stats is not None
    tally = {"result": 0, "error": 0, "cancelled": 0, "rejected": 0}
    for rec in run.callers:
        tally[rec.outcome.kind] += rec.n
    got = (stats.submitted, stats.completed, stats.failed, stats.cancelled, stats.rejected)
    want = (
        sum(tally.values()),
        tally["result"],
        tally["error"],
        tally["cancelled"],
        tally["rejected"],
    )
    assert got == want, f"stats (submitted, completed, failed, cancelled, rejected) {got} != {want}"
    assert stats.submitted == stats.completed + stats.failed + stats.cancelled + stats.rejected
    assert stats.queue_size == 0
    finished = [batch for batch in run.batches if batch.finished]
    assert len(finished) <= stats.total_batches <= len(run.batches)
    assert (
        sum(len(b.items) for b in finished)
        <= stats.total_processed
        <= sum(len(b.items) for b in run.batches)
    )


CHECKS = (
    check_exit,
    check_batches,
    check_processing,
    check_outcomes,
    check_wait_bound,
    check_no_premature,
    check_no_idle_slot,
    check_rule_order,
    check_order,
    check_queue,
    check_stats,
)


def run_and_check(script: Script, backend: str) -> None:
    run = ScriptRun(script)
    run.run(backend)
    facts = Facts(run)
    for check in CHECKS:
        check(run, facts)


# The owner cancelled at the instant it enters: `__aenter__` itself is cancelled, and
# the callers then find the batcher closed. Before a5811b7 this left the engine's
# intake streams unclosed (ResourceWarning): kept as an explicit case.
CANCELLED_ON_ENTRY = Script(
    config=Config(
        batch_size=1,
        timeout_ms=0,
        max_batch_length=None,
        max_queue_size=None,
        strategy=batched.Fifo(),
        max_concurrent_batches=1,
        small_batch_threshold=0,
        max_wait_ms=0,
    ),
    callers=(CallerPlan(0, (0,), (1,), 0, None, True),),
    batches=(),
    close=ClosePlan(kind="cancel", at_ms=0),
)


# pytest-timeout's 120 s guard is for hangs in real time; a failing example can take
# longer than that to shrink, and the virtual fail_after already catches hangs.
def _profile_examples() -> int:
    profile = settings.default
    assert profile is not None  # tests/conftest.py loads one
    return profile.max_examples


# At least 500 examples per backend in CI (the `dev` profile may ask for fewer).
CORE_EXAMPLES = (
    _profile_examples()
    if os.environ.get("HYPOTHESIS_PROFILE") == "dev"
    else max(500, _profile_examples())
)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", BACKENDS)
@settings(deadline=None, max_examples=CORE_EXAMPLES)
@given(script=scripts())
@example(script=CANCELLED_ON_ENTRY)
def test_script_keeps_invariants(backend: str, script: Script) -> None:
    run_and_check(script, backend)


# `-m long`: 20,000 examples per backend, larger scripts (about an hour).
@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(7200)
@pytest.mark.parametrize("backend", BACKENDS)
@settings(deadline=None, max_examples=20_000)
@given(script=scripts(max_callers=30, max_batches=30))
def test_script_keeps_invariants_long(backend: str, script: Script) -> None:
    run_and_check(script, backend)


# -- the checks can fail ---------------------------------------------------------------

# Fifo, batch_size 3, timeout 5 ms: callers 0 and 1 (two items) fill a batch at 0 ms
# that runs 1 ms; caller 2 comes at 1 ms and leaves alone at its timeout, 6 ms.
KNOWN = Script(
    config=Config(
        batch_size=3,
        timeout_ms=5,
        max_batch_length=None,
        max_queue_size=None,
        strategy=batched.Fifo(),
        max_concurrent_batches=1,
        small_batch_threshold=0,
        max_wait_ms=1000,
    ),
    callers=(
        CallerPlan(0, (0,), (1,), 0, None, True),
        CallerPlan(0, (10, 11), (1, 1), 0, None, True),
        CallerPlan(1, (20,), (1,), 0, None, True),
    ),
    batches=(BatchPlan(1, "ok"), BatchPlan(1, "ok")),
    close=None,
)


def _shift(run: ScriptRun, index: int, by_us: int) -> None:
    batch = run.batches[index]
    batch.start += by_us
    batch.end += by_us
    outcome = run.owner[batch.items[0]].outcome
    outcome.at += by_us


def _misdeliver(run: ScriptRun) -> None:
    a, b = run.callers[0].outcome, run.callers[2].outcome
    a.value, b.value = b.value, a.value


def _swap_first_batch(run: ScriptRun) -> None:
    items = run.batches[0].items
    run.batches[0].items = (items[1], items[0], items[2])


TAMPERS: list[tuple[str, Any, Any, str]] = [
    ("misdelivered result", _misdeliver, check_outcomes, "its own is"),
    (
        "batch over batch_size",
        lambda r: setattr(r.batches[0], "items", (0, 10, 11, 20)),
        check_batches,
        "has 4 items",
    ),
    (
        "item processed twice",
        lambda r: setattr(r.batches[1], "items", (20, 0)),
        check_processing,
        "twice",
    ),
    ("premature batch", lambda r: _shift(r, 1, -3000), check_no_premature, "under timeout"),
    ("late batch", lambda r: _shift(r, 1, +2000), check_wait_bound, "waited"),
    ("slot idle while due", lambda r: _shift(r, 1, +2000), check_no_idle_slot, "no batch left"),
    ("arrival order", _swap_first_batch, check_order, "out of arrival order"),
    (
        "stats",
        lambda r: setattr(r, "stats", attrs.evolve(r.stats, completed=0)),
        check_stats,
        "stats",
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_script_passes_every_check(backend: str) -> None:
    run = ScriptRun(KNOWN)
    run.run(backend)
    # Callers 0 and 1 both come at 0 ms: trio starts them in either order.
    assert [(b.start, sorted(b.items)) for b in run.batches] == [(0, [0, 10, 11]), (6000, [20])]
    facts = Facts(run)
    for check in CHECKS:
        check(run, facts)


@pytest.mark.parametrize(("name", "tamper", "check", "match"), TAMPERS, ids=[t[0] for t in TAMPERS])
def test_checks_catch_a_wrong_record(name: str, tamper: Any, check: Any, match: str) -> None:
    """No check is vacuous: each fails on a record of the known run made wrong."""
    run = ScriptRun(KNOWN)
    run.run("trio")
    tamper(run)
    with pytest.raises(AssertionError, match=match):
        check(run, Facts(run))
