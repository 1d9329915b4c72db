"""The counters behind ``stats``: changed only by the call state machine and the cut.

Items are counted by what their caller got. A call's items are counted once, when the
call reaches its final state (see ``calls``); this module holds the numbers and turns
them into a :class:`batched.BatchStats` snapshot.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections import deque
from typing import TYPE_CHECKING, Any, final

from .._stats import BatchStats
from .cost import Cost

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Counts"]

_WINDOW = 8192


@final
class _Samples:
    """The arrival times of the most recent items that went through ``fn``, kept per
    batch with the batch's start and end, in bounded memory.

    Adding costs one array per batch; the waits and latencies are computed when a
    snapshot is taken, off the per-item path, and are exact over the window.
    """

    __slots__ = ("batches", "count")

    def __init__(self) -> None:
        # (start, end, arrival times, call times) per batch: waits run from the
        # arrivals, latencies from the calls (earlier for a call that waited for room).
        self.batches: deque[tuple[float, float, array[float], array[float]]] = deque()
        self.count = 0  # arrival times held

    def add(self, start: float, end: float, arrivals: array[float], called: array[float]) -> None:
        batches = self.batches
        batches.append((start, end, arrivals, called))
        self.count += len(arrivals)
        # Keep the batches that hold the window's items, and no older ones.
        while self.count - len(batches[0][2]) >= _WINDOW:
            self.count -= len(batches.popleft()[2])

    def percentiles_ms(self, quantiles: Sequence[float]) -> tuple[list[float], list[float]]:
        """Percentiles of the waits (arrival to start) and the latencies (arrival to
        end) of the most recent items, in milliseconds; 0.0 before the first sample."""
        waits: list[float] = []
        latencies: list[float] = []
        for start, end, arrivals, called in self.batches:
            waits += [start - t for t in arrivals]
            latencies += [end - t for t in called]
        return _percentiles_ms(waits[-_WINDOW:], quantiles), _percentiles_ms(
            latencies[-_WINDOW:], quantiles
        )


def _percentiles_ms(samples: list[float], quantiles: Sequence[float]) -> list[float]:
    if not samples:
        return [0.0 for _ in quantiles]
    data = sorted(samples)
    # Nearest rank: the smallest sample with at least q of all samples at or below it.
    return [data[max(0, math.ceil(q * len(data)) - 1)] * 1000.0 for q in quantiles]


@final
class Counts:
    """One batcher's counters, kept across its openings; ``snapshot`` freezes them."""

    __slots__ = (
        "base",
        "batches",
        "busy_seconds",
        "cache_errors",
        "cancelled",
        "completed",
        "cost",
        "failed",
        "lock",
        "processed",
        "refusals",
        "rejected",
        "samples",
        "submitted",
    )

    def __init__(self) -> None:
        # fn's duration per batch size: kept across openings and clear_stats(), as what
        # the model costs does not change with them.
        self.cost = Cost()
        self.lock = threading.Lock()  # guards ``refusals`` alone
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
        # Items refused in a thread other than the serving one (another thread calling a
        # closed or foreign batcher, a sync function's caller): submitted and failed, kept
        # apart under a lock, since the serving thread counts on meanwhile and a += from
        # two threads can lose counts (without the GIL, or across a switch).
        self.refusals = 0
        self.samples = _Samples()
        # What clear() forgot: (settled, completed, failed, cancelled, rejected, processed,
        # batches, busy_seconds) at that moment, subtracted by snapshot().
        self.base: tuple[int, int, int, int, int, int, int, float] | None = None

    def clear(self) -> None:
        """Forget what has been counted (a front's ``clear_stats()``); the items still
        waiting or running stay submitted, so the counters keep adding up.

        It only reads the counters, so any thread may call it while the thread that serves
        the batcher counts on: what they held is subtracted from every later snapshot.
        """
        completed, failed = self.completed, self.failed + self.refusals
        cancelled, rejected = self.cancelled, self.rejected
        settled = completed + failed + cancelled + rejected
        self.base = (
            settled,
            completed,
            failed,
            cancelled,
            rejected,
            self.processed,
            self.batches,
            self.busy_seconds,
        )
        self.samples = _Samples()

    # Calls that never reach a queue: each is counted submitted and settled at once.

    def refused(self, n: int) -> None:
        """``n`` items failed before they were queued (closed, bad input), counted in the
        thread that serves the batcher."""
        self.submitted += n
        self.failed += n

    def refused_anywhere(self, n: int) -> None:
        """``refused(n)``, safe from any thread (a caller's own thread, or a closed
        batcher's)."""
        with self.lock:
            self.refusals += n

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

    def ran(self, size: int, seconds: float) -> None:
        """``fn`` ran once over ``size`` items for ``seconds``: it returned or raised an
        ``Exception``. Each retry under ``isolate_errors`` is such a run of its own."""
        self.batches += 1
        self.processed += size
        self.busy_seconds += seconds
        self.cost.add(size, seconds)

    def waited(
        self, start: float, end: float, arrivals: list[float], called: list[float] | None = None
    ) -> None:
        """A batch started at ``start`` and its callers had their outcomes at ``end``; its
        items arrived at ``arrivals`` (in the queue), their callers called at ``called``
        (default: the arrivals): the items' wait (arrival to start) and latency (call to
        outcome), once per item whatever the retries."""
        times = array("d", arrivals)
        self.samples.add(start, end, times, times if called is None else array("d", called))

    def snapshot(self, queue_size: int, cache_stats: Any = None) -> BatchStats:
        quantiles = (0.5, 0.9, 0.99)
        waits, latencies = self.samples.percentiles_ms(quantiles)
        w50, w90, w99 = waits
        l50, l90, l99 = latencies
        refusals = self.refusals
        submitted, completed = self.submitted + refusals, self.completed
        failed, cancelled, rejected = self.failed + refusals, self.cancelled, self.rejected
        processed, batches, busy = self.processed, self.batches, self.busy_seconds
        base = self.base
        if base is not None:
            # Submitted minus settled (the items in flight) is kept whatever was read when.
            submitted -= base[0]
            completed -= base[1]
            failed -= base[2]
            cancelled -= base[3]
            rejected -= base[4]
            processed -= base[5]
            batches -= base[6]
            busy -= base[7]
        return BatchStats(
            submitted=submitted,
            completed=completed,
            failed=failed,
            cancelled=cancelled,
            rejected=rejected,
            queue_size=queue_size,
            total_processed=processed,
            total_batches=batches,
            avg_batch_size=processed / batches if batches else 0.0,
            avg_processing_time=busy / batches if batches else 0.0,
            cache_stats=cache_stats,
            wait_p50_ms=w50,
            wait_p90_ms=w90,
            wait_p99_ms=w99,
            latency_p50_ms=l50,
            latency_p90_ms=l90,
            latency_p99_ms=l99,
        )
