"""Cache scenario: the cost per item of a cache hit next to a miss, in one run.

20,000 concurrent single-item callers through a trivial batch function with a
``MemoryCache``: first all distinct keys (every item a miss, computed and stored),
then the same keys again (every item a hit), then a mix with 50% repeated keys.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import anyio
import sniffio

import batched
from batched.cache import MemoryCache


async def _identity(items: list[int]) -> list[int]:
    return items


async def _burst(b: batched.Batcher[int, int], keys: list[int]) -> float:
    # Native task groups, as in the burst scenario: anyio's start_soon costs more than
    # what is measured here.
    start = time.perf_counter()
    if sniffio.current_async_library() == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(b, key)
    else:
        async with asyncio.TaskGroup() as tg:
            for key in keys:
                tg.create_task(b(key))
    return time.perf_counter() - start


def _once(n: int, backend: str) -> tuple[float, float, float]:
    async def main() -> tuple[float, float, float]:
        cache: MemoryCache[int, int] = MemoryCache(maxsize=4 * n)
        async with batched.Batcher(_identity, batch_size=64, timeout_ms=5, cache=cache) as b:
            miss = await _burst(b, list(range(n)))
            await anyio.sleep(0.05)  # let the writes of the last batches finish
            hit = await _burst(b, list(range(n)))
            half = await _burst(b, [k if k % 2 else n + k for k in range(n)])
        return miss, hit, half

    return anyio.run(main, backend=backend)


def run(n: int = 20_000, repeats: int = 5) -> list[dict[str, Any]]:
    rows = []
    for backend in ("asyncio", "trio"):
        samples = [_once(n, backend) for _ in range(repeats)]
        columns = zip(*samples, strict=True)
        miss, hit, half = (statistics.median(column) / n * 1e6 for column in columns)
        rows.append(
            {
                "scenario": "cache",
                "backend": backend,
                "callers": n,
                "miss_us_per_item": round(miss, 3),
                "hit_us_per_item": round(hit, 3),
                "half_repeated_us_per_item": round(half, 3),
                "hit_to_miss": round(hit / miss, 3),
            }
        )
    return rows
