"""Counters and latency histograms behind ``Batcher.stats``."""

from __future__ import annotations

import math
from bisect import bisect_left
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
    Percentiles are in milliseconds (``wait``: arrival to batch start; ``latency``:
    arrival to result) and read 0.0 before the first sample.
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


# Log-spaced buckets: each is 2% wider than the last, so a percentile read from the
# histogram is within 1% of the true sample, in fixed memory, with no randomness.
_GROWTH = 1.02
_INV_LOG_GROWTH = 1.0 / math.log(_GROWTH)
_FLOOR_S = 1e-6  # everything under 1 µs shares bucket 0
_BUCKETS = 1 + int(math.log(86_400 / _FLOOR_S) * _INV_LOG_GROWTH)  # up to one day
# Upper edges of the buckets: bisect_left(_EDGES, x) is the bucket of x, found in C.
_EDGES = [_FLOOR_S * _GROWTH**i for i in range(_BUCKETS)]


@final
class _Histogram:
    __slots__ = ("count", "counts")

    def __init__(self) -> None:
        self.counts = [0] * (_BUCKETS + 1)
        self.count = 0

    def add(self, seconds: float) -> None:
        self.counts[bisect_left(_EDGES, seconds)] += 1
        self.count += 1

    def add_since(self, now: float, starts: list[float]) -> None:
        """Add ``now - start`` for each start: one call per batch, not per item."""
        counts = self.counts
        for start in starts:
            counts[bisect_left(_EDGES, now - start)] += 1
        self.count += len(starts)

    def percentiles_ms(self, quantiles: Sequence[float]) -> list[float]:
        if not self.count:
            return [0.0 for _ in quantiles]
        out: list[float] = []
        targets = iter([max(1, math.ceil(q * self.count)) for q in quantiles])
        target = next(targets)
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            while seen >= target:
                out.append(_bucket_mid_ms(index))
                target = next(targets, -1)
                if target < 0:
                    return out
        return out  # pragma: no cover - the targets never exceed the count


def _bucket_mid_ms(index: int) -> float:
    if index == 0:
        return 0.0
    low = _FLOOR_S * _GROWTH ** (index - 1)
    return low * math.sqrt(_GROWTH) * 1000.0


@final
class _Recorder:
    """The mutable counters a batcher updates; ``snapshot`` freezes them."""

    __slots__ = (
        "batches",
        "busy_seconds",
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
        self.wait = _Histogram()
        self.latency = _Histogram()

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
