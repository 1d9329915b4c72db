"""``check_invariants``: what must hold of every run of :func:`run_schedule`."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

from .._errors import BatchSizeMismatch, Failure, QueueFull
from ._player import HANG_GUARD_S
from ._records import BatchRecord, CallerOutcome, ScheduleResult, item_key

if TYPE_CHECKING:
    from collections.abc import Hashable

__all__ = ["check_invariants", "same"]


def _us(ms: float) -> int:
    return round(ms * 1000)


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


class _View:
    """Facts the checks share, times in integer µs."""

    def __init__(self, result: ScheduleResult) -> None:
        self.r = result
        s = result.settings
        self.batch_size: int = s["batch_size"]
        self.timeout = _us(s["timeout_ms"])
        self.max_len: float = math.inf if s["max_batch_length"] is None else s["max_batch_length"]
        self.max_queue: int | None = s["max_queue_size"]
        self.slots: int = s["max_concurrent_batches"]
        self.isolate: bool = s["isolate_errors"]
        self.owner: dict[Hashable, tuple[CallerOutcome, int]] = {}
        for c in result.callers:
            for j, item in enumerate(c.arrival.items):
                self.owner[item_key(item)] = (c, j)
        self.calls: dict[Hashable, list[BatchRecord]] = {}  # item -> the calls that got it
        self.unknown: list[tuple[BatchRecord, Any]] = []
        for batch in result.batches:
            for item in batch.items:
                key = item_key(item)
                if key not in self.owner:
                    self.unknown.append((batch, item))
                self.calls.setdefault(key, []).append(batch)
        self.top = [batch for batch in result.batches if batch.retry_of is None]

    def length(self, item: Any) -> int | None:
        c, j = self.owner[item_key(item)]
        return c.lengths[j] if j < len(c.lengths) else None

    def dispatched_by(self, item: Any, t: int, strictly: bool = False) -> bool:
        calls = self.calls.get(item_key(item))
        if not calls:
            return False
        start = _us(calls[0].start_ms)
        return start < t if strictly else start <= t

    def accepted_at_once(self, c: CallerOutcome) -> bool:
        """The call was certainly accepted when sent: its items arrived at ``submitted``."""
        return not isinstance(c.exception, QueueFull) and (
            self.max_queue is None or c.queue_size_before == 0
        )


def _label(c: CallerOutcome) -> str:
    return f"caller {c.index} [{c.arrival.describe()}]"


def _got(c: CallerOutcome) -> str:
    if c.kind == "result":
        return f"the result {c.result!r}"
    if c.kind == "error":
        return f"the exception {c.exception!r}"
    return c.kind


def _check_exit(r: ScheduleResult) -> None:
    missing = [c.index for c in r.callers if c.kind == "missing"]
    if r.hung:
        msg = (
            f"hang: after {HANG_GUARD_S:.0f} s of virtual time callers {missing} still had no "
            f"outcome; batches so far: {[(b.index, b.items) for b in r.batches]}"
        )
        raise AssertionError(msg)
    assert r.escaped is None, f"`async with batcher` raised {r.escaped!r}"
    assert not missing, f"callers {missing} never got an outcome"
    assert not r.loop_errors, f"reported while the run closed: {list(r.loop_errors)}"
    assert r.tasks_left == 0, f"{r.tasks_left} tasks left running after the batcher closed"


def _check_batches(v: _View) -> None:
    """No batch is empty or over ``batch_size``; none over ``max_batch_length`` unless alone."""
    for batch in v.r.batches:
        n = len(batch.items)
        assert 1 <= n <= v.batch_size, (
            f"batch {batch.index} has {n} items (batch_size={v.batch_size}): {batch.items!r}"
        )
        lengths = [v.length(item) for item in batch.items if item_key(item) in v.owner]
        if n > 1 and None not in lengths:
            total = sum(length for length in lengths if length is not None)
            assert total <= v.max_len, (
                f"batch {batch.index} {batch.items!r} has length {total} > "
                f"max_batch_length={v.max_len}"
            )


def _check_processing(v: _View) -> None:
    """Every item fn got was sent, once (a retry under ``isolate_errors`` aside), after it
    was sent, and before its caller left or was refused."""
    if v.unknown:
        batch, item = v.unknown[0]
        msg = (
            f"batch {batch.index} got an item nobody sent: {item!r} (batcher_factory must "
            f"hand fn the items as sent)"
        )
        raise AssertionError(msg)
    for key, calls in v.calls.items():
        c, j = v.owner[key]
        item = c.arrival.items[j]
        for prev, later in itertools.pairwise(calls):
            assert later.retry_of == prev.index, (
                f"item {item!r} of {_label(c)} processed twice: in batches "
                f"{[b.index for b in calls]}"
            )
        first = calls[0]
        start = _us(first.start_ms)
        assert not isinstance(c.exception, QueueFull), (
            f"{_label(c)} got QueueFull, yet its item {item!r} went to batch {first.index}"
        )
        assert _us(c.submitted_ms) <= start, (
            f"item {item!r} reached fn (batch {first.index}) before {_label(c)} sent it"
        )
        assert c.done_ms is not None
        assert _us(c.done_ms) >= start, (
            f"{_label(c)} got {_got(c)} at {c.done_ms} ms, yet its item {item!r} reached fn "
            f"later, in batch {first.index} at {first.start_ms} ms"
        )


class _Fate:
    """What an item's last call of fn implies for its caller."""

    def __init__(self, batch: BatchRecord, value: Any = None, error: Any = None) -> None:
        self.batch = batch
        self.value = value
        self.error = error  # an exception object (identity), or an exception type


