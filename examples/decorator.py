"""The decorator: a batch function called one item at a time, on asyncio and trio.

Run it with ``python examples/decorator.py``. ``embed`` takes a list of texts; the
decorated ``embed`` takes one text per call, and concurrent calls share batches. It
needs no setup: outside ``async with embed:`` the waiting callers run the batches
themselves, and nothing keeps running once the last call has returned. Inside
``async with embed:`` (a FastAPI lifespan, say) a task owned by that block does it.
"""

from __future__ import annotations

import importlib.util

import anyio

import batched

batches: list[int] = []  # the size of every batch the model was called with


@batched.dynamically(batch_size=16, timeout_ms=5.0)
async def embed(texts: list[str]) -> list[tuple[int, int]]:
    """A stand-in model: one "vector" per text, in the same order."""
    batches.append(len(texts))
    await anyio.sleep(0.01)  # one round trip per batch, not per text
    return [(len(text), sum(map(ord, text)) % 97) for text in texts]


class Classifier:
    """A model held by an object: each instance batches its own calls."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold

    @batched.dynamically(batch_size=8)
    async def label(self, numbers: list[int]) -> list[str]:
        return ["big" if n >= self.threshold else "small" for n in numbers]


async def main() -> None:
    batches.clear()
    results: dict[int, tuple[int, int]] = {}

    async def caller(i: int) -> None:
        results[i] = await embed(f"text {i}")

    # Without `async with`: the callers drive the batching.
    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(caller, i)
    print(f"caller-driven: {len(results)} results, batch sizes {batches}")

    # A list is many items in one call; `embed.one` sends a list as one item.
    print("a list:", await embed(["a", "bb", "ccc"]))

    # With `async with`: a task owned by the block collects the batches.
    batches.clear()
    async with embed, anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(caller, i)
    print(f"owned by a block: batch sizes {batches}")

    strict, lenient = Classifier(10), Classifier(100)
    print("two instances:", await strict.label(50), await lenient.label(50))

    stats = embed.stats
    print(f"stats: completed={stats.completed} batches={stats.total_batches}")


if __name__ == "__main__":
    for backend in ("asyncio", "trio"):
        if importlib.util.find_spec(backend) is None:
            print(f"{backend}: not installed, skipped")
            continue
        print(f"--- {backend} ---")
        anyio.run(main, backend=backend)
