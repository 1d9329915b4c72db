"""Scenario: pulled batches, two simulated devices against one.

A ``Batcher`` without ``fn``; each consumer of ``b.batches()`` is a device whose model
takes ``a + b·n`` ms for a batch of ``n`` (``anyio.sleep``: the device works, the loop
is free). ``callers`` tasks each send items back to back (closed loop, saturation), for
``seconds``; measured: items/s with one consumer and with two, in the same run,
alternating, medians over ``repeats``. Target: two devices give >= 1.8x the items/s.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import anyio

import batched

A_MS = 4.0
B_MS = 0.1
BATCH_SIZE = 32
TARGET = 1.8


async def _device(batches: Any) -> None:
    async with batches:
        async for batch in batches:
            await anyio.sleep((A_MS + B_MS * len(batch)) / 1000)
            batch.set_results(batch.items)


async def _throughput(consumers: int, callers: int, seconds: float) -> float:
    done = 0
    b = batched.Batcher[int, int](batch_size=BATCH_SIZE, timeout_ms=2.0)
    async with anyio.create_task_group() as devices, b:
        for _ in range(consumers):
            devices.start_soon(_device, b.batches())
        stop = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await b(1)
                done += 1

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(callers):
                tg.start_soon(caller)
        elapsed = time.perf_counter() - start
    return done / elapsed


def run(seconds: float = 2.0, repeats: int = 5, callers: int = 256) -> list[dict[str, Any]]:
    """Items/s with one and with two consumers, interleaved, per backend."""
    rows = []
    for backend in ("asyncio", "trio"):
        rates: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(repeats):
            for consumers in (1, 2):
                rates[consumers].append(
                    anyio.run(_throughput, consumers, callers, seconds, backend=backend)
                )
        one, two = statistics.median(rates[1]), statistics.median(rates[2])
        rows.append(
            {
                "scenario": "pulled",
                "backend": backend,
                "batch_size": BATCH_SIZE,
                "device_ms": f"{A_MS} + {B_MS}*n",
                "one_device_items_per_s": one,
                "two_devices_items_per_s": two,
                "speedup": two / one,
                "target": TARGET,
            }
        )
    return rows


def describe(row: dict[str, Any]) -> str:
    return (
        f"pulled   {row['backend']:15s} 1 device {row['one_device_items_per_s']:8.0f} items/s"
        f"  2 devices {row['two_devices_items_per_s']:8.0f} items/s"
        f"  x{row['speedup']:.2f} (target >= {row['target']})"
    )
