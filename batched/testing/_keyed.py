"""A batcher with a cache or dedupe: equal items share one computation.

``fn`` then sees an item once per computation, not once per caller, so the record is
judged by keys (``cache_key(item)``, default the item): each result names the call of
``fn`` that computed it, and that call must have held the caller's key, ended before the
caller got it, and, unless a cache served it, still been waiting or running when the
caller came.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from .._errors import QueueFull
from ._outcomes import check_cancelled, check_rejected
from ._records import item_key
from ._view import fail, got, label, same, us

if TYPE_CHECKING:
    from collections.abc import Hashable

    from ._records import BatchRecord, CallerOutcome
    from ._view import View

__all__ = ["check_keyed"]


def check_keyed(v: View) -> None:
    """2, 3, 10 for a keyed batcher: results from a computation of the caller's own key;
    no key computed twice in one batch under dedupe, nor for callers that all left; an
    equal call joins a computation in flight (dedupe), and a cached key is not computed
    again;
    the stats add up."""
    s = v.r.settings
    cache = s.get("cache") is not None
    dedupe = bool(s.get("dedupe"))
    key_fn = s.get("cache_key")

    def key(item: Any) -> Hashable:
        return item_key(item if key_fn is None else key_fn(item))

    for batch in v.r.batches:
        keys = [key(item) for item in batch.items]
        if dedupe and len(set(keys)) != len(keys):
            fail(f"batch {batch.index} computes a key twice under dedupe: {batch.items!r}")
        start = us(batch.start_ms)
        for item, k in zip(batch.items, keys, strict=True):
            if not any(
                us(c.submitted_ms) <= start and c.done_ms is not None and us(c.done_ms) >= start
                for c in v.r.callers
                for x in c.arrival.items
                if key(x) == k
            ):
                fail(f"batch {batch.index} computes {item!r}, yet no caller of it was there")
    served: list[tuple[CallerOutcome, Hashable, BatchRecord]] = []
    for c in v.r.callers:
        if check_cancelled(v, c):
            continue
        if isinstance(c.exception, QueueFull):
            check_rejected(v, c)
            continue
        if c.kind != "result":
            fail(f"{label(c)}: got {got(c)}, yet every call of fn returned")
        values = c.result if c.arrival.many else [c.result]
        if not isinstance(values, list) or len(values) != len(c.arrival.items):
            fail(f"{label(c)}: expected {len(c.arrival.items)} results, got {c.result!r}")
        for item, value in zip(c.arrival.items, values, strict=True):
            batch = _computed_by(v, c, key(item), key, value)
            served.append((c, key(item), batch))
    for (c1, k1, b1), (c2, k2, b2) in itertools.permutations(served, 2):
        s1, s2 = us(c1.submitted_ms), us(c2.submitted_ms)
        # c2 came while c1's computation was in flight: it joins it, unless cached.
        in_flight = dedupe and k1 == k2 and s1 < s2 < us(b1.end_ms) and b2 is not b1
        if in_flight and not (cache and us(b2.end_ms) <= s2):
            fail(
                f"{label(c2)} came while batch {b1.index} computed its key for "
                f"{label(c1)}, yet got batch {b2.index}'s"
            )
    for c, k, batch in served:
        s_c = us(c.submitted_ms)
        earlier = [b for b in v.r.batches if us(b.end_ms) < s_c and k in map(key, b.items)]
        if cache and earlier and us(batch.end_ms) > s_c:
            fail(f"{label(c)}: its key was cached by batch {earlier[0].index}, yet computed again")
    _check_keyed_stats(v, served)


def _computed_by(v: View, c: CallerOutcome, k: Hashable, key: Any, value: Any) -> BatchRecord:
    """The call of fn a result names; fail unless it computed the caller's key."""
    name = label(c)
    try:
        _, index, position = value
        batch: BatchRecord = v.r.batches[index]
        computed = batch.results[position] if batch.results is not None else None
        held = key(batch.items[position])
    except (TypeError, ValueError, IndexError):
        fail(f"{name}: got {value!r}, which no call of fn returned")
    if held != k or not same(computed, value):
        fail(f"{name}: got {value!r}, but batch {index} computed {computed!r} for another key")
    done = c.done_ms if c.done_ms is not None else -1
    if us(done) < us(batch.end_ms):
        fail(f"{name}: got batch {index}'s result at {c.done_ms} ms, before it ended")
    if us(batch.end_ms) < us(c.submitted_ms) and v.r.settings.get("cache") is None:
        fail(f"{name}: got batch {index}'s result, which ended before it came, with no cache")
    return batch


def _check_keyed_stats(v: View, served: list[tuple[CallerOutcome, Hashable, BatchRecord]]) -> None:
    stats = v.r.stats
    items = sum(len(c.arrival.items) for c in v.r.callers)
    cancelled = sum(len(c.arrival.items) for c in v.r.callers if c.kind == "cancelled")
    rejected = sum(len(c.arrival.items) for c in v.r.callers if isinstance(c.exception, QueueFull))
    want = (items, len(served), cancelled, rejected, 0, 0)
    counted = (
        stats.submitted,
        stats.completed,
        stats.cancelled,
        stats.rejected,
        stats.failed,
        stats.queue_size,
    )
    if counted != want:
        fail(
            f"stats (submitted, completed, cancelled, rejected, failed, queue_size) {counted} "
            f"!= {want}"
        )
    processed = (len(v.r.batches), sum(len(b.items) for b in v.r.batches))
    if (stats.total_batches, stats.total_processed) != processed:
        fail(
            f"stats (total_batches, total_processed) {(stats.total_batches, stats.total_processed)}"
            f" != {processed}: the calls of fn"
        )
