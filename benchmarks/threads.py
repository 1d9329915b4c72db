"""Scenario 8: the sync front-end: threads x calls through a trivial sync function.

Each thread calls one item at a time and waits for its result (a closed loop), so at
most ``threads`` items wait at once. Reported: calls/s and the mean batch size, for the
decorator and for the seed-style ``BatchProcessor``, with the same settings.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import batched


def _double(items: list[int]) -> list[int]:
    return [2 * item for item in items]


def _drive(f: Any, threads: int, calls: int) -> float:
    barrier = threading.Barrier(threads + 1)

    def worker(k: int) -> None:
        barrier.wait()
        for j in range(calls):
            item = k * calls + j
            if f(item) != 2 * item:
                raise AssertionError(item)

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join()
    return time.perf_counter() - start


def run(threads: int = 16, calls: int = 1_000, repeats: int = 5) -> list[dict[str, Any]]:
    """Median calls/s per front-end and settings."""
    settings_list: list[dict[str, Any]] = [
        {"batch_size": threads, "timeout_ms": 5.0},  # a batch fills with one call per thread
        {"batch_size": 64, "timeout_ms": 0.0},  # send what waits at once
        {"batch_size": 32, "timeout_ms": 5.0},  # the defaults: batches wait out the timeout
    ]
    makers: dict[str, Any] = {
        "dynamically": lambda s: batched.dynamically(**s)(_double),
        "BatchProcessor": lambda s: batched.BatchProcessor(_double, **s),
    }
    rows = []
    for settings in settings_list:
        for name, make in makers.items():
            rates, sizes = [], []
            for _ in range(repeats):
                f = make(settings)
                with f:
                    seconds = _drive(f, threads, calls)
                rates.append(threads * calls / seconds)
                sizes.append(f.stats.avg_batch_size)
            rows.append(
                {
                    "scenario": "threads",
                    "front_end": name,
                    "threads": threads,
                    "calls_per_thread": calls,
                    **settings,
                    "calls_per_s": round(statistics.median(rates)),
                    "mean_batch_size": round(statistics.median(sizes), 2),
                    "target_calls_per_s": 20_000,
                }
            )
    return rows
