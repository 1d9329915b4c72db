"""The counters behind ``stats``: changed only by the call state machine and the cut.

Items are counted by what their caller got. A call's items are counted once, when the
call reaches its final state (see ``calls``); this module holds the numbers and turns
them into a :class:`batched.BatchStats` snapshot.
"""

from __future__ import annotations

import math
from array import array
from typing import TYPE_CHECKING, Any, final

from .._stats import BatchStats

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Counts"]

_WINDOW = 8192


@final
class _Window:
    """The most recent samples, in fixed memory.

    Adding is a slice copy per batch, in C; percentiles sort a copy when a snapshot is
    taken, off the per-item path, and are exact over the window.
    """

    __slots__ = ("count", "next", "samples")

    def __init__(self) -> None:
        self.samples = array("d", bytes(8 * _WINDOW))
        self.next = 0
        self.count = 0  # samples held, up to the window size

    def extend(self, values: array[float]) -> None:
        n = len(values)
        if n > _WINDOW:
            values, n = values[-_WINDOW:], _WINDOW
        start = self.next
        end = start + n
        if end <= _WINDOW:
            self.samples[start:end] = values
        else:
            head = _WINDOW - start
            self.samples[start:] = values[:head]
            self.samples[: n - head] = values[head:]
        self.next = end % _WINDOW
        self.count = min(_WINDOW, self.count + n)

    def percentiles_ms(self, quantiles: Sequence[float]) -> list[float]:
        if not self.count:
            return [0.0 for _ in quantiles]
        data = sorted(self.samples[: self.count])
        # Nearest rank: the smallest sample with at least q of all samples at or below it.
        return [data[max(0, math.ceil(q * len(data)) - 1)] * 1000.0 for q in quantiles]


@final
class Counts:
    """One batcher's counters, kept across its openings; ``snapshot`` freezes them."""

    __slots__ = (
        "batches",
        "busy_seconds",
        "cache_errors",
        "cancelled",
        "completed",
        "failed",
        "latency",
        "processed",
        "rejected",
        "submitted",
        "wait",
    )

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.rejected = 0
        self.processed = 0
        self.batches = 0
        self.busy_seconds = 0.0
        self.cache_errors = 0  # get/set calls of the cache that raised
        self.wait = _Window()
        self.latency = _Window()

    # Calls that never reach a queue: each is counted submitted and settled at once.

    def refused(self, n: int) -> None:
        """``n`` items failed before they were queued (closed, bad input)."""
        self.submitted += n
        self.failed += n

    def rejected_now(self, n: int) -> None:
        """``n`` items met a full queue with ``wait=False`` (QueueFull)."""
        self.submitted += n
        self.rejected += n

    def served(self, n: int) -> None:
        """``n`` items answered without a batch (cache hits)."""
        self.submitted += n
        self.completed += n

    def left_early(self, n: int) -> None:
        """``n`` items whose caller was cancelled before they were queued."""
        self.submitted += n
        self.cancelled += n

    # Batches.

    def batch(
        self, size: int, start: float, computed: float, end: float, arrivals: list[float]
    ) -> None:
        """A batch of ``size`` items: ``fn`` ran from ``start`` to ``computed``, its callers
        had their outcomes at ``end``; its items arrived at ``arrivals``: their wait (to
        the start) and latency (to the outcomes)."""
        self.batches += 1
        self.processed += size
        self.busy_seconds += computed - start
        times = array("d", arrivals)
        self.wait.extend(array("d", [start - t for t in times]))
        self.latency.extend(array("d", [end - t for t in times]))

    def snapshot(self, queue_size: int, cache_stats: Any = None) -> BatchStats:
        quantiles = (0.5, 0.9, 0.99)
        w50, w90, w99 = self.wait.percentiles_ms(quantiles)
        l50, l90, l99 = self.latency.percentiles_ms(quantiles)
        batches = self.batches
        return BatchStats(
            submitted=self.submitted,
            completed=self.completed,
            failed=self.failed,
            cancelled=self.cancelled,
            rejected=self.rejected,
            queue_size=queue_size,
            total_processed=self.processed,
            total_batches=batches,
            avg_batch_size=self.processed / batches if batches else 0.0,
            avg_processing_time=self.busy_seconds / batches if batches else 0.0,
            cache_stats=cache_stats,
            wait_p50_ms=w50,
            wait_p90_ms=w90,
            wait_p99_ms=w99,
            latency_p50_ms=l50,
            latency_p90_ms=l90,
            latency_p99_ms=l99,
        )
