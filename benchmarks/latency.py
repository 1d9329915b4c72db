"""Scenario 3: latency in real time (``time.perf_counter``), many rounds per backend.

(a) full batch: 31 callers wait in a batcher with ``batch_size=32, timeout_ms=20``;
    1 ms later (well inside the timeout) the 32nd caller comes. Measured: from just
    before the 32nd call to the moment the last of the 32 callers has its result: a full
    batch must leave at once, not when the collector next looks. Target: p50 <= 0.2 ms.
    Reference, in the same rounds: 31 native tasks waiting on an ``anyio.Event`` that the
    32nd sets, from the set to the last one running again.
(b) lone request: one caller, ``timeout_ms=5``, nothing else waiting: the batch leaves
    when the timeout runs out. Measured: the call's latency. Target: p50 <= 5.3 ms.
    Reference, in the same rounds: a bare ``anyio.sleep(0.005)``, the loop's own timer.

p50 is the median of all rounds of a run, then the median of the runs; so is p99.
"""

from __future__ import annotations

import functools
import statistics
from typing import Any

import anyio

import batched

from ._common import native_group, now, percentile, runners

FULL = 32
FULL_TIMEOUT_MS = 20
FULL_TARGET_MS = 0.2
LONE_TIMEOUT_MS = 5
LONE_TARGET_MS = LONE_TIMEOUT_MS + 0.3


async def _identity(items: list[int]) -> list[int]:
    return items


async def _full_batch(rounds: int) -> tuple[list[float], list[float]]:
    """Per round: the batcher's latency, then the same 32 callers on a native event."""
    measured: list[float] = []
    native: list[float] = []
    async with batched.Batcher(_identity, batch_size=FULL, timeout_ms=FULL_TIMEOUT_MS) as b:
        done: list[float] = []
        last = 0.0

        async def caller(i: int) -> None:
            nonlocal last
            if i == FULL - 1:
                last = now()
            if await b(i) != i:
                raise AssertionError(i)
            done.append(now())

        async def waiter(i: int) -> None:
            nonlocal last
            if i == FULL - 1:
                last = now()
                event.set()
            else:
                await event.wait()
            done.append(now())

        for _ in range(rounds + 2):  # the first two rounds warm up
            for task, latencies in ((caller, measured), (waiter, native)):
                done.clear()
                event = anyio.Event()
                async with native_group() as spawn:
                    for i in range(FULL - 1):
                        spawn(task, i)
                    await anyio.sleep(0.001)  # the 31 are waiting; the timeout is far
                    spawn(task, FULL - 1)
                if len(done) != FULL:
                    raise AssertionError(len(done))
                latencies.append(max(done) - last)
    return measured[2:], native[2:]


async def _lone_request(rounds: int) -> tuple[list[float], list[float]]:
    """Per round: the batcher's latency, then a bare sleep of the timeout."""
    measured: list[float] = []
    native: list[float] = []
    async with batched.Batcher(_identity, batch_size=32, timeout_ms=LONE_TIMEOUT_MS) as b:
        for i in range(rounds + 2):
            start = now()
            if await b(i) != i:
                raise AssertionError(i)
            measured.append(now() - start)
            start = now()
            await anyio.sleep(LONE_TIMEOUT_MS / 1000)
            native.append(now() - start)
    return measured[2:], native[2:]


CASES = {
    "full batch": (_full_batch, FULL_TARGET_MS, f"batch_size={FULL} timeout_ms={FULL_TIMEOUT_MS}"),
    "lone request": (_lone_request, LONE_TARGET_MS, f"timeout_ms={LONE_TIMEOUT_MS}"),
}
REFERENCES = {"full batch": "native event", "lone request": "bare sleep"}


def run(rounds: int = 300, repeats: int = 3) -> list[dict[str, Any]]:
    """p50 and p99 in ms per case and backend: medians over ``repeats`` runs of ``rounds``."""
    rows = []
    for case, (measure, target, settings) in CASES.items():
        for backend, runner in runners().items():
            figures: dict[str, list[float]] = {"p50": [], "p99": [], "ref_p50": []}
            for _ in range(repeats):
                latencies, reference = runner(functools.partial(measure, rounds))
                figures["p50"].append(statistics.median(latencies) * 1e3)
                figures["p99"].append(percentile(latencies, 99) * 1e3)
                figures["ref_p50"].append(statistics.median(reference) * 1e3)
            p50, p99, ref = (statistics.median(values) for values in figures.values())
            rows.append(
                {
                    "scenario": "latency",
                    "case": case,
                    "backend": backend,
                    "settings": settings,
                    "rounds": rounds * repeats,
                    "p50_ms": round(p50, 4),
                    "p99_ms": round(p99, 4),
                    "reference": REFERENCES[case],
                    "reference_p50_ms": round(ref, 4),
                    "target_p50_ms": target,
                    "met": p50 <= target,
                }
            )
    return rows


def describe(row: dict[str, Any]) -> str:
    """One printed line per row."""
    return (
        f"{row['scenario']:11s} {row['case']:12s} {row['backend']:15s} {row['settings']:26s}"
        f" p50 {row['p50_ms']:7.3f} ms  p99 {row['p99_ms']:7.3f} ms"
        f" (target p50 <= {row['target_p50_ms']} ms{'' if row['met'] else ', MISSED'});"
        f" {row['reference']} p50 {row['reference_p50_ms']:.3f} ms"
    )


if __name__ == "__main__":
    for result in run(rounds=100, repeats=3):
        print(describe(result))
