"""A cache and in-flight dedupe in front of an expensive batch function.

Run it with ``python examples/cache.py``. ``lookup`` stands in for a slow service;
with ``cache=`` a repeated key is answered from the cache at once (``lookup`` never
sees it), and with dedupe (on by default with a cache) equal keys requested at the same
time are computed once. A cache that fails is only a slower path: the item is computed
without it and the error is counted.
"""

from __future__ import annotations

import importlib.util

import anyio

import batched
from batched.cache import MemoryCache

looked_up: list[str] = []  # every key the slow service actually saw


async def lookup(keys: list[str]) -> list[int]:
    looked_up.extend(keys)
    await anyio.sleep(0.05)  # the slow round trip
    return [len(key) * 10 for key in keys]


class FlakyCache:
    """A cache whose server is down: every read and write fails."""

    async def get(self, key: str) -> int | batched.cache.Miss:
        raise ConnectionError("cache server unreachable")

    async def set(self, key: str, value: int) -> None:
        raise ConnectionError("cache server unreachable")

    async def clear(self) -> None:
        pass

    def stats(self) -> batched.cache.CacheStats:
        return batched.cache.CacheStats()


async def main() -> None:
    looked_up.clear()
    cache: MemoryCache[str, int] = MemoryCache(maxsize=1_000, ttl=60.0)
    async with batched.Batcher(lookup, batch_size=32, timeout_ms=5.0, cache=cache) as b:
        results: dict[int, int] = {}

        async def caller(i: int) -> None:
            results[i] = await b(["apple", "kiwi", "banana"][i % 3])

        async with anyio.create_task_group() as tg:  # 30 callers, 3 distinct keys
            for i in range(30):
                tg.start_soon(caller, i)
        print(f"30 concurrent calls, 3 distinct keys: lookup saw {sorted(looked_up)}")

        await b("apple")  # served from the cache: written before the callers got it
        print(f"a repeated key later: lookup saw {len(looked_up)} keys in all")
    stats = b.stats  # after the block: every write has finished
    assert stats.cache_stats is not None
    print(f"cache: hits={stats.cache_stats.hits} size={stats.cache_stats.size}")

    looked_up.clear()
    async with batched.Batcher(lookup, cache=FlakyCache()) as flaky:
        value = await flaky("cherry")  # the read failed, then the write: no harm done
    cache_stats = flaky.stats.cache_stats
    assert cache_stats is not None
    print(f"with a failing cache: {value}, errors counted={cache_stats.errors}")


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.ERROR)  # the failing cache is logged once, at WARNING
    for backend in ("asyncio", "trio"):
        if importlib.util.find_spec(backend) is None:
            print(f"{backend}: not installed, skipped")
            continue
        print(f"--- {backend} ---")
        anyio.run(main, backend=backend)
