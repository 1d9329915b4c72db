"""Scenario 1: many concurrent single-item callers next to native spawn+join.

Every caller is a native task (asyncio.TaskGroup / trio nursery) in both runs, so the
ratio is what batching adds on top of spawning the callers themselves.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import batched


async def _identity(items: list[int]) -> list[int]:
    return items


async def _noop(_: int) -> None:
    pass


def _asyncio_spawn(n: int, loop_factory: Any = None) -> float:
    async def main() -> float:
        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for i in range(n):
                tg.create_task(_noop(i))
        return time.perf_counter() - start

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def _asyncio_batched(n: int, loop_factory: Any = None) -> float:
    async def main() -> float:
        async with batched.Batcher(_identity, batch_size=64, timeout_ms=5) as b:
            start = time.perf_counter()
            async with asyncio.TaskGroup() as tg:
                for i in range(n):
                    tg.create_task(b(i))
            return time.perf_counter() - start

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def _asyncio_decorated(n: int, loop_factory: Any = None) -> float:
    # The decorator outside `async with`: the callers run the batches themselves.
    f = batched.dynamically(batch_size=64, timeout_ms=5)(_identity)

    async def main() -> float:
        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for i in range(n):
                tg.create_task(f(i))
        return time.perf_counter() - start

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def _trio_spawn(n: int) -> float:
    import trio

    async def main() -> float:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(_noop, i, name="caller")
        return time.perf_counter() - start

    return trio.run(main)


def _trio_batched(n: int) -> float:
    import trio

    async def main() -> float:
        async with batched.Batcher(_identity, batch_size=64, timeout_ms=5) as b:
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(b, i, name="caller")
            return time.perf_counter() - start

    return trio.run(main)


def _trio_decorated(n: int) -> float:
    import trio

    f = batched.dynamically(batch_size=64, timeout_ms=5)(_identity)

    async def main() -> float:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(f, i, name="caller")
        return time.perf_counter() - start

    return trio.run(main)


def run(n: int = 20_000, repeats: int = 7) -> list[dict[str, Any]]:
    """Median µs/item of spawn+join and of batched calls, interleaved per repeat."""
    pairs: dict[str, tuple[Any, Any, Any]] = {
        "asyncio": (
            lambda: _asyncio_spawn(n),
            lambda: _asyncio_batched(n),
            lambda: _asyncio_decorated(n),
        ),
        "trio": (lambda: _trio_spawn(n), lambda: _trio_batched(n), lambda: _trio_decorated(n)),
    }
    try:
        import uvloop

        pairs["asyncio+uvloop"] = (
            lambda: _asyncio_spawn(n, uvloop.new_event_loop),
            lambda: _asyncio_batched(n, uvloop.new_event_loop),
            lambda: _asyncio_decorated(n, uvloop.new_event_loop),
        )
    except ImportError:
        pass
    rows = []
    for backend, (spawn, batch, decorated) in pairs.items():
        spawn_times, batch_times, decorated_times = [], [], []
        for _ in range(repeats):
            spawn_times.append(spawn())
            batch_times.append(batch())
            decorated_times.append(decorated())
        spawn_us = statistics.median(spawn_times) / n * 1e6
        batch_us = statistics.median(batch_times) / n * 1e6
        decorated_us = statistics.median(decorated_times) / n * 1e6
        rows.append(
            {
                "scenario": "burst",
                "backend": backend,
                "callers": n,
                "spawn_us_per_item": round(spawn_us, 3),
                "batched_us_per_item": round(batch_us, 3),
                "ratio": round(batch_us / spawn_us, 3),
                "decorator_us_per_item": round(decorated_us, 3),
                "decorator_ratio": round(decorated_us / spawn_us, 3),
                "target_ratio": 2.0,
            }
        )
    return rows
