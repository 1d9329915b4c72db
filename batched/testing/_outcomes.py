"""What each caller got (invariants 1, 2, 8, 11): exactly what the calls of ``fn`` imply."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import BatcherClosed, BatchSizeMismatch, Failure, QueueFull
from ._records import item_key
from ._view import fail, got, label, same, us

if TYPE_CHECKING:
    from ._records import BatchRecord, CallerOutcome
    from ._view import View

__all__ = ["check_cancelled", "check_outcomes", "check_rejected", "retries_interrupted", "root"]


class _Fate:
    """What an item's last call of fn implies for its caller."""

    def __init__(self, batch: BatchRecord, value: Any = None, error: Any = None) -> None:
        self.batch = batch
        self.value = value
        self.error = error  # an exception object (identity), or an exception type


def _fate(v: View, item: Any) -> _Fate | None:
    """``None``: the item never went through a call of ``fn`` that finished."""
    calls = v.calls.get(item_key(item))
    if not calls or not calls[-1].finished:
        return None
    last = calls[-1]
    if last.error is not None:
        if v.isolate and len(last.items) > 1:
            if retries_interrupted(v, last):
                return None  # the batcher closed before it could retry this item
            fail(
                f"batch {last.index} raised with {len(last.items)} items under "
                f"isolate_errors, yet its item {item!r} was never retried"
            )
        return _Fate(last, error=last.error)
    kind = last.outcome.kind
    if kind in ("short", "long"):
        return _Fate(last, error=BatchSizeMismatch)
    if kind == "wrong_type":
        return _Fate(last, error=TypeError)
    if last.results is None:
        fail(f"batch {last.index} ({kind}) returned, yet recorded no results")
    position = [item_key(x) for x in last.items].index(item_key(item))
    value = last.results[position]
    if type(value) is Failure:
        return _Fate(last, error=value.exception)
    return _Fate(last, value=value)


def retries_interrupted(v: View, batch: BatchRecord, *, strictly: bool = False) -> bool:
    """An abnormal close came while ``batch``'s retries under ``isolate_errors`` ran
    (``strictly``: not just at the instant the last of them ended)."""
    if v.t_abn is None or not v.isolate:
        return False
    first = root(v, batch)
    family = [b for b in v.r.batches if root(v, b) is first]
    if len(family) == 1 and (first.error is None or len(first.items) == 1):
        return False  # nothing to retry
    if any(b.cancelled for b in family):
        return True
    last = max(family, key=lambda b: (us(b.end_ms), b.end_seq))
    return us(last.end_ms) > v.t_abn if strictly else v.after_close(last)


def root(v: View, batch: BatchRecord) -> BatchRecord:
    while batch.retry_of is not None:
        batch = v.r.batches[batch.retry_of]
    return batch


def _runs(v: View, c: CallerOutcome) -> list[tuple[int, int]]:
    """When the caller's task ran a batch (with its retries: one shielded run)."""
    runs = []
    for b in v.top:
        family = [x for x in v.r.batches if root(v, x) is b]
        if b.task is not None and b.task == c.task:
            runs.append((us(b.start_ms), max(us(x.end_ms) for x in family)))
    return sorted(runs)


def _free_at(v: View, c: CallerOutcome, t: int) -> int:
    """When the caller can take an outcome due at ``t``: at once, unless (caller-driven)
    its task runs a batch then, for its batch-mates; then when that run ends."""
    if not v.driven:
        return t
    for start, end in _runs(v, c):
        if start <= t < end:
            t = end
    return t


def _held_until(v: View, c: CallerOutcome, deadline: int) -> int:
    """When a caller-driven caller may see its cancellation: once the batch its task ran
    at its deadline returns (the batch is shielded for its batch-mates' sake)."""
    held = deadline
    for start, end in _runs(v, c):
        if start <= deadline:
            held = max(held, end)
    return held


def check_outcomes(v: View) -> None:
    """1, 2, 8, 11: one outcome each, exactly the one the calls of ``fn`` imply.

    A caller whose items all went through calls of ``fn`` that finished gets, when the
    last of them ends, its own results in order or the exception of its first failing
    item; any other must have been closed: ``BatcherClosed`` at the abnormal close, at
    once when it called after any close, or, waiting for queue room, at the normal close.
    Calls that ended at the instant of an abnormal close may go either way. So "nobody
    else gets an error" and "later callers still complete after a failure" are exact.
    """
    for c in v.r.callers:
        a, name = c.arrival, label(c)
        if check_cancelled(v, c):
            continue
        if isinstance(c.exception, QueueFull):
            check_rejected(v, c)
            continue
        fates = [_fate(v, item) for item in a.items]
        either = any(f is not None and v.after_close(f.batch) for f in fates)
        if all(f is not None for f in fates) and not (either and _is_closed(c)):
            natural = [f for f in fates if f is not None]
            due = _free_at(v, c, max(us(f.batch.end_ms) for f in natural))
            if not either and c.done_ms is not None and us(c.done_ms) != due:
                fail(
                    f"{name}: got {got(c)} at {c.done_ms} ms, not when its last call of fn "
                    f"ended ({due / 1000} ms)"
                )
            failing = next((f for f in natural if f.error is not None), None)
            if failing is None:
                _check_result(c, natural)
            else:
                _check_error(c, failing)
            continue
        _check_closed(v, c, fates)


