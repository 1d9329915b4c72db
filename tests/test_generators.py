"""mixedbread's batch generators, on the core: ``BatchGenerator`` and ``AsyncBatchGenerator``."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest
from _helpers import JOIN

from batched.aio.batch_generator import AsyncBatchGenerator, AsyncBatchItem
from batched.batch_generator import BatchGenerator, BatchItem
from batched.cache import MemoryCache


def test_sync_generator_serves_items_from_threads_by_priority() -> None:
    """Real time, small: producers in threads, the loop in this one; every item exactly
    once, lower priority first within what waits."""
    gen: BatchGenerator[int, int] = BatchGenerator(batch_size=4, timeout_ms=1)
    items = [BatchItem(content=i, priority=i % 3) for i in range(40)]
    producers = [threading.Thread(target=gen.extend, args=(items[k::4],)) for k in range(4)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join(JOIN)
    seen: list[int] = []
    for batch in gen.optimal_batches():
        assert 1 <= len(batch) <= 4
        priorities = [item.priority for item in batch]
        assert priorities == sorted(priorities)  # one cut takes the most urgent first
        for item in batch:
            item.set_result(item.content * 2)
            seen.append(item.content)
        if len(seen) == 40:
            gen.stop()
    assert sorted(seen) == list(range(40))
    assert [item.result() for item in items] == [i * 2 for i in range(40)]
    assert len(gen) == 0


def test_sync_generator_stop_wakes_a_blocked_loop() -> None:
    gen: BatchGenerator[int, int] = BatchGenerator(batch_size=2, timeout_ms=5)
    done = threading.Event()

    def loop() -> None:
        assert list(gen.optimal_batches()) == []
        done.set()

    thread = threading.Thread(target=loop)
    thread.start()
    gen.stop()
    thread.join(JOIN)
    assert done.is_set()


def test_sync_generator_checks_its_settings() -> None:
    with pytest.raises(ValueError, match="'batch_size' must be >= 1: 0"):
        BatchGenerator(batch_size=0)


@pytest.mark.anyio
async def test_async_generator_keeps_the_length_budget_and_uses_the_cache(
    anyio_backend_name: str,
) -> None:
    if anyio_backend_name != "asyncio":
        pytest.skip("its items carry asyncio futures: mixedbread's generator is asyncio's")
    cache: MemoryCache[Any, Any] = MemoryCache(100)
    await cache.set("cached", "hit")
    gen: AsyncBatchGenerator[str, str] = AsyncBatchGenerator(
        batch_size=8, timeout_ms=1, cache=cache, max_batch_length=6
    )
    loop = asyncio.get_running_loop()
    items = [
        AsyncBatchItem(content=c, future=loop.create_future())
        for c in ["aaa", "bb", "cc", "d", "cached"]
    ]
    await gen.extend(items)
    assert items[-1].done()
    assert await items[-1].future == "hit"
    assert len(gen) == 4
    batches = []
    with anyio.fail_after(JOIN):
        async for batch in gen.optimal_batches():
            assert sum(len(item) for item in batch) <= 6
            batches.append([item.content for item in batch])
            for item in batch:
                item.set_result(item.content.upper())
            if sum(map(len, batches)) == 4:
                break
    assert sorted(c for b in batches for c in b) == ["aaa", "bb", "cc", "d"]
    await anyio.wait_all_tasks_blocked()  # the cache writes
    assert await cache.get("bb") == "BB"
