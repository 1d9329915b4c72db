"""The queue bound (invariant 9): ``stats.queue_size``, room and ``QueueFull``.

``stats.queue_size`` counts the items accepted and not yet cut. Where the record shows a
reading mid-step (a caller's, or ``fn``'s, as it starts and ends), it lies between what
can be waiting and what certainly waits. Where a stepping driver read it while every
task waited (``ScheduleResult.queue_sizes``), the admission rule of ``max_queue_size``,
replayed event by event, gives it exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import QueueFull
from ._records import item_key
from ._view import fail, us

if TYPE_CHECKING:
    from collections.abc import Hashable

    from ._records import CallerOutcome
    from ._view import View

__all__ = ["check_admission", "check_queue_size", "replay"]


def _samples(v: View) -> list[tuple[float, int, int, str]]:
    """``(seq, µs, queue_size, where)``: a reading's place among the recorded events."""
    out: list[tuple[float, int, int, str]] = []
    for c in v.r.callers:
        if c.sent_seq >= 0:
            out.append((c.sent_seq - 0.5, us(c.submitted_ms), c.queue_size_before, "before"))
        if c.done_seq >= 0 and c.queue_size_after >= 0 and c.done_ms is not None:
            out.append((c.done_seq + 0.5, us(c.done_ms), c.queue_size_after, "after"))
    for b in v.r.batches:
        if b.start_seq >= 0 and b.queue_size_at_start >= 0:
            where = f"as batch {b.index} started"
            out.append((b.start_seq + 0.5, us(b.start_ms), b.queue_size_at_start, where))
        if b.end_seq >= 0 and b.queue_size_at_end >= 0:
            where = f"as batch {b.index} ended"
            out.append((b.end_seq - 0.5, us(b.end_ms), b.queue_size_at_end, where))
    out += [(seq, us(ms), size, "all tasks waiting") for seq, ms, size in v.r.queue_sizes]
    return sorted(out)


def _sequenced(v: View) -> bool:
    return all(c.sent_seq >= 0 for c in v.r.callers if c.kind != "missing")


def check_queue_size(v: View) -> None:
    """9: the readings of ``stats.queue_size``, and ``QueueFull`` only when due.

    A reading is at most the items sent, not refused, whose caller had no outcome yet,
    in no batch that had started (a cancelled item frees its room at once); and at least
    the items certainly accepted at once (no bound, or an empty queue when sent) still
    in no batch, their caller still there and its deadline ahead, away from instants
    where a batch started or a caller left, and before an abnormal close. With
    ``max_queue_size`` it never holds more, save one call larger than the bound
    accepted into an empty queue; with
    ``wait=False``, ``QueueFull`` comes when the call does not fit or another call waits
    for room, and only then.
    """
    if not _sequenced(v):
        return
    limit = None
    if v.max_queue is not None:
        limit = max(v.max_queue, max((len(c.arrival.items) for c in v.r.callers), default=0))
    for k, t, size, where in _samples(v):
        upper = lower = 0
        for c in v.r.callers:
            if not 0 <= c.sent_seq < k or isinstance(c.exception, QueueFull):
                continue
            if 0 <= c.done_seq < k:
                continue
            uncut = [item for item in c.arrival.items if not _started_before(v, item, k)]
            upper += len(uncut)
            at_once = (v.max_queue is None or c.queue_size_before == 0) and not (
                v.closed_at_entry(c)
            )
            cancel = c.arrival.cancel_after_ms
            expired = cancel is not None and us(c.submitted_ms) + us(cancel) <= t
            # An item whose caller's deadline has passed may be dropped at any cut.
            if at_once and not expired and (c.done_ms is None or us(c.done_ms) != t):
                lower += sum(1 for item in uncut if not _starts_at(v, item, t))
        at = f"queue_size {size} at {t / 1000} ms ({where})"
        if size > upper:
            fail(f"{at} exceeds the {upper} items that can be waiting")
        if v.t_abn is None or t < v.t_abn:
            if size < lower:
                fail(f"{at} is under the {lower} items certainly waiting")
            if limit is not None and lower > limit:
                fail(f"{lower} items certainly waiting at {t / 1000} ms > {limit}")
        if limit is not None and size > limit:
            fail(f"{at} > {limit}")
    if v.max_queue is not None:
        _check_no_wait_calls(v, v.max_queue)


def _started_before(v: View, item: Any, k: float) -> bool:
    first = v.first(item)
    return first is not None and first.start_seq < k


def _starts_at(v: View, item: Any, t: int) -> bool:
    first = v.first(item)
    return first is not None and us(first.start_ms) == t


def _check_no_wait_calls(v: View, bound: int) -> None:
    # Who may have waited for room: a call that did not fit, or came while one such
    # waited (room is granted in order). Still there, and with nothing in a batch yet.
    possible_room: list[CallerOutcome] = []

    def waited_then(at: int) -> list[int]:
        return [
            other.index
            for other in possible_room
            if other.sent_seq < at < other.done_seq
            and not any(_started_before(v, item, at) for item in other.arrival.items)
        ]

    callers = [c for c in v.r.callers if c.sent_seq >= 0 and not v.closed_at_entry(c)]
    for c in sorted(callers, key=lambda c: c.sent_seq):
        q, n = c.queue_size_before, len(c.arrival.items)
        if isinstance(c.exception, QueueFull) or not c.arrival.wait or q <= 0:
            continue
        if q + n > bound or waited_then(c.sent_seq):
            possible_room.append(c)
    for c in callers:
        if c.arrival.wait:
            continue
        q, n = c.queue_size_before, len(c.arrival.items)
        name = f"caller {c.index} ({n} items, queue_size {q} of {bound}, wait=False)"
        if not isinstance(c.exception, QueueFull):
            if q != 0 and q + n > bound:
                fail(f"{name}: accepted, yet it did not fit")
            continue
        if q + n <= bound and not waited_then(c.sent_seq):
            fail(f"{name}: QueueFull though it fit and nobody waited for room")