def _is_closed(c: CallerOutcome) -> bool:
    return c.kind == "error" and type(c.exception) is BatcherClosed


def check_cancelled(v: View, c: CallerOutcome) -> bool:
    """Whether the caller was cancelled (then at its deadline, or caller-driven once the
    batch its task ran then returned); no other outcome after its deadline."""
    a, name = c.arrival, label(c)
    if c.done_ms is None:
        fail(f"{name}: no outcome")
    s, done = us(c.submitted_ms), us(c.done_ms)
    deadline = None if a.cancel_after_ms is None else s + us(a.cancel_after_ms)
    if c.kind == "cancelled":
        if deadline is None:
            fail(f"{name}: cancelled, yet nobody cancelled it")
        held = _held_until(v, c, deadline) if v.driven else deadline
        if not deadline <= done <= held:
            fail(f"{name}: cancelled at {c.done_ms} ms")
        return True
    if deadline is not None and done > deadline:
        fail(f"{name}: got {got(c)} after its own cancellation")
    return False


def check_rejected(v: View, c: CallerOutcome) -> None:
    name, s = label(c), us(c.submitted_ms)
    if c.arrival.wait:
        fail(f"{name}: QueueFull for a call that may wait")
    if v.max_queue is None:
        fail(f"{name}: QueueFull without max_queue_size")
    if c.done_ms is None or us(c.done_ms) != s:
        fail(f"{name}: QueueFull after waiting")
    if c.queue_size_before <= 0:
        fail(f"{name}: QueueFull with an empty queue")
    if v.t_close is not None and s > v.t_close:
        fail(f"{name}: QueueFull instead of BatcherClosed after the close")


def _check_closed(v: View, c: CallerOutcome, fates: list[_Fate | None]) -> None:
    """``BatcherClosed`` is the only outcome left: was it due, and chained to its cause?"""
    name, s = label(c), us(c.submitted_ms)
    done = us(c.done_ms) if c.done_ms is not None else -1
    if not _is_closed(c):
        lost = [item for item in c.arrival.items if v.first(item) is None]
        if lost:
            fail(f"{name}: got {got(c)}, yet its item {lost[0]!r} never went through fn")
        state = [(f.batch.index, "finished") if f else "unfinished" for f in fates]
        fail(f"{name}: expected BatcherClosed (its items' calls of fn: {state}), got {got(c)}")
    processed = any(v.first(item) is not None for item in c.arrival.items)
    t_abn, t_norm = v.t_abn, v.t_norm
    due = (t_abn is not None and done == max(s, t_abn)) or (
        t_norm is not None
        and not processed
        and (
            (s >= t_norm and done == s)
            or (v.max_queue is not None and s <= t_norm and done == t_norm)
        )
    )
    if not due:
        fail(
            f"{name}: BatcherClosed at {c.done_ms} ms is unexplained: abnormal close at "
            f"{t_abn}, normal close at {t_norm} (µs), processed={processed}"
        )
    boom = v.t_boom
    if (
        boom is not None
        and v.t_cancel is None
        and v.t_raise is None
        and s < boom == done
        and (t_norm is None or t_norm > boom)
    ):
        cause = c.exception.__cause__ if c.exception is not None else None
        if not any(cause is b.error for b in v.booms):
            fail(f"{name}: BatcherClosed not chained to the BaseException from fn: {cause!r}")


def _check_result(c: CallerOutcome, fates: list[_Fate]) -> None:
    name = label(c)
    wants = [fate.value for fate in fates]
    if c.kind != "result":
        fail(f"{name}: expected the results {wants!r}, got {got(c)}")
    gots = c.result if c.arrival.many else [c.result]
    if not isinstance(gots, list):
        fail(f"{name}: expected a list of results, got {c.result!r}")
    if len(gots) != len(wants):
        fail(f"{name}: expected {len(wants)} results, got {gots!r}")
    for item, value, fate in zip(c.arrival.items, gots, fates, strict=True):
        if not same(value, fate.value):
            fail(
                f"{name}: got {value!r} for item {item!r}, but fn returned {fate.value!r} for "
                f"it in batch {fate.batch.index} {fate.batch.items!r}"
            )


def _check_error(c: CallerOutcome, fate: _Fate) -> None:
    name, want, batch = label(c), fate.error, fate.batch
    source = f"batch {batch.index} ({batch.outcome.kind}) {batch.items!r}"
    if isinstance(want, BaseException):
        if c.exception is not want:
            fail(f"{name}: expected {want!r} from {source}, got {got(c)}")
        return
    if type(c.exception) is not want:
        fail(f"{name}: expected {want.__name__} from {source}, got {got(c)}")
    if isinstance(c.exception, BatchSizeMismatch):
        n = len(batch.items)
        wrong = n + (1 if batch.outcome.kind == "long" else -1)
        if (c.exception.expected, c.exception.got) != (n, wrong):
            fail(f"{name}: {c.exception} for {source}")
