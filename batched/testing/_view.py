"""What the checks of :func:`check_invariants` share: a view of one run, times in µs."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any, NoReturn

from .._core.auto import CAP as AUTO_CAP
from .._errors import QueueFull
from .._strategies import ByLength, ByPriority, Fifo
from ._records import item_key

if TYPE_CHECKING:
    from collections.abc import Hashable

    from ._records import BatchRecord, CallerOutcome, ScheduleResult

__all__ = ["View", "fail", "got", "label", "same", "us"]


def fail(msg: str) -> NoReturn:
    """Fail a check. Never ``assert``: ``python -O`` would skip the checks."""
    raise AssertionError(msg)


def us(ms: float) -> int:
    return round(ms * 1000)


def label(c: CallerOutcome) -> str:
    return f"caller {c.index} [{c.arrival.describe()}]"


def got(c: CallerOutcome) -> str:
    if c.kind == "result":
        return f"the result {c.result!r}"
    if c.kind == "error":
        return f"the exception {c.exception!r}"
    return c.kind


def same(a: Any, b: Any) -> bool:
    """Equality that also compares arrays, tensors and containers of them."""
    if a is b:
        return True
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    shape = getattr(a, "shape", None)
    if shape is not None and getattr(b, "shape", None) != shape:
        return False
    try:
        equal = a == b
        if isinstance(equal, bool):
            return equal
        every = getattr(equal, "all", None)
        return bool(every() if callable(every) else equal)
    except Exception:
        return False


class View:
    """Facts the checks share: where each item went, when the batcher closed, and why.

    A close is normal (the owner's block body ended: the batcher drains) or abnormal (a
    ``BaseException`` from ``fn``, the owner's cancellation or error): abnormal, every
    waiting caller gets ``BatcherClosed`` at once.
    """

    def __init__(self, result: ScheduleResult) -> None:
        self.r = r = result
        s = result.settings
        self.driven = r.driven
        self.batch_size: int = s["batch_size"]
        # "auto" waits anything from nothing to its cap: the cap bounds every wait, and
        # no batch is premature.
        self.auto = s["timeout_ms"] == "auto"
        self.timeout = us(AUTO_CAP * 1000 if self.auto else s["timeout_ms"])
        self.max_wait = us(s["max_wait_ms"])
        self.max_len: float = math.inf if s["max_batch_length"] is None else s["max_batch_length"]
        self.max_queue: int | None = s["max_queue_size"]
        self.slots: int = s["max_concurrent_batches"]
        self.isolate: bool = s["isolate_errors"]
        self.threshold: int = s["small_batch_threshold"]
        self.strategy: object = s["strategy"]
        # With a cache or dedupe, equal items share a computation (see _keyed).
        self.shared = s.get("cache") is not None or bool(s.get("dedupe"))
        # The built-in strategies' keys are known: equal keys leave in arrival order.
        self.ordered = type(self.strategy) in (Fifo, ByLength, ByPriority)
        self.owner: dict[Hashable, tuple[CallerOutcome, int]] = {}
        for c in r.callers:
            for j, item in enumerate(c.arrival.items):
                self.owner[item_key(item)] = (c, j)
        self.calls: dict[Hashable, list[BatchRecord]] = {}  # item -> the calls that got it
        self.unknown: list[tuple[BatchRecord, Any]] = []
        for batch in r.batches:
            for item in batch.items:
                key = item_key(item)
                if key not in self.owner:
                    self.unknown.append((batch, item))
                self.calls.setdefault(key, []).append(batch)
        self.top = [batch for batch in r.batches if batch.retry_of is None]
        self.booms = [
            b for b in r.batches if b.error is not None and not isinstance(b.error, Exception)
        ]
        self.t_boom = min((us(b.end_ms) for b in self.booms), default=None)
        self.t_norm = None if r.closed_ms is None else us(r.closed_ms)
        self.t_cancel = self.t_raise = None
        plan = r.schedule
        ended = None if r.block_ended_ms is None else us(r.block_ended_ms)
        if plan.close_at_ms is not None and ended is not None and us(plan.close_at_ms) <= ended:
            # The owner's close took effect if it came while the block was still open (at
            # the instant the block ended for another reason, it may or may not have).
            if plan.close_by == "cancel":
                self.t_cancel = us(plan.close_at_ms)
            elif plan.close_by == "raise" and self.t_norm is None:
                self.t_raise = us(plan.close_at_ms)
        abnormal = [t for t in (self.t_boom, self.t_cancel, self.t_raise) if t is not None]
        self.t_abn = min(abnormal) if abnormal else None
        # The abnormal close's place among the recorded events, where the record shows it:
        # fn's BaseException is recorded as it is raised, the owner's error before it is.
        seqs = [b.end_seq for b in self.booms if us(b.end_ms) == self.t_abn and b.end_seq >= 0]
        if self.t_raise is not None and self.t_raise == self.t_abn and r.close_seq >= 0:
            seqs.append(r.close_seq)
        unknown = self.t_cancel is not None and self.t_cancel == self.t_abn
        self.abn_seq = None if unknown or not seqs else min(seqs)
        closes = [t for t in (self.t_abn, self.t_norm) if t is not None]
        self.t_close = min(closes) if closes else None
        self.spans = [(us(b.start_ms), us(b.end_ms), b.task) for b in r.batches]
        # A stepped run's readings of the queue pin down when each call was accepted
        # (set by check_invariants, which replays the admission rule).
        self.accepted_at: dict[int, int] | None = None
        self.busy = self._busy_intervals()

    def _busy_intervals(self) -> list[tuple[int, int]]:
        """Maximal intervals during which every execution slot ran a batch function."""
        events: list[tuple[int, int]] = []
        for start, end, _ in self.spans:
            if end > start:
                events += [(start, +1), (end, -1)]
        events.sort()  # ends before starts at one instant
        out: list[tuple[int, int]] = []
        running, since = 0, 0
        for at, delta in events:
            before = running
            running += delta
            if before < self.slots <= running:
                since = at
            elif running < self.slots <= before and at > since:
                out.append((since, at))
        return out

    def stalled_between(self, c: CallerOutcome, a: int, b: int) -> int:
        """How long within [a, b] every slot ran a batch function; caller-driven, also
        while the caller's own task ran one (then nobody may be left to cut the next)."""
        spans = [(lo, hi) for lo, hi in self.busy]
        if self.driven:
            spans += [(lo, hi) for lo, hi, task in self.spans if task == c.task and hi > lo]
        points = sorted({a, b} | {t for span in spans for t in span})
        total = 0
        for lo, hi in itertools.pairwise(points):
            if lo >= a and hi <= b and any(s <= lo and hi <= e for s, e in spans):
                total += hi - lo
        return total

    def after_close(self, batch: BatchRecord) -> bool:
        """``batch`` may have ended after the abnormal close: later, or at its instant
        unless the record orders it before."""
        if self.t_abn is None:
            return False
        end = us(batch.end_ms)
        if end != self.t_abn:
            return end > self.t_abn
        return self.abn_seq is None or not 0 <= batch.end_seq < self.abn_seq

    def length(self, item: Any) -> int | None:
        c, j = self.owner[item_key(item)]
        return c.lengths[j] if j < len(c.lengths) else None

    def first(self, item: Any) -> BatchRecord | None:
        """The call of ``fn`` that first got ``item`` (retries aside)."""
        calls = self.calls.get(item_key(item))
        return calls[0] if calls else None

    def dispatched_by(self, item: Any, t: int, strictly: bool = False) -> bool:
        first = self.first(item)
        if first is None:
            return False
        start = us(first.start_ms)
        return start < t if strictly else start <= t

    def closed_at_entry(self, c: CallerOutcome) -> bool:
        """The caller may have called a batcher that was already closing."""
        return self.t_close is not None and us(c.submitted_ms) >= self.t_close

    def dropped_by(self, c: CallerOutcome, item: Any, t: int) -> bool:
        """A cut by ``t`` may have dropped ``item``: its caller's cancel scope's deadline
        had passed by then, and it never reached ``fn``. Caller-driven, such a caller may
        still be there, running a batch, long after (its cancellation is seen when that
        batch returns). (An item that reached ``fn`` later was not dropped: deadlines
        are read lazily, so an expired item may still be cut.)"""
        cancel = c.arrival.cancel_after_ms
        return (
            cancel is not None and us(c.submitted_ms) + us(cancel) <= t and self.first(item) is None
        )

    def accepted_at_once(self, c: CallerOutcome) -> bool:
        """The call was certainly accepted when sent: its items arrived at ``submitted``.

        Without a queue bound every call is; with one, a call sent to an empty queue is
        (while the batcher is open, an empty queue has nobody waiting for room).
        """
        return (
            not isinstance(c.exception, QueueFull)
            and not self.closed_at_entry(c)
            and (self.max_queue is None or c.queue_size_before == 0)
        )

    def arrival(self, c: CallerOutcome) -> int | None:
        """When the call's items certainly arrived (were accepted), if known: when sent,
        if accepted at once; on a stepped run, when the admission rule let them in."""
        if self.accepted_at is not None and not self.closed_at_entry(c):
            return self.accepted_at.get(c.index)
        return us(c.submitted_ms) if self.accepted_at_once(c) else None

    def key(self, c: CallerOutcome, j: int) -> tuple[bool, Any]:
        """Items with equal keys leave in arrival order (built-in strategies only)."""
        small = len(c.arrival.items) <= self.threshold
        if isinstance(self.strategy, ByPriority):
            return small, c.arrival.priority
        if isinstance(self.strategy, ByLength):
            return small, c.lengths[j]
        return small, None

    def rank(self, c: CallerOutcome, j: int) -> tuple[bool, Any, int, int]:
        """The cut order outside the overdue rule: small calls, strategy key, arrival."""
        small, key = self.key(c, j)
        return (not small, key, c.sent_seq, j)

    def running_after(self, t: int) -> list[int | None]:
        """The tasks of the batch functions running once everything at ``t`` happened."""
        return [task for start, end, task in self.spans if start <= t < end]
