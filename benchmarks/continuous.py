"""Continuous (iteration-level) batching vs fixed batching, on the same arrivals.

A simulated generative model: one step over ``n`` items costs ``A + B·n`` ms
(``anyio.sleep``); each item needs a seeded number of steps, uniform in 1..64. Batch 16.

- ``continuous``: ``batched.Continuous``; items join and leave between steps.
- ``fixed``: a ``batched.Batcher`` whose ``fn`` runs its batch step by step until the
  longest item is done, every step over the whole batch (static batching: a finished
  row keeps its slot); callers get their values when the batch ends.
- ``fixed, rows skipped``: the same, but a step costs only the unfinished items (a
  kinder fixed scheme; its slots still idle until the batch ends).

Loads: saturation (every item arrives at once: the scheme's capacity) and an open loop
(seeded Poisson arrivals) at 80 % of the fixed scheme's capacity. Reported: items/s,
p50/p99 latency from arrival to an item's last value, and for ``continuous`` the p50 time
to its first value.

On virtual time (batched.testing's loops): the figures are those of the scheduling
policy, exact and repeatable; real time would take minutes per run and add noise, not
information (the library's own overhead is measured by the other scenarios).
"""

from __future__ import annotations

import random
from typing import Any

import anyio

import batched
from batched.testing import fresh_backend_options

from ._common import percentile

A_MS = 5.0
B_MS = 0.5
BATCH = 16
MAX_STEPS = 64
SEED = 15
BACKENDS = ("asyncio", "trio")


def _cost(n: int) -> float:
    return (A_MS + B_MS * n) / 1000


async def _run_continuous(arrivals: list[float], lengths: list[int]) -> dict[str, Any]:
    async def step(states: list[tuple[int, int]]) -> list[Any]:
        await anyio.sleep(_cost(len(states)))
        return [batched.Last(k) if k + 1 >= n else batched.Next(k, (k + 1, n)) for k, n in states]

    latencies: list[float] = []
    firsts: list[float] = []
    t0 = anyio.current_time()

    async def one(c: batched.Continuous[Any, Any], n: int) -> None:
        start = anyio.current_time()
        first = None
        async with c.stream((0, n)) as values:
            async for _ in values:
                if first is None:
                    first = anyio.current_time() - start
        firsts.append(first or 0.0)
        latencies.append(anyio.current_time() - start)

    async with batched.Continuous(step, batch_size=BATCH) as c:
        async with anyio.create_task_group() as tg:
            for at, n in zip(arrivals, lengths, strict=True):
                await anyio.sleep_until(t0 + at)
                tg.start_soon(one, c, n)
        steps = c.stats.total_batches
        mean_step = c.stats.avg_batch_size
    end = anyio.current_time() - t0
    return {
        **_figures(latencies, end, len(lengths)),
        "first_value_p50_ms": percentile(firsts, 50) * 1000,
        "steps": steps,
        "mean_step_size": mean_step,
    }


async def _run_fixed(arrivals: list[float], lengths: list[int], skip: bool) -> dict[str, Any]:
    async def fn(items: list[int]) -> list[int]:
        if skip:  # a step costs only the rows still running
            await anyio.sleep(sum(_cost(sum(n > k for n in items)) for k in range(max(items))))
        else:
            await anyio.sleep(max(items) * _cost(len(items)))
        return items

    latencies: list[float] = []
    t0 = anyio.current_time()

    async def one(b: batched.Batcher[int, int], n: int) -> None:
        start = anyio.current_time()
        await b(n)
        latencies.append(anyio.current_time() - start)

    async with batched.Batcher(fn, batch_size=BATCH, timeout_ms=0) as b:
        async with anyio.create_task_group() as tg:
            for at, n in zip(arrivals, lengths, strict=True):
                await anyio.sleep_until(t0 + at)
                tg.start_soon(one, b, n)
        batches = b.stats.total_batches
        mean = b.stats.avg_batch_size
    end = anyio.current_time() - t0
    return {
        **_figures(latencies, end, len(lengths)),
        "steps": batches,  # one call of fn per batch
        "mean_step_size": mean,
    }


def _figures(latencies: list[float], end: float, n: int) -> dict[str, Any]:
    return {
        "items": n,
        "items_per_s": n / end,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def _play(backend: str, scheme: str, arrivals: list[float], lengths: list[int]) -> dict[str, Any]:
    result: dict[str, Any] = {}

    async def main() -> None:
        if scheme == "continuous":
            result.update(await _run_continuous(arrivals, lengths))
        else:
            result.update(await _run_fixed(arrivals, lengths, skip=scheme != "fixed"))

    anyio.run(main, backend=backend, backend_options=fresh_backend_options(backend))
    return result


SCHEMES = ("continuous", "fixed", "fixed, rows skipped")


def run(n: int = 2_000) -> list[dict[str, Any]]:
    """Every scheme at saturation, then at 80 % of fixed batching's capacity."""
    rng = random.Random(SEED)
    lengths = [rng.randint(1, MAX_STEPS) for _ in range(n)]
    rows: list[dict[str, Any]] = []
    burst = [0.0] * n
    capacity = 0.0
    for backend in BACKENDS:
        for scheme in SCHEMES:
            row = _play(backend, scheme, burst, lengths)
            if scheme == "fixed":
                capacity = row["items_per_s"]
            rows.append(
                {
                    "scenario": "continuous",
                    "backend": backend,
                    "load": "saturation",
                    "scheme": scheme,
                    **row,
                }
            )
    rate = 0.8 * capacity
    t = 0.0
    arrivals = []
    for _ in range(n):
        t += rng.expovariate(rate)
        arrivals.append(t)
    for backend in BACKENDS:
        for scheme in SCHEMES:
            row = _play(backend, scheme, arrivals, lengths)
            rows.append(
                {
                    "scenario": "continuous",
                    "backend": backend,
                    "load": 0.8,
                    "scheme": scheme,
                    "arrivals_per_s": rate,
                    **row,
                }
            )
    for row in rows:
        same = next(
            other
            for other in rows
            if other["backend"] == row["backend"]
            and other["load"] == row["load"]
            and other["scheme"] == "fixed"
        )
        row["items_per_s_vs_fixed"] = row["items_per_s"] / same["items_per_s"]
        row["p99_vs_fixed"] = row["p99_ms"] / same["p99_ms"]
    return rows


def describe(row: dict[str, Any]) -> str:
    load = row["load"] if isinstance(row["load"], str) else f"{row['load']:.0%} load"
    first = (
        f", first value p50 {row['first_value_p50_ms']:.0f} ms"
        if "first_value_p50_ms" in row
        else ""
    )
    return (
        f"continuous {row['backend']:7s} {load:10s} {row['scheme']:20s}"
        f" {row['items_per_s']:6.1f} items/s ({row['items_per_s_vs_fixed']:.2f}x fixed),"
        f" p50 {row['p50_ms']:6.0f} ms, p99 {row['p99_ms']:6.0f} ms"
        f" ({row['p99_vs_fixed']:.2f}x fixed), mean step {row['mean_step_size']:.1f}{first}"
    )
