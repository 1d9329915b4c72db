"""The public snapshot of a batcher's counters (kept by ``_core.counts``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import attrs

if TYPE_CHECKING:
    from .cache import CacheStats

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
    (``wait``: arrival in the queue to batch start; ``latency``: the call to its result,
    a wait for queue room included), and read 0.0 before the first sample.
    ``cache_stats`` is the cache's :class:`batched.cache.CacheStats`, or None without a
    cache.
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
    cache_stats: CacheStats | None = None
    wait_p50_ms: float = 0.0
    wait_p90_ms: float = 0.0
    wait_p99_ms: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p90_ms: float = 0.0
    latency_p99_ms: float = 0.0
