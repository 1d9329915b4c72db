"""Two workers pull batches from one queue: ``Batcher()`` without ``fn`` and ``batches()``.

Run it with ``python examples/two_workers.py`` (asyncio, then trio when installed). Each
worker owns a "device" (here a model that takes 4 ms + 0.2 ms per item) and pulls the
next batch only when it is free: a batch is cut when a worker waits for one, so two
workers serve about twice the load of one. Callers are unchanged: ``await b(item)``.
``batched.current_batch()`` is not needed here: the worker holds the ``Batch``, with each
caller's context (a request id below) and deadline.
"""

from __future__ import annotations

import contextvars
import importlib.util
from collections import Counter
from typing import Any

import anyio

import batched

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="?")


async def worker(name: str, batches: Any, served: Counter[str], seen_ids: set[str]) -> None:
    """One device's loop: take a batch, run the model, answer every caller."""
    async with batches:  # closing it fails what it left unanswered: nobody hangs
        async for batch in batches:
            seen_ids.update(ctx.run(request_id.get) for ctx in batch.contexts)
            await anyio.sleep((4.0 + 0.2 * len(batch)) / 1000)  # the model's time
            batch.set_results([text.upper() for text in batch.items])
            served[name] += len(batch)


async def main() -> None:
    served: Counter[str] = Counter()
    seen_ids: set[str] = set()
    results: dict[int, str] = {}
    b = batched.Batcher[str, str](batch_size=8, timeout_ms=2.0)
    # The workers' task group encloses the batcher's block: leaving the block stops new
    # calls, still cuts what waits, then ends the streams, so the workers' `async for`
    # loops finish on their own and the task group joins them.
    async with anyio.create_task_group() as workers, b:
        for name in ("gpu0", "gpu1"):
            workers.start_soon(worker, name, b.batches(), served, seen_ids)

        async def handle(i: int) -> None:
            request_id.set(f"req-{i}")  # what a web framework's middleware would set
            results[i] = await b(f"request {i}")

        async with anyio.create_task_group() as callers:
            for i in range(200):
                callers.start_soon(handle, i)
    print(f"results: {len(results)}, e.g. {results[7]!r}")
    print(f"both workers served: {'yes' if served['gpu0'] and served['gpu1'] else 'no'}")
    print(f"every caller's request id reached a worker: {len(seen_ids) == 200}")
    stats = b.stats
    print(f"stats: completed={stats.completed} batches={stats.total_batches}")


if __name__ == "__main__":
    for backend in ("asyncio", "trio"):
        if importlib.util.find_spec(backend) is None:
            print(f"{backend}: not installed, skipped")
            continue
        print(f"--- {backend} ---")
        anyio.run(main, backend=backend)
