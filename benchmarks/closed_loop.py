"""Scenario 2: a closed loop: 64 callers, ``batch_size=64``, each calling again at once.

Every caller is a native task that sends one item, waits for its result and sends the
next, so a batch fills when the last caller of the previous batch is back. Reported:
µs per item (the run's wall time over the items answered), with a trivial ``fn``.

Reference, in the same run: the bare hand-off, the floor of any batcher on the backend:
64 native tasks each park on the backend's primitive (an asyncio future, or
``trio.lowlevel.wait_task_rescheduled``) and the 64th to arrive wakes them all directly,
with no collector, no batch function and no bookkeeping.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import sniffio

import batched

from ._common import native_group, now, runners

CALLERS = 64
TARGET_US = {"asyncio": 3.0, "asyncio+uvloop": 3.0, "trio": 4.0}


async def _identity(items: list[int]) -> list[int]:
    return items


async def _floor(rounds: int) -> float:
    """Seconds for ``rounds`` bare hand-offs by each of the callers."""
    pending: list[Any] = []
    if sniffio.current_async_library() == "trio":
        import trio

        reschedule, current_task = trio.lowlevel.reschedule, trio.lowlevel.current_task
        wait, succeeded = trio.lowlevel.wait_task_rescheduled, trio.lowlevel.Abort.SUCCEEDED
        checkpoint = trio.lowlevel.checkpoint

        def abort(_: Any) -> Any:
            return succeeded

        async def caller(calls: int) -> None:
            for _ in range(calls):
                if len(pending) == CALLERS - 1:  # the last one wakes the others, then yields
                    for task in pending:
                        reschedule(task)
                    pending.clear()
                    await checkpoint()
                else:
                    pending.append(current_task())
                    await wait(abort)
    else:
        loop = asyncio.get_running_loop()

        async def caller(calls: int) -> None:
            for _ in range(calls):
                future = loop.create_future()
                pending.append(future)
                if len(pending) == CALLERS:
                    for waiter in pending:
                        waiter.set_result(None)
                    pending.clear()
                await future

    elapsed = 0.0
    for calls in (max(rounds // 10, 1), rounds):  # the first pass warms up
        start = now()
        async with native_group() as spawn:
            for _ in range(CALLERS):
                spawn(caller, calls)
        elapsed = now() - start
    return elapsed


def _once(run: Any, rounds: int) -> tuple[float, float, float]:
    """Seconds for ``rounds`` calls by each caller, after an untimed warm-up; mean batch;
    seconds for as many bare hand-offs."""

    async def main() -> tuple[float, float, float]:
        async with batched.Batcher(_identity, batch_size=CALLERS, timeout_ms=5) as b:

            async def caller(k: int, calls: int) -> None:
                for j in range(calls):
                    if await b(j) != j:
                        raise AssertionError((k, j))

            elapsed = 0.0
            for calls in (max(rounds // 10, 1), rounds):  # the first pass warms up
                start = now()
                async with native_group() as spawn:
                    for k in range(CALLERS):
                        spawn(caller, k, calls)
                elapsed = now() - start
            mean_batch = b.stats.avg_batch_size
        return elapsed, mean_batch, await _floor(rounds)

    result: tuple[float, float, float] = run(main)
    return result


def run(rounds: int = 1_000, repeats: int = 7) -> list[dict[str, Any]]:
    """Median µs/item per backend over ``repeats`` runs of ``rounds`` calls per caller."""
    rows = []
    for backend, runner in runners().items():
        samples = [_once(runner, rounds) for _ in range(repeats)]
        us, floor = (
            statistics.median(sample[k] for sample in samples) / (CALLERS * rounds) * 1e6
            for k in (0, 2)
        )
        target = TARGET_US[backend]
        rows.append(
            {
                "scenario": "closed_loop",
                "backend": backend,
                "callers": CALLERS,
                "batch_size": CALLERS,
                "items": CALLERS * rounds,
                "us_per_item": round(us, 3),
                "mean_batch_size": round(statistics.median(sample[1] for sample in samples), 2),
                "floor_us_per_item": round(floor, 3),
                "ratio_to_floor": round(us / floor, 3),
                "target_us_per_item": target,
                "met": us <= target,
            }
        )
    return rows


def describe(row: dict[str, Any]) -> str:
    """One printed line per row."""
    return (
        f"{row['scenario']:11s} {row['backend']:15s} {row['callers']} callers,"
        f" batch_size={row['batch_size']}: {row['us_per_item']:6.2f} µs/item"
        f" (target <= {row['target_us_per_item']}{'' if row['met'] else ', MISSED'}),"
        f" mean batch {row['mean_batch_size']:.1f}; bare hand-off {row['floor_us_per_item']:5.2f}"
        f" µs/item, ratio {row['ratio_to_floor']:.2f}"
    )


if __name__ == "__main__":
    for result in run(rounds=200, repeats=3):
        print(describe(result))