def _fate(v: _View, item: Any) -> _Fate | None:
    calls = v.calls.get(item_key(item))
    if not calls or calls[-1].cancelled:
        return None
    last = calls[-1]
    if last.error is not None:
        assert not (v.isolate and len(last.items) > 1), (
            f"batch {last.index} raised with {len(last.items)} items under isolate_errors, "
            f"yet its item {item!r} was never retried"
        )
        return _Fate(last, error=last.error)
    kind = last.outcome.kind
    if kind in ("short", "long"):
        return _Fate(last, error=BatchSizeMismatch)
    if kind == "wrong_type":
        return _Fate(last, error=TypeError)
    assert last.results is not None
    position = [item_key(x) for x in last.items].index(item_key(item))
    value = last.results[position]
    if type(value) is Failure:
        return _Fate(last, error=value.exception)
    return _Fate(last, value=value)


def _check_outcomes(v: _View) -> None:
    """One outcome each, and the one fn's calls imply: its own results in order, or the
    exception of its first failing item; cancellations and ``QueueFull`` when due."""
    for c in v.r.callers:
        a, label = c.arrival, _label(c)
        assert c.done_ms is not None
        submitted, done = _us(c.submitted_ms), _us(c.done_ms)
        deadline = None if a.cancel_after_ms is None else submitted + _us(a.cancel_after_ms)
        if c.kind == "cancelled":
            assert deadline is not None, f"{label}: cancelled, yet nobody cancelled it"
            assert done == deadline, f"{label}: cancelled at {c.done_ms} ms"
            continue
        if deadline is not None:
            assert done <= deadline, f"{label}: got {_got(c)} after its own cancellation"
        q, n = c.queue_size_before, len(a.items)
        if isinstance(c.exception, QueueFull):
            assert not a.wait, f"{label}: QueueFull for a call that may wait"
            assert v.max_queue is not None, f"{label}: QueueFull without max_queue_size"
            assert done == submitted, f"{label}: QueueFull after waiting"
            assert q > 0, f"{label}: QueueFull with an empty queue"
            continue
        if not a.wait and v.max_queue is not None:
            assert q == 0 or q + n <= v.max_queue, (
                f"{label}: accepted with wait=False though {q} items waited "
                f"(max_queue_size={v.max_queue})"
            )
        fates: list[_Fate] = []
        for item in a.items:
            fate = _fate(v, item)
            assert fate is not None, (
                f"{label}: got {_got(c)}, yet its item {item!r} never went through fn"
            )
            fates.append(fate)
        failing = next((f for f in fates if f.error is not None), None)
        if failing is None:
            _check_result(c, fates)
        else:
            _check_error(c, failing)


def _check_result(c: CallerOutcome, fates: list[_Fate]) -> None:
    label = _label(c)
    wants = [fate.value for fate in fates]
    assert c.kind == "result", f"{label}: expected the results {wants!r}, got {_got(c)}"
    gots = c.result if c.arrival.many else [c.result]
    assert isinstance(gots, list), f"{label}: expected a list of results, got {c.result!r}"
    assert len(gots) == len(wants), f"{label}: expected {len(wants)} results, got {gots!r}"
    for item, got, fate in zip(c.arrival.items, gots, fates, strict=True):
        assert same(got, fate.value), (
            f"{label}: got {got!r} for item {item!r}, but fn returned {fate.value!r} for it "
            f"in batch {fate.batch.index} {fate.batch.items!r}"
        )


def _check_error(c: CallerOutcome, fate: _Fate) -> None:
    label, want, batch = _label(c), fate.error, fate.batch
    source = f"batch {batch.index} ({batch.outcome.kind}) {batch.items!r}"
    if isinstance(want, BaseException):
        assert c.exception is want, f"{label}: expected {want!r} from {source}, got {_got(c)}"
        return
    assert type(c.exception) is want, (
        f"{label}: expected {want.__name__} from {source}, got {_got(c)}"
    )
    if isinstance(c.exception, BatchSizeMismatch):
        assert c.exception.expected == len(batch.items), f"{label}: {c.exception} for {source}"


