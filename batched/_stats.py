"""Counters and latency histograms behind ``Batcher.stats``."""

from __future__ import annotations

import math
from array import array
from typing import TYPE_CHECKING, Any, final

import attrs

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["BatchStats"]


@final
@attrs.frozen
class BatchStats:
    """A snapshot of one batcher's counters.

    Counters count items, not calls, by what their caller got. ``submitted`` equals
    ``completed + failed + cancelled + rejected`` plus the items still waiting or running.
    ``isolate_errors`` retries count in neither ``total_batches`` nor
    ``total_processed``. Percentiles are in
    milliseconds over the most recent 8,192 items that went through the batch function
    (``wait``: arrival to batch start; ``latency``: the call to its result, a wait for
    queue room included), and read 0.0 before the first sample.
    """

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    rejected: int = 0
    queue_size: int = 0
    total_processed: int = 0
    total_batches: int = 0
    avg_batch_size: float = 0.0
    avg_processing_time: float = 0.0
    cache_stats: Any = None
    wait_p50_ms: float = 0.0
    wait_p90_ms: float = 0.0
    wait_p99_ms: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p90_ms: float = 0.0
    latency_p99_ms: float = 0.0


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

    def extend(self, values: list[float]) -> None:
        n = len(values)
        if n > _WINDOW:
            values, n = values[-_WINDOW:], _WINDOW
        start = self.next
        end = start + n
        if end <= _WINDOW:
            self.samples[start:end] = array("d", values)
        else:
            head = _WINDOW - start
            self.samples[start:] = array("d", values[:head])
            self.samples[: n - head] = array("d", values[head:])
        self.next = end % _WINDOW
        self.count = min(_WINDOW, self.count + n)

    def percentiles_ms(self, quantiles: Sequence[float]) -> list[float]:
        if not self.count:
            return [0.0 for _ in quantiles]
        data = sorted(self.samples[: self.count])
        # Nearest rank: the smallest sample with at least q of all samples at or below it.
        return [data[max(0, math.ceil(q * len(data)) - 1)] * 1000.0 for q in quantiles]


@final
class _Recorder:
    """The mutable counters a batcher updates; ``snapshot`` freezes them."""

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
