"""When batches leave (invariants 5 and 6): never before they are due, never later.

All times in integer µs; every planned time is a whole number of milliseconds, so
events that coincide in the plan share a timestamp exactly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .._errors import QueueFull
from ._view import fail, us

if TYPE_CHECKING:
    from ._view import View

__all__ = ["check_concurrency", "check_no_idle_slot", "check_no_premature", "check_wait_bound"]


def check_concurrency(v: View) -> None:
    """No more calls of ``fn`` at once than ``max_concurrent_batches``."""
    events = sorted(
        [(start, +1) for start, end, _ in v.spans if end > start]
        + [(end, -1) for start, end, _ in v.spans if end > start]
    )  # ends before starts at one instant
    running = 0
    for at, delta in events:
        running += delta
        if running > v.slots:
            fail(f"at {at / 1000} ms {running} batches run (max_concurrent_batches={v.slots})")


def check_no_premature(v: View) -> None:
    """6: a batch leaves before its oldest item waited ``timeout_ms`` only when full, or
    early for a waiting caller's deadline (see ``_for_deadline``).

    At a batch's start ``d`` (before any close, which drains at once), the pool it was
    cut from is within W: items sent by ``d``, not refused, in no earlier batch, whose
    caller was still there at ``d``. If W holds fewer than ``batch_size`` items and less
    than ``max_batch_length``, the timeout cut it, so some item of W was sent at least
    ``timeout`` before ``d`` (its arrival is no earlier than its sending). With
    ``timeout_ms="auto"`` any wait up to its cap is allowed: nothing to check.
    """
    if v.auto:
        return
    for batch in v.top:
        d = us(batch.start_ms)
        if v.t_close is not None and d >= v.t_close:
            continue
        waiting = [
            (c, item)
            for c in v.r.callers
            if us(c.submitted_ms) <= d
            and not isinstance(c.exception, QueueFull)
            and c.done_ms is not None
            and us(c.done_ms) >= d
            for item in c.arrival.items
            if not v.dispatched_by(item, d, strictly=True)
        ]
        lengths = [v.length(item) for _, item in waiting]
        length = math.inf if None in lengths else sum(x for x in lengths if x is not None)
        if not waiting or len(waiting) >= v.batch_size or length >= v.max_len:
            continue
        oldest = min(us(c.submitted_ms) for c, _ in waiting)
        if d - oldest < v.timeout and not _for_deadline(v, d, [c for c, _ in waiting]):
            fail(
                f"batch {batch.index} {batch.items!r} left at {batch.start_ms} ms, not full "
                f"({len(waiting)} items of length {length} waiting), its oldest item sent at "
                f"{oldest / 1000} ms: before timeout_ms={v.timeout / 1000}"
            )


def _for_deadline(v: View, d: int, waiting: list[Any]) -> bool:
    """Whether a partial batch leaving at ``d`` may have left early for a caller's
    deadline (its cancel scope's): one of the callers waiting has a deadline, and the
    batch left no earlier than that deadline less what fn may be expected to take (a
    generous bound: twice its longest run so far, per item of a full batch) and the
    margin."""
    deadlines = [
        us(c.submitted_ms) + us(c.arrival.cancel_after_ms)
        for c in waiting
        if c.arrival.cancel_after_ms is not None
    ]
    if not deadlines:
        return False
    longest = max((end - start for start, end, _ in v.spans if end <= d), default=0)
    slack = 2 * longest * v.batch_size + us(2)
    return d >= min(deadlines) - slack


def check_no_idle_slot(v: View) -> None:
    """5 (exact form): no execution slot stays free while a batch is due.

    Once everything at an instant has happened, if fewer calls of fn run than
    ``max_concurrent_batches``, the items certainly waiting (accepted when sent, or on a
    stepped run when the admission rule let them in; in no batch yet, caller still
    there, not dropped for its deadline) are fewer than ``batch_size``, under
    ``max_batch_length``, and none was sent ``timeout_ms`` ago or more. The instants are
    every recorded event and every arrival plus ``timeout_ms``, before an abnormal close.
    Once the block ended normally every waiting item is due: the batcher drains.
    Caller-driven, the waiting callers cut the batches: only an instant where one of
    them runs no batch counts (a documented limit).
    """
    instants = {t for start, end, _ in v.spans for t in (start, end)}
    instants |= set() if v.t_norm is None else {v.t_norm}
    for c in v.r.callers:
        if c.done_ms is not None:
            s = us(c.submitted_ms)
            arrived = v.arrival(c)
            instants |= {s, us(c.done_ms)}
            instants |= set() if arrived is None else {arrived, arrived + v.timeout}
    for t in sorted(instants):
        if v.t_abn is not None and t >= v.t_abn:
            break
        running = v.running_after(t)
        if len(running) >= v.slots:
            continue
        waiting = [
            (c, item, arrived)
            for c in v.r.callers
            if (arrived := v.arrival(c)) is not None
            and c.done_ms is not None
            and arrived <= t < us(c.done_ms)
            for item in c.arrival.items
            if not v.dispatched_by(item, t) and not v.dropped_by(c, item, t)
        ]
        if v.driven and all(c.task in running for c, _, _ in waiting):
            continue
        if not waiting:
            continue
        lengths = [v.length(item) for _, item, _ in waiting]
        length = sum(x for x in lengths if x is not None)
        oldest = min(arrived for _, _, arrived in waiting)
        items = [item for _, item, _ in waiting]
        where = f"at {t / 1000} ms a slot is free and items {items!r} wait, yet no batch left"
        if v.t_norm is not None and t >= v.t_norm:
            fail(f"{where} while the batcher drains (its block ended at {v.t_norm / 1000} ms)")
        if len(waiting) >= v.batch_size:
            fail(f"{where} (batch_size={v.batch_size})")
        if length >= v.max_len:
            fail(f"{where} (length {length}, max_batch_length={v.max_len})")
        if t - oldest >= v.timeout:
            fail(f"{where} (the oldest sent at {oldest / 1000} ms, timeout_ms={v.timeout / 1000})")


def check_wait_bound(v: View) -> None:
    """5: an item waits at most ``timeout_ms`` plus the time every slot was busy.

    Once an item x has waited ``timeout`` the oldest waiting item has too, so whenever a
    slot is free a batch is cut at once, taking the first item in the cut order. In
    plain arrival order (one strategy key, all calls on one side of
    ``small_batch_threshold``) the items before x leave first, so every free moment
    after ``arrival + timeout`` would have taken x. Otherwise, once x has also waited
    ``max_wait_ms`` it is overdue and only older items go first: the bound is
    ``max(timeout, max_wait)``. Caller-driven, the time its own caller runs a batch
    counts as busy too.

    Only without ``max_queue_size``: an item's arrival (its acceptance) is then the
    moment it was sent, which the record shows. "Leaves" is the start of its first
    batch, or its caller's outcome for an item that never reached ``fn``.
    """
    if v.max_queue is not None:
        return
    keys = {v.key(c, j) for c in v.r.callers for j in range(len(c.arrival.items))}
    plain = v.ordered and len(keys) == 1
    bound = v.timeout if plain else max(v.timeout, v.max_wait)
    for c in v.r.callers:
        if c.done_ms is None:
            continue
        s = us(c.submitted_ms)
        for item in c.arrival.items:
            first = v.first(item)
            left = us(first.start_ms) if first is not None else us(c.done_ms)
            busy = v.stalled_between(c, s, left)
            if left - s > bound + busy:
                fail(
                    f"item {item!r} ({c.index}) sent at {s / 1000} ms left at {left / 1000} "
                    f"ms: waited {(left - s) / 1000} ms > bound {bound / 1000} + busy "
                    f"{busy / 1000} (busy intervals {v.busy})"
                )