def check_admission(v: View) -> None:
    """9, exactly: replay the admission rule against ``ScheduleResult.queue_sizes``.

    Event by event, in sequence order: a call is accepted when no call waits for room and
    it fits (or the queue is empty), else it waits for room (``QueueFull`` with
    ``wait=False``); a batch takes its items out of the queue, and a caller that leaves
    (cancelled, or closed while waiting for room) takes its own; after either, calls
    waiting for room get in, in order, while they fit. A normal close closes the calls
    waiting for room, an abnormal one every call. Each reading must equal the count.
    """
    if v.r.queue_sizes and _sequenced(v):
        replay(v, strict=True)


def replay(v: View, *, strict: bool) -> dict[int, int]:
    """When each accepted call was accepted (µs, by caller index), by the admission
    rule; ``strict``: fail where the record departs from it."""
    events: list[tuple[float, int, str, Any]] = []
    for c in v.r.callers:
        if c.sent_seq < 0:
            continue
        events.append((c.sent_seq, 0, "enter", c))
        processed = all(v.first(item) is not None for item in c.arrival.items)
        if c.done_seq >= 0 and not processed:
            events.append((c.done_seq, 1, "leave", c))
    events += [(b.start_seq, 2, "start", b) for b in v.top]
    events += [(b.end_seq, 3, "close", False) for b in v.booms]
    if v.r.close_seq >= 0:
        events.append((v.r.close_seq, 3, "close", v.r.closed_ms is not None))
    events += [(seq, 4, "read", (ms, size)) for seq, ms, size in v.r.queue_sizes]
    queue = _Admission(v.max_queue, strict)
    for _, _, kind, what in sorted(events, key=lambda e: (e[0], e[1])):
        if kind == "enter":
            queue.enter(what, us(what.submitted_ms))
        elif kind == "leave":
            done = what.done_ms
            queue.leave(what, us(done) if done is not None else -1)
        elif kind == "start":
            queue.start(what, us(what.start_ms))
        elif kind == "close":
            queue.close(normal=what)
        elif strict:
            ms, size = what
            if size != len(queue.queued):
                fail(
                    f"stats.queue_size {size} at {ms} ms, yet {len(queue.queued)} items were "
                    f"accepted and not cut: {list(queue.queued.values())}"
                )
    return queue.accepted_at


class _Admission:
    """The queue as the admission rule of ``max_queue_size`` says it must be."""

    def __init__(self, bound: int | None, strict: bool) -> None:
        self.bound, self.strict = bound, strict
        self.queued: dict[Hashable, Any] = {}  # key -> item
        self.room: list[CallerOutcome] = []
        self.closed = self.abnormal = False
        self.accepted_at: dict[int, int] = {}

    def fault(self, msg: str) -> None:
        if self.strict:
            fail(msg)

    def fits(self, n: int) -> bool:
        if self.bound is None:
            return True
        return not self.queued or len(self.queued) + n <= self.bound

    def accept(self, c: CallerOutcome, t: int) -> None:
        self.queued.update((item_key(item), item) for item in c.arrival.items)
        self.accepted_at[c.index] = t

    def enter(self, c: CallerOutcome, t: int) -> None:
        if self.closed:
            return  # it gets BatcherClosed at once (the outcome checks see to that)
        ok = not self.room and self.fits(len(c.arrival.items))
        name = f"caller {c.index} [{c.arrival.describe()}]"
        if isinstance(c.exception, QueueFull):
            if ok:
                self.fault(f"{name}: QueueFull, yet it fit and nobody waited for room")
        elif ok:
            self.accept(c, t)
        elif not c.arrival.wait:
            self.fault(f"{name}: accepted with wait=False, yet it did not fit or others waited")
        else:
            self.room.append(c)

    def grant(self, t: int) -> None:
        while self.room and not self.closed and self.fits(len(self.room[0].arrival.items)):
            self.accept(self.room.pop(0), t)

    def leave(self, c: CallerOutcome, t: int) -> None:
        if c in self.room:
            self.room.remove(c)
        for item in c.arrival.items:
            self.queued.pop(item_key(item), None)
        self.grant(t)

    def start(self, batch: Any, t: int) -> None:
        for item in batch.items:
            if self.queued.pop(item_key(item), None) is None and not self.abnormal:
                self.fault(
                    f"batch {batch.index} got item {item!r}, which was not waiting (refused, "
                    f"still waiting for room, or its caller left)"
                )
        self.grant(t)

    def close(self, *, normal: bool) -> None:
        self.closed, self.abnormal = True, not normal
        self.room.clear()  # they get BatcherClosed
        if not normal:
            self.queued.clear()
