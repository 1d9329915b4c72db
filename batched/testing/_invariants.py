"""``check_invariants``: what must hold of every run of :func:`run_schedule`.

Each check names the invariant of the library's TESTING.md it covers (1-12); the outcomes
of the callers are in ``_outcomes``, the timing in ``_timing``, the order of the cut in
``_order``, the queue in ``_queue``.
Where two events share an instant their order is unknown to a check unless their
sequence numbers tell it, and the check allows both orders.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from .._errors import QueueFull
from ._keyed import check_keyed
from ._order import check_arrival_order, check_rule_order
from ._outcomes import check_outcomes
from ._player import HANG_GUARD_S
from ._queue import check_admission, check_queue_size, replay
from ._records import PlannedError, item_key
from ._timing import check_concurrency, check_no_idle_slot, check_no_premature, check_wait_bound
from ._view import View, fail, got, label, us

if TYPE_CHECKING:
    from ._records import ScheduleResult

__all__ = ["check_invariants"]


def check_invariants(result: ScheduleResult) -> None:
    """Check what must hold of every run of :func:`run_schedule`.

    The run ended cleanly (no hang, no task left, nothing reported to asyncio's
    exception handler, the run's event loop not kept; out of ``async with`` came only
    what the schedule or ``fn`` raised, unchanged); every caller got exactly one outcome,
    the one the calls of ``fn`` imply, at the instant they imply: its own results in
    order, or the exception of its first failing item, or its cancellation, ``QueueFull``
    or ``BatcherClosed`` when due; no item processed twice (a retry under
    ``isolate_errors`` aside) nor after its caller left; no batch over ``batch_size`` or
    ``max_batch_length`` (an oversize item alone aside), no more batches at once than
    ``max_concurrent_batches``; no batch left before it was due, no slot idle while a
    batch was due, no item waited longer than ``timeout_ms`` plus the time every slot
    was busy; items left in the order of the cut's rules (overdue, small calls, the
    strategy, arrival); the queue never held more than ``max_queue_size`` and
    ``QueueFull`` came only when due; the stats add up (``total_batches`` and
    ``total_processed`` count every call of ``fn`` that returned or raised an
    ``Exception``, each retry under ``isolate_errors`` too).

    With a cache or dedupe, equal items share one computation, and the record is judged
    by keys instead: each result comes from a call of ``fn`` that computed the caller's
    key, in flight when the caller came unless a cache served it; no key computed twice
    in one batch under dedupe, nor again once cached; the rest as above where it applies
    (clean exit, outcomes, batch sizes, stats).

    :raises AssertionError: naming the first offending caller or batch
    """
    _check_exit(result)
    view = View(result)
    if view.shared:  # a cache or dedupe: judged by keys
        for keyed in (_check_block, _check_batches, check_concurrency, check_keyed):
            keyed(view)
        return
    if result.queue_sizes:
        view.accepted_at = replay(view, strict=False)
    for check in (
        _check_block,
        _check_processing,
        _check_batches,
        check_concurrency,
        check_outcomes,
        check_no_premature,
        check_wait_bound,
        check_no_idle_slot,
        check_rule_order,
        check_arrival_order,
        check_admission,
        check_queue_size,
        _check_stats,
    ):
        check(view)


def _check_exit(r: ScheduleResult) -> None:
    """1 (no hang) and 12 (a clean exit)."""
    missing = [c.index for c in r.callers if c.kind == "missing"]
    if r.hung:
        fail(
            f"hang: after {HANG_GUARD_S:.0f} s of virtual time callers {missing} still had no "
            f"outcome; batches so far: {[(b.index, b.items) for b in r.batches]}"
        )
    if missing:
        fail(f"callers {missing} never got an outcome")
    if r.loop_errors:
        fail(f"reported while the run closed: {list(r.loop_errors)}")
    if r.tasks_left != 0:
        fail(f"{r.tasks_left} tasks left running after the batcher closed")
    if r.loop_released is False:
        fail("the batcher kept its finished run's event loop alive")


def _leaves(exc: BaseException) -> list[BaseException]:
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]


def _check_block(v: View) -> None:
    """8 (what leaves ``async with``): a ``BaseException`` from ``fn`` (alone or in an
    exception group), the owner's own error unchanged, nothing else; the owner's
    cancellation propagates; an interrupted block ends at once."""
    r, escaped = v.r, v.r.escaped
    if v.booms:
        if escaped is None:
            fail("a BaseException from fn did not leave `async with`")
        if not all(any(leaf is b.error for b in v.booms) for leaf in _leaves(escaped)):
            fail(f"`async with` raised {escaped!r}, not the BaseException from fn")
    elif v.t_raise is not None:
        if not (type(escaped) is PlannedError and escaped.batch is None):
            fail(f"`async with` raised {escaped!r}, not the owner's PlannedError(None)")
    elif escaped is not None:
        fail(f"`async with` raised {escaped!r}")
    if v.driven or v.t_norm is not None:
        return
    # The body was interrupted: closing takes no time.
    if v.t_abn is None:
        fail("the block's body was interrupted for no reason")
    if r.block_ended_ms is None or us(r.block_ended_ms) != v.t_abn:
        fail(f"the block closed at {v.t_abn / 1000} ms but ended at {r.block_ended_ms} ms")
    if v.t_cancel is not None and not v.booms and not r.owner_cancelled:
        fail("the owner's cancellation did not propagate out of `async with`")


def _check_batches(v: View) -> None:
    """4: no batch is empty or over ``batch_size``; none over ``max_batch_length`` unless
    alone."""
    for batch in v.r.batches:
        n = len(batch.items)
        if not 1 <= n <= v.batch_size:
            fail(f"batch {batch.index} has {n} items (batch_size={v.batch_size}): {batch.items!r}")
        lengths = [v.length(item) for item in batch.items if item_key(item) in v.owner]
        if n > 1 and None not in lengths:
            total = sum(length for length in lengths if length is not None)
            if total > v.max_len:
                fail(
                    f"batch {batch.index} {batch.items!r} has length {total} > "
                    f"max_batch_length={v.max_len}"
                )


def _check_processing(v: View) -> None:
    """3: every item fn got was sent, once (a retry under ``isolate_errors`` aside), after
    it was sent, and before its caller left or was refused."""
    if v.unknown:
        batch, item = v.unknown[0]
        fail(
            f"batch {batch.index} got an item nobody sent: {item!r} (batcher_factory must "
            f"hand fn the items as sent)"
        )
    for key, calls in v.calls.items():
        c, j = v.owner[key]
        item = c.arrival.items[j]
        for prev, later in itertools.pairwise(calls):
            if later.retry_of != prev.index:
                fail(
                    f"item {item!r} of {label(c)} processed twice: in batches "
                    f"{[b.index for b in calls]}"
                )
        first = calls[0]
        start = us(first.start_ms)
        if isinstance(c.exception, QueueFull):
            fail(f"{label(c)} got QueueFull, yet its item {item!r} went to batch {first.index}")
        if us(c.submitted_ms) > start:
            fail(f"item {item!r} reached fn (batch {first.index}) before {label(c)} sent it")
        if c.done_ms is None or us(c.done_ms) < start:
            fail(
                f"{label(c)} got {got(c)} at {c.done_ms} ms, yet its item {item!r} reached fn "
                f"later, in batch {first.index} at {first.start_ms} ms"
            )


def _check_stats(v: View) -> None:
    """10: the final stats add up, item by item, to what the callers got and fn saw."""
    stats = v.r.stats
    tally = {"completed": 0, "failed": 0, "cancelled": 0, "rejected": 0}
    for c in v.r.callers:
        n = len(c.arrival.items)
        if c.kind == "result":
            tally["completed"] += n
        elif c.kind == "cancelled":
            tally["cancelled"] += n
        elif isinstance(c.exception, QueueFull):
            tally["rejected"] += n
        else:
            tally["failed"] += n
    counted = {name: getattr(stats, name) for name in tally}
    if counted != tally:
        fail(f"stats {counted} do not match what the callers got: {tally}")
    if stats.submitted != sum(tally.values()):
        fail(f"stats.submitted {stats.submitted} != {sum(tally.values())} items sent")
    if stats.queue_size != 0:
        fail(f"stats.queue_size {stats.queue_size} after the run")
    # Every run of fn counts once it is done (it returned or raised an Exception), each
    # retry under isolate_errors too. One that ended at the instant of an abnormal close,
    # and not before it in the record's order, may count or not.
    done = [b for b in v.r.batches if b.finished and not v.after_close(b)]
    either = [b for b in v.r.batches if b.finished and v.after_close(b)]
    low = (len(done), sum(len(b.items) for b in done))
    high = (low[0] + len(either), low[1] + sum(len(b.items) for b in either))
    totals = (stats.total_batches, stats.total_processed)
    if not (low[0] <= totals[0] <= high[0] and low[1] <= totals[1] <= high[1]):
        want = low if low == high else f"{low} to {high}"
        fail(f"stats (total_batches, total_processed) {totals} != {want}: the batches fn finished")