def _check_no_premature(v: _View) -> None:
    """A batch leaves before its oldest item waited ``timeout_ms`` only when it is full.

    At a batch's start ``d``, the pool it was cut from is within W: items sent by ``d``,
    not refused, in no earlier batch, whose caller was still there at ``d``. If W holds
    fewer than ``batch_size`` items and less than ``max_batch_length``, the timeout cut
    it, so some item of W was sent ``timeout`` before ``d``.
    """
    for batch in v.top:
        d = _us(batch.start_ms)
        waiting = [
            (c, item)
            for c in v.r.callers
            if _us(c.submitted_ms) <= d
            and not isinstance(c.exception, QueueFull)
            and c.done_ms is not None
            and _us(c.done_ms) >= d
            for item in c.arrival.items
            if not v.dispatched_by(item, d, strictly=True)
        ]
        lengths = [v.length(item) for _, item in waiting]
        length = math.inf if None in lengths else sum(x for x in lengths if x is not None)
        if not waiting or len(waiting) >= v.batch_size or length >= v.max_len:
            continue
        oldest = min(_us(c.submitted_ms) for c, _ in waiting)
        assert d - oldest >= v.timeout, (
            f"batch {batch.index} {batch.items!r} left at {batch.start_ms} ms, not full "
            f"({len(waiting)} items of length {length} waiting), its oldest item sent at "
            f"{oldest / 1000} ms: before timeout_ms={v.timeout / 1000}"
        )


def _check_no_idle_slot(v: _View) -> None:
    """No execution slot stays free while a batch is due.

    Once everything at an instant has happened, if fewer calls of fn run than
    ``max_concurrent_batches``, the items certainly waiting (accepted when sent, in no
    batch yet, caller still there) are fewer than ``batch_size``, under
    ``max_batch_length``, and none was sent ``timeout_ms`` ago or more.
    """
    spans = [(_us(b.start_ms), _us(b.end_ms)) for b in v.r.batches]
    instants = {t for span in spans for t in span}
    for c in v.r.callers:
        assert c.done_ms is not None
        s = _us(c.submitted_ms)
        instants |= {s, _us(c.done_ms), s + v.timeout}
    for t in sorted(instants):
        if sum(1 for start, end in spans if start <= t < end) >= v.slots:
            continue
        waiting = [
            (c, item)
            for c in v.r.callers
            if v.accepted_at_once(c)
            and c.done_ms is not None
            and _us(c.submitted_ms) <= t < _us(c.done_ms)
            for item in c.arrival.items
            if not v.dispatched_by(item, t)
        ]
        if not waiting:
            continue
        lengths = [v.length(item) for _, item in waiting]
        length = sum(x for x in lengths if x is not None)
        oldest = min(_us(c.submitted_ms) for c, _ in waiting)
        items = [item for _, item in waiting]
        where = f"at {t / 1000} ms a slot is free and items {items!r} wait, yet no batch left"
        assert len(waiting) < v.batch_size, f"{where} (batch_size={v.batch_size})"
        assert length < v.max_len, f"{where} (length {length}, max_batch_length={v.max_len})"
        assert t - oldest < v.timeout, (
            f"{where} (the oldest was sent at {oldest / 1000} ms, timeout_ms={v.timeout / 1000})"
        )


def _check_stats(v: _View) -> None:
    """The final stats add up, item by item, to what the callers got and fn saw."""
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
    got = {name: getattr(stats, name) for name in tally}
    assert got == tally, f"stats {got} do not match what the callers got: {tally}"
    assert stats.submitted == sum(tally.values()), (
        f"stats.submitted {stats.submitted} != {sum(tally.values())} items sent"
    )
    assert stats.queue_size == 0, f"stats.queue_size {stats.queue_size} after the run"
    batches = (len(v.top), sum(len(b.items) for b in v.top))
    assert (stats.total_batches, stats.total_processed) == batches, (
        f"stats (total_batches, total_processed) {(stats.total_batches, stats.total_processed)}"
        f" != {batches} seen by fn"
    )


def check_invariants(result: ScheduleResult) -> None:
    """Check what must hold of every run of :func:`run_schedule`.

    The run ended cleanly (no hang, nothing raised out of ``async with``, no task left,
    nothing reported to asyncio's exception handler); every caller got exactly one
    outcome: its own results in order, or the exception of its first failing item, or
    its cancellation or ``QueueFull`` when due; no item processed twice (a retry under
    ``isolate_errors`` aside) nor after its caller left; no batch over ``batch_size`` or
    ``max_batch_length`` (an oversize item alone aside); no batch left before it was due;
    no slot idle while a batch was due; the stats add up.

    :raises AssertionError: naming the first offending caller or batch
    """
    _check_exit(result)
    view = _View(result)
    for check in (
        _check_processing,
        _check_batches,
        _check_outcomes,
        _check_no_premature,
        _check_no_idle_slot,
        _check_stats,
    ):
        check(view)
