"""Callers' deadlines: early dispatch, earliest deadline first, and expired requests.

Run it with ``python examples/deadlines.py`` (asyncio, then trio when installed).

A caller's deadline is its own cancel scope's (``anyio.fail_after``, a web framework's
request timeout): no parameter is added to calls. The batcher waits up to 1 s for a
batch to fill, but a caller whose deadline is nearer gets its batch sent early enough
for the model's measured cost; with ``ByDeadline`` the most urgent requests go first;
and a request whose deadline passes while it waits never reaches the model.
"""

from __future__ import annotations

import importlib.util

import anyio

import batched

seen: list[list[str]] = []


async def model(texts: list[str]) -> list[int]:
    seen.append(list(texts))
    # The first batch loads the model (slow); then 20 ms a batch, or 300 ms for "long".
    await anyio.sleep(0.3 if len(seen) == 1 or "long" in texts else 0.02)
    return [len(text) for text in texts]


async def main() -> None:
    seen.clear()
    reasons: list[str] = []

    def on_batch(info: batched.BatchInfo) -> None:
        reasons.append(info.reason)

    async with batched.Batcher(
        model,
        batch_size=32,
        timeout_ms=1000,  # a partial batch waits up to 1 s for company...
        max_wait_ms=5000,
        strategy=batched.ByDeadline(),
        on_batch=on_batch,
    ) as b:
        await b("warm up")  # no deadline: it waits out timeout_ms

        # ...unless a caller's deadline is nearer: its batch leaves in time for the
        # model's measured cost (plus a margin), and the caller gets its result.
        with anyio.fail_after(0.5):
            result = await b("urgent")
        print(f"with a 500 ms deadline: result {result}, batch reason {reasons[-1]!r}")

        b.configure(timeout_ms=0)  # from now on batches leave at once when the model is free
        async with anyio.create_task_group() as tg:
            tg.start_soon(b, "long")  # the model is busy for 300 ms
            await anyio.wait_all_tasks_blocked()

            async def request(text: str, seconds: float) -> None:
                with anyio.move_on_after(seconds) as scope:
                    await b(text)
                if scope.cancelled_caught:
                    print(f"{text!r} timed out while it waited")

            # Meanwhile requests arrive, one at a time; when the model is free, the
            # earliest deadlines leave first.
            for text, seconds in (
                ("in 3 s", 3.0),
                ("in 0.1 s", 0.1),
                ("in 1 s", 1.0),
                ("in 2 s", 2.0),
            ):
                tg.start_soon(request, text, seconds)
                await anyio.wait_all_tasks_blocked()
        print(f"next batch, earliest deadline first: {seen[-1]}")
        reached = any("in 0.1 s" in texts for texts in seen)
        print(f"the expired request reached the model: {reached}")
    stats = b.stats
    print(f"stats: completed={stats.completed} cancelled={stats.cancelled}")


if __name__ == "__main__":
    for backend in ("asyncio", "trio"):
        if backend == "trio" and importlib.util.find_spec("trio") is None:
            continue
        print(f"--- {backend} ---")
        anyio.run(main, backend=backend)
