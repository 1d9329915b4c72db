"""Quickstart: many concurrent callers share one batch function.

Run it with ``python examples/quickstart.py``: it runs on asyncio, then on trio when
trio is installed. ``embed`` stands in for a model that is much cheaper per item when it
gets many items at once (a GPU model, a database query, an HTTP API with a bulk endpoint).
"""

from __future__ import annotations

import importlib.util

import anyio

import batched

calls: list[int] = []  # the size of each batch `embed` was called with


async def embed(texts: list[str]) -> list[list[float]]:
    """The batch function: one "vector" per text, in the same order."""
    calls.append(len(texts))
    await anyio.sleep(0.01)  # the cost of one round trip, paid once per batch
    return [[float(len(text)), float(sum(map(ord, text)) % 97)] for text in texts]


async def main() -> None:
    calls.clear()
    async with batched.Batcher(embed, batch_size=16, timeout_ms=5.0) as embedder:
        results: dict[str, list[float]] = {}

        async def one_caller(text: str) -> None:
            # Each caller awaits its own item; the batcher groups concurrent callers.
            results[text] = await embedder(text)

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one_caller, f"sentence number {i}")

        # A list of items as one call: results come back in input order.
        many = await embedder.many(["alpha", "beta", "gamma"])

    print(f"{len(results)} single calls, e.g. {results['sentence number 7']}")
    print(f"many(): {many}")
    print(f"batch sizes seen by embed: {calls}")
    stats = embedder.stats  # a snapshot; still readable after the block
    print(
        f"stats: completed={stats.completed} batches={stats.total_batches} "
        f"avg_batch_size={stats.avg_batch_size:.1f} "
        f"latency p50={stats.latency_p50_ms:.1f} ms p99={stats.latency_p99_ms:.1f} ms"
    )


if __name__ == "__main__":
    for backend in ("asyncio", "trio"):
        if importlib.util.find_spec(backend) is None:
            print(f"{backend}: not installed, skipped")
            continue
        print(f"--- {backend} ---")
        anyio.run(main, backend=backend)
