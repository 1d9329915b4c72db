"""``timeout_ms="auto"``: let the batcher choose how long a partial batch waits.

Run it with ``python examples/auto_timeout.py`` (asyncio, then trio when installed).
A model that costs 4 ms per batch, served by two slots. A lone request with the fixed
default (5 ms) waits for company that never comes; with "auto" it leaves at once, since
at that rate nobody else is expected before its batch would be done. Under steady load
(a request each millisecond) the batches fill: while both slots are busy requests
gather, and a slot that frees up while the other is busy waits a moment for more
instead of spending its 4 ms on one item.
"""

from __future__ import annotations

import importlib.util

import anyio

import batched

sizes: list[int] = []


async def model(texts: list[str]) -> list[int]:
    sizes.append(len(texts))
    await anyio.sleep(0.004)  # the device: about 4 ms per batch, whatever its size
    return [len(text) for text in texts]


async def lone_request(timeout_ms: float | str) -> float:
    async with batched.Batcher(
        model,
        timeout_ms=timeout_ms,  # type: ignore[arg-type]
        max_concurrent_batches=2,
    ) as b:
        await b("warm-up")  # "auto" learns the model's cost from its runs
        latencies = []
        for _ in range(3):  # the best of three: a busy machine may delay any one
            await anyio.sleep(0.2)
            start = anyio.current_time()
            await b("hello")
            latencies.append((anyio.current_time() - start) * 1000)
        return min(latencies)


async def steady_load() -> list[int]:
    sizes.clear()
    async with (
        batched.Batcher(model, timeout_ms="auto", max_concurrent_batches=2) as b,
        anyio.create_task_group() as tg,
    ):
        for i in range(300):
            tg.start_soon(b, f"text {i}")
            await anyio.sleep(0.001)
    return sizes[len(sizes) // 2 :]  # once the arrival rate is known


async def main() -> None:
    fixed = await lone_request(5.0)
    auto = await lone_request("auto")
    print(f"a lone request: fixed 5 ms waited for company: {'yes' if fixed >= 5 else 'no'}")
    # Its latency is the model's 4 ms (the event loop's timers may add about 1 ms).
    print(f"a lone request: auto left at once: {'yes' if auto + 2.5 < fixed else 'no'}")
    later = await steady_load()
    mean = sum(later) / len(later)
    print(f"steady load, auto: batches of {mean:.1f} items on average")
    print(f"steady load, auto: more than one item per batch: {'yes' if mean > 1 else 'no'}")


if __name__ == "__main__":
    backends = ["asyncio"] + (["trio"] if importlib.util.find_spec("trio") else [])
    for backend in backends:
        print(f"--- {backend} ---")
        anyio.run(main, backend=backend)
