"""Sync code: a decorated plain function called from a pool of threads.

Run it with ``python examples/threads.py``. ``score`` is an ordinary ``def`` (a model
behind a sync API, say); the decorated ``score`` blocks each calling thread until its
item's result is ready, and calls from all threads share batches. One event-loop thread
serves it, started on first use; ``with score:`` (or ``score.close()``) stops it, and
so does interpreter exit. Async code calls the same function with ``await score.acall``.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import anyio

import batched


@batched.dynamically(batch_size=32, timeout_ms=5.0)
def score(numbers: list[int]) -> list[int]:
    """The batch function: one score per number, in the same order."""
    return [n * n for n in numbers]


def caller(n: int) -> tuple[str, int]:
    return threading.current_thread().name, score(n)  # blocks this thread only


async def from_async_code() -> list[int]:
    # On an event loop, blocking would stall it: `acall` awaits instead.
    return [await score.acall(3), *await score.acall([4, 5])]


def main() -> None:
    with score, ThreadPoolExecutor(8, thread_name_prefix="worker") as pool:
        results = list(pool.map(caller, range(200)))
        assert all(result == n * n for n, (_, result) in enumerate(results))
        threads = {name for name, _ in results}
        print(f"200 calls from {len(threads)} threads: every caller got its own result")
        print("from asyncio:", anyio.run(from_async_code))
        print("from trio:", anyio.run(from_async_code, backend="trio"))
        stats = score.stats
        print(
            f"stats: completed={stats.completed} batches={stats.total_batches} "
            f"avg_batch_size={stats.avg_batch_size:.1f}"
        )
    try:
        score(1)
    except batched.BatcherClosed:
        print("after `with score:` the function is closed")


if __name__ == "__main__":
    main()
