"""Steering a running batcher: change its settings, and drain it for a shutdown.

Run it with ``python examples/steering.py`` (asyncio, then trio when installed).
``configure`` changes batch_size and timeout_ms while callers keep coming; then a
SIGTERM-style drain: ``stop_accepting()`` turns the readiness probe off and refuses new
calls, while every call already accepted still gets its result.
"""

from __future__ import annotations

import importlib.util

import anyio

import batched

sizes: list[int] = []


async def embed(texts: list[str]) -> list[int]:
    sizes.append(len(texts))
    await anyio.sleep(0.005)
    return [len(text) for text in texts]


async def main() -> None:
    sizes.clear()
    async with batched.Batcher(embed, batch_size=4, timeout_ms=50) as b:
        # Before: small batches of at most 4.
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(b, f"text {i}")
        print(f"batch_size={b.settings.batch_size}: batch sizes {sizes}")

        # An operator raises the batch size and shortens the wait, without a restart.
        b.configure(batch_size=16, timeout_ms=5)
        sizes.clear()
        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(b, f"text {i}")
        print(f"batch_size={b.settings.batch_size}: batch sizes {sizes}")

        # SIGTERM: what a signal handler (or a lifespan's shutdown) calls.
        served: list[int] = []
        refused: list[str] = []

        async def request(text: str) -> None:
            try:
                served.append(await b(text))
            except batched.BatcherClosed:
                refused.append(text)

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(request, f"in flight {i}")
            await anyio.wait_all_tasks_blocked()  # accepted: they wait for their batch
            b.stop_accepting()
            print(f"ready: {b.accepting}")  # a readiness probe reads this
            tg.start_soon(request, "too late")
        print(f"drain: {len(served)} accepted calls served, refused {refused}")
    stats = b.stats
    print(f"stats: completed={stats.completed} failed={stats.failed}")


if __name__ == "__main__":
    for backend in ("asyncio", "trio"):
        if backend == "trio" and importlib.util.find_spec("trio") is None:
            continue
        print(f"--- {backend} ---")
        anyio.run(main, backend=backend)
