"""Side by side with aiodataloader (the DataLoader pattern), in one run, on asyncio.

aiodataloader 0.4.3 is the simplest peer on the per-item path: ``load(key)`` returns a
future and the queue is dispatched on the next loop iteration. It does less (no time
window, no cancellation handling, no queue bound), but a user choosing between the two
sees only these numbers. Both run through the same scenario code, alternating per
repeat; aiodataloader with ``cache=False`` (every call is loaded) and
``max_batch_size`` equal to our ``batch_size``.

- burst: ``n`` concurrent native tasks, one call each, ``batch_size=64``: µs per item.
- closed loop: ``callers`` native tasks (64 and 1,024), each calling again as soon as it
  has its result, ``batch_size=callers``: µs per item.
- full batch: 32 callers arrive in one loop iteration, ``batch_size=32``: from the first
  call to the last result, p50 over the rounds, in ms.

Ours is also run on trio (aiodataloader is asyncio only): the target is each trio figure
within 1.3x of our asyncio one.
"""

from __future__ import annotations

import functools
import importlib.util
import statistics
from typing import TYPE_CHECKING, Any

import batched

from ._common import native_group, now, runners

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

BURST_BATCH = 64
FULL = 32


async def _identity(items: list[int]) -> list[int]:
    return items


def _loader(batch_size: int) -> Any:
    """An aiodataloader DataLoader over the identity, or None where it is not installed."""
    try:
        from aiodataloader import DataLoader
    except ImportError:
        return None
    return DataLoader(_identity, max_batch_size=batch_size, cache=False)


# Each system is an async context manager factory giving ``call(item) -> awaitable``.


class _Ours:
    def __init__(self, batch_size: int) -> None:
        self.batcher = batched.Batcher(_identity, batch_size=batch_size, timeout_ms=5)

    async def __aenter__(self) -> Callable[[int], Awaitable[int]]:
        await self.batcher.__aenter__()
        return self.batcher

    async def __aexit__(self, *exc: object) -> None:
        await self.batcher.__aexit__(None, None, None)


class _Theirs:
    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    async def __aenter__(self) -> Callable[[int], Awaitable[int]]:
        loader = _loader(self.batch_size)
        return loader.load  # type: ignore[no-any-return]

    async def __aexit__(self, *exc: object) -> None:
        pass


SYSTEMS: dict[str, type[_Ours] | type[_Theirs]] = {"batched": _Ours, "aiodataloader": _Theirs}


async def _burst(system: Any, n: int) -> float:
    async with system(BURST_BATCH) as call:

        async def caller(i: int) -> None:  # a task awaits each call, as users write it
            await call(i)

        start = now()
        async with native_group() as spawn:
            for i in range(n):
                spawn(caller, i)
        return (now() - start) / n * 1e6


async def _closed_loop(system: Any, callers: int, rounds: int) -> float:
    async with system(callers) as call:

        async def caller(calls: int) -> None:
            for j in range(calls):
                if await call(j) != j:
                    raise AssertionError(j)

        elapsed = 0.0
        for calls in (max(rounds // 10, 1), rounds):  # the first pass warms up
            start = now()
            async with native_group() as spawn:
                for _ in range(callers):
                    spawn(caller, calls)
            elapsed = now() - start
        return elapsed / (callers * rounds) * 1e6


async def _full_batch(system: Any, rounds: int) -> float:
    latencies: list[float] = []
    async with system(FULL) as call:
        done: list[float] = []

        async def caller(i: int) -> None:
            if await call(i) != i:
                raise AssertionError(i)
            done.append(now())

        for _ in range(rounds + 2):  # the first two rounds warm up
            done.clear()
            start = now()
            async with native_group() as spawn:
                for i in range(FULL):
                    spawn(caller, i)
            latencies.append(max(done) - start)
    return statistics.median(latencies[2:]) * 1e3


def _cases(n: int, rounds: int, full_rounds: int) -> dict[str, tuple[Callable[..., Any], str]]:
    return {
        "burst": (lambda s: _burst(s, n), f"{n} callers, batch_size={BURST_BATCH}: µs/item"),
        "closed loop 64": (
            lambda s: _closed_loop(s, 64, rounds),
            "64 callers, batch_size=64: µs/item",
        ),
        "closed loop 1024": (
            lambda s: _closed_loop(s, 1024, max(rounds // 16, 2)),
            "1,024 callers, batch_size=1024: µs/item",
        ),
        "full batch": (
            lambda s: _full_batch(s, full_rounds),
            f"{FULL} callers at once, batch_size={FULL}: p50 ms",
        ),
    }


def run(
    n: int = 20_000, rounds: int = 1_000, full_rounds: int = 300, repeats: int = 5
) -> list[dict[str, Any]]:
    """Median figure per case, system and backend; systems alternate in every repeat."""
    on = runners()
    available = dict(SYSTEMS)
    if importlib.util.find_spec("aiodataloader") is None:  # in the bench and test extras
        del available["aiodataloader"]
    rows = []
    for case, (measure, unit) in _cases(n, rounds, full_rounds).items():
        samples: dict[tuple[str, str], list[float]] = {}
        for _ in range(repeats):
            for backend in ("asyncio", "trio"):
                for name, system in available.items():
                    if name == "aiodataloader" and backend != "asyncio":
                        continue
                    figure = on[backend](functools.partial(measure, system))
                    samples.setdefault((name, backend), []).append(figure)
        ours = statistics.median(samples[("batched", "asyncio")])
        theirs = (
            statistics.median(samples[("aiodataloader", "asyncio")])
            if ("aiodataloader", "asyncio") in samples
            else None
        )
        for (name, backend), values in samples.items():
            figure = statistics.median(values)
            row: dict[str, Any] = {
                "scenario": "peers",
                "case": case,
                "system": name,
                "backend": backend,
                "unit": unit,
                "figure": round(figure, 4),
                "repeats": repeats,
            }
            if name == "batched" and backend == "asyncio" and theirs is not None:
                # Per repeat ratios would pair runs; medians of each side are steadier.
                row["to_aiodataloader"] = round(figure / theirs, 3)
            if name == "batched" and backend == "trio":
                row["to_asyncio"] = round(figure / ours, 3)
            rows.append(row)
    return rows


def describe(row: dict[str, Any]) -> str:
    """One printed line per row."""
    extra = ""
    if "to_aiodataloader" in row:
        extra = f"  x{row['to_aiodataloader']:.2f} aiodataloader"
    if "to_asyncio" in row:
        extra = f"  x{row['to_asyncio']:.2f} our asyncio"
    return (
        f"{row['scenario']:8s} {row['case']:16s} {row['system']:13s} {row['backend']:8s}"
        f" {row['figure']:9.3f}  ({row['unit']}){extra}"
    )


if __name__ == "__main__":
    import sys

    quick = "--quick" in sys.argv
    kwargs: dict[str, Any] = (
        {"n": 2_000, "rounds": 100, "full_rounds": 40, "repeats": 3} if quick else {}
    )
    for result in run(**kwargs):
        print(describe(result), flush=True)
