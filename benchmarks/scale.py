"""Scenario 5: scale: the cost per item with many items waiting, and memory per item.

Cost: ``n`` native caller tasks each send one item into a batcher (``batch_size=64``)
whose ``fn`` is held by an event until every caller has sent its item, so ``n - 64``
items wait at once; then ``fn`` is released and the batcher drains. Measured: submission
µs/item (from the first spawn until the last caller has sent) and drain µs/item (from the
release until every caller has its result), for n = 1k, 10k, 100k and 1M. Target: the
total per item grows at most 1.3x from 1k to the largest n.

Memory (tracemalloc, in a run of its own since tracing slows everything): the traced
bytes held while ``n`` callers wait in the batcher, over ``n``, next to ``n`` native
tasks parked with the backend's bare primitive (see ``_Parking``) in the same run.
The difference is what a waiting item costs beyond the task that waits for it (its call,
which is also the future or the parked task's wake-up, and its place in the queue), next
to a reference that parks in a coroutine of its own: it can be negative, when the call
costs less than that coroutine. Target: at most 500 bytes per waiting item.

Garbage collection stays on (a real server runs with it), after a ``gc.collect()``
before each run.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import tracemalloc
from typing import Any

import anyio
import sniffio

import batched

from ._common import native_group, now, runners

BATCH_SIZE = 64
GROWTH_TARGET = 1.3
BYTES_TARGET = 500


class _Parking:
    """The native reference: tasks parked with the backend's bare primitive (an asyncio
    future each, or ``trio.lowlevel.wait_task_rescheduled``), released all at once."""

    def __init__(self) -> None:
        self.waiters: list[Any] = []
        self.on_trio = sniffio.current_async_library() == "trio"
        self.park = self._park_trio if self.on_trio else self._park_asyncio

    async def _park_asyncio(self, _: int) -> None:
        future = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        await future

    async def _park_trio(self, _: int) -> None:
        import trio

        self.waiters.append(trio.lowlevel.current_task())
        await trio.lowlevel.wait_task_rescheduled(_abort)

    def release(self) -> None:
        waiters, self.waiters = self.waiters, []
        if self.on_trio:
            import trio

            for task in waiters:
                trio.lowlevel.reschedule(task)
        else:
            for future in waiters:
                future.set_result(None)


def _abort(_: Any) -> Any:
    import trio

    return trio.lowlevel.Abort.SUCCEEDED


async def _timed(n: int, wait: Any, release: Any) -> tuple[float, float]:
    """Seconds for ``n`` native tasks to each start and call ``wait(i)``, and then, after
    ``release()``, for all of them to end."""
    all_in = anyio.Event()
    entered = 0

    async def caller(i: int) -> None:
        nonlocal entered
        entered += 1
        if entered == n:
            all_in.set()  # this caller runs on: main wakes after it has sent or parked
        await wait(i)

    async with native_group() as spawn:
        start = now()
        for i in range(n):
            spawn(caller, i)
        await all_in.wait()
        submitted = now()
        release()
    return submitted - start, now() - submitted


def _cost(run: Any, n: int) -> tuple[float, float, float, float]:
    """Submit and drain seconds of ``n`` held items in a batcher, then of ``n`` parked
    native tasks, in one run."""

    async def main() -> tuple[float, float, float, float]:
        gate = anyio.Event()

        async def held(items: list[int]) -> list[int]:
            await gate.wait()
            return items

        async with batched.Batcher(held, batch_size=BATCH_SIZE, timeout_ms=5) as b:

            async def call(i: int) -> None:
                if await b(i) != i:
                    raise AssertionError(i)

            def release() -> None:
                if b.stats.queue_size < n - BATCH_SIZE:
                    raise AssertionError(b.stats.queue_size)
                gate.set()

            submit, drain = await _timed(n, call, release)
        gc.collect()
        parking = _Parking()
        native_submit, native_drain = await _timed(n, parking.park, parking.release)
        return submit, drain, native_submit, native_drain

    gc.collect()
    result: tuple[float, float, float, float] = run(main)
    return result


def _memory(run: Any, n: int) -> tuple[float, float]:
    """Traced bytes per waiting caller: in the batcher, and parked natively."""

    async def main() -> tuple[float, float]:
        gate = anyio.Event()

        async def held(items: list[int]) -> list[int]:
            await gate.wait()
            return items

        async def held_bytes(wait: Any, release: Any) -> float:
            all_in = anyio.Event()
            entered = 0
            per_caller = 0.0

            async def caller(i: int) -> None:
                nonlocal entered
                entered += 1
                if entered == n:
                    all_in.set()
                await wait(i)

            async with native_group() as spawn:
                before = tracemalloc.get_traced_memory()[0]
                for i in range(n):
                    spawn(caller, i)
                await all_in.wait()
                per_caller = (tracemalloc.get_traced_memory()[0] - before) / n
                release()
            return per_caller

        parking = _Parking()
        on_native = await held_bytes(parking.park, parking.release)
        async with batched.Batcher(held, batch_size=BATCH_SIZE, timeout_ms=5) as b:
            in_batcher = await held_bytes(b, gate.set)
        return in_batcher, on_native

    gc.collect()
    tracemalloc.start()
    try:
        result: tuple[float, float] = run(main)
    finally:
        tracemalloc.stop()
    return result


def run(
    sizes: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000),
    repeats: tuple[int, int] = (2, 9),
    items_per_size: int = 300_000,
    memory_n: int = 100_000,
    memory_repeats: int = 3,
) -> list[dict[str, Any]]:
    """Median µs/item per backend and size, next to native parked tasks; bytes per
    waiting item at ``memory_n``.

    Each size runs ``items_per_size // n`` times, within ``repeats`` (least, most): small
    sizes are quick and noisy, 1M takes most of a minute per run.
    """
    rows = []
    for backend, runner in runners().items():
        _cost(runner, 1_000)  # warm up: the first run in a process pays one-time costs
        base = native_base = 0.0
        for n in sizes:
            count = max(repeats[0], min(repeats[1], items_per_size // n))
            samples = [_cost(runner, n) for _ in range(count)]

            per_item = [
                [seconds / n * 1e6 for seconds in sample]
                + [(sample[0] + sample[1]) / n * 1e6, (sample[2] + sample[3]) / n * 1e6]
                for sample in samples
            ]
            submit, drain, _, _, total, native = (
                statistics.median(column) for column in zip(*per_item, strict=True)
            )
            base, native_base = base or total, native_base or native
            rows.append(
                {
                    "scenario": "scale",
                    "case": "cost",
                    "backend": backend,
                    "items_waiting": n,
                    "repeats": count,
                    "submit_us_per_item": round(submit, 3),
                    "drain_us_per_item": round(drain, 3),
                    "total_us_per_item": round(total, 3),
                    "native_us_per_item": round(native, 3),
                    "ratio_to_native": round(total / native, 3),
                    "growth": round(total / base, 3),
                    "native_growth": round(native / native_base, 3),
                    "target_growth": GROWTH_TARGET,
                    "met": total / base <= GROWTH_TARGET,
                }
            )
        memory = [_memory(runner, memory_n) for _ in range(memory_repeats)]
        in_batcher = statistics.median(b for b, _ in memory)
        on_native = statistics.median(e for _, e in memory)
        rows.append(
            {
                "scenario": "scale",
                "case": "memory",
                "backend": backend,
                "items_waiting": memory_n,
                "bytes_per_waiting_caller": round(in_batcher),
                "bytes_per_native_waiter": round(on_native),
                "bytes_per_waiting_item": round(in_batcher - on_native),
                "target_bytes_per_item": BYTES_TARGET,
                "met": in_batcher - on_native <= BYTES_TARGET,
            }
        )
    return rows


def describe(row: dict[str, Any]) -> str:
    """One printed line per row."""
    missed = "" if row["met"] else ", MISSED"
    if row["case"] == "memory":
        return (
            f"{row['scenario']:11s} memory  {row['backend']:15s} {row['items_waiting']:>9,}"
            f" waiting: {row['bytes_per_waiting_caller']} B per caller, native waiter"
            f" {row['bytes_per_native_waiter']} B: {row['bytes_per_waiting_item']} B per item"
            f" (target <= {row['target_bytes_per_item']}{missed})"
        )
    return (
        f"{row['scenario']:11s} cost    {row['backend']:15s} {row['items_waiting']:>9,}"
        f" waiting: submit {row['submit_us_per_item']:6.2f} µs  drain"
        f" {row['drain_us_per_item']:6.2f} µs  total {row['total_us_per_item']:6.2f} µs/item"
        f" x{row['growth']:.2f} of 1k (target <= {row['target_growth']}{missed});"
        f" native {row['native_us_per_item']:6.2f} µs/item x{row['native_growth']:.2f},"
        f" ratio {row['ratio_to_native']:.2f}"
    )


if __name__ == "__main__":
    for result in run(
        sizes=(1_000, 10_000, 100_000),
        repeats=(1, 5),
        items_per_size=100_000,
        memory_n=10_000,
        memory_repeats=1,
    ):
        print(describe(result))
