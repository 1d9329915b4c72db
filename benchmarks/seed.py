"""Head to head with the seed: mixedbread's ``batched`` and this one, in one run.

Both libraries are called ``batched``, so each runs in its own interpreter:
``python -m benchmarks.seed --seed-python /path/to/venv/bin/python`` where that venv has
``pip install batched`` from PyPI (mixedbread's). This file is also the child: run as a
script with ``--child`` it imports whichever ``batched`` its interpreter has and measures,
on asyncio (the seed has no trio), through the API both share,
``batched.aio.dynamically(batch_size=..., timeout_ms=...)`` on an ``async def``:

- burst: N concurrent single-item callers, ``batch_size=64``, ``timeout_ms=5``, µs per item
  next to a native spawn+join of N tasks in the same process;
- closed loop: 64 callers = ``batch_size``, each calling again when answered, µs per item;
- full batch: 32 callers, ``batch_size=32``, ``timeout_ms=20``: p50 ms from the last call
  to all results;
- lone request: one caller, ``timeout_ms=5``: p50 ms.

Every figure is a median of repeats; the two interpreters alternate, repeat by repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


async def _burst(n: int) -> dict[str, float]:
    import batched

    @batched.aio.dynamically(batch_size=64, timeout_ms=5)
    async def fn(items: list[int]) -> list[int]:
        return items

    async def nothing(i: int) -> int:
        return i

    t0 = time.perf_counter()
    await asyncio.gather(*[nothing(i) for i in range(n)])
    spawn = time.perf_counter() - t0
    await fn(0)  # the seed starts its task on the first call
    t0 = time.perf_counter()
    out = await asyncio.gather(*[fn(i) for i in range(n)])
    took = time.perf_counter() - t0
    assert out == list(range(n))
    return {"spawn_us": spawn / n * 1e6, "batched_us": took / n * 1e6}


async def _closed_loop(rounds: int) -> float:
    import batched

    @batched.aio.dynamically(batch_size=64, timeout_ms=5)
    async def fn(items: list[int]) -> list[int]:
        return items

    async def caller(i: int) -> None:
        for _ in range(rounds):
            assert await fn(i) == i

    await fn(0)
    t0 = time.perf_counter()
    await asyncio.gather(*[caller(i) for i in range(64)])
    return (time.perf_counter() - t0) / (64 * rounds) * 1e6


async def _full_batch(rounds: int) -> float:
    import batched

    @batched.aio.dynamically(batch_size=32, timeout_ms=20)
    async def fn(items: list[int]) -> list[int]:
        return items

    await fn(0)
    times = []
    for _ in range(rounds):
        tasks = [asyncio.ensure_future(fn(i)) for i in range(32)]
        await asyncio.sleep(0)  # every caller has called
        t0 = time.perf_counter()
        await asyncio.gather(*tasks)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


async def _lone(rounds: int) -> float:
    import batched

    @batched.aio.dynamically(batch_size=32, timeout_ms=5)
    async def fn(items: list[int]) -> list[int]:
        return items

    await fn(0)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await fn(1)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


async def _child(quick: bool) -> dict[str, Any]:
    import batched

    burst = await _burst(2_000 if quick else 20_000)
    return {
        "library": batched.__file__,
        "burst_spawn_us": burst["spawn_us"],
        "burst_us": burst["batched_us"],
        "burst_ratio": burst["batched_us"] / burst["spawn_us"],
        "closed_loop_us": await _closed_loop(20 if quick else 200),
        "full_batch_p50_ms": await _full_batch(10 if quick else 50),
        "lone_p50_ms": await _lone(10 if quick else 50),
    }


KEYS = ("burst_us", "burst_ratio", "closed_loop_us", "full_batch_p50_ms", "lone_p50_ms")


def run(seed_python: str, repeats: int = 5, quick: bool = False) -> list[dict[str, Any]]:
    """Alternate the two interpreters ``repeats`` times; one row per library (medians)."""
    ours = [sys.executable, __file__]  # with this checkout first on the path, below
    theirs = [seed_python, __file__]
    samples: dict[str, list[dict[str, Any]]] = {"batched (this)": [], "mixedbread batched": []}
    for i in range(repeats):
        pair = [("batched (this)", ours), ("mixedbread batched", theirs)]
        for name, argv in pair if i % 2 == 0 else pair[::-1]:
            args = [*argv, "--child", *(["--quick"] if quick else [])]
            env = dict(os.environ, PYTHONPATH=str(ROOT)) if argv is ours else None
            proc = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
            samples[name].append(json.loads(proc.stdout))
    rows = []
    for name, got in samples.items():
        row: dict[str, Any] = {"scenario": "seed", "library": name, "path": got[0]["library"]}
        row.update({key: statistics.median(s[key] for s in got) for key in KEYS})
        rows.append(row)
    ours_row, seed_row = rows
    ours_row["speedup_vs_seed"] = {key: seed_row[key] / ours_row[key] for key in KEYS}
    return rows


def describe(row: dict[str, Any]) -> str:
    return (
        f"seed     {row['library']:20s} burst {row['burst_us']:6.2f} µs/item"
        f" ({row['burst_ratio']:.2f}x spawn)  closed loop {row['closed_loop_us']:6.2f} µs/item"
        f"  full batch p50 {row['full_batch_p50_ms']:6.3f} ms"
        f"  lone p50 {row['lone_p50_ms']:6.3f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seed")
    parser.add_argument("--seed-python", help="an interpreter with mixedbread's batched")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="write the rows as JSON to this file")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child(args.quick))))
        return 0
    if not args.seed_python:
        parser.error("--seed-python is required (a venv with `pip install batched` from PyPI)")
    rows = run(args.seed_python, args.repeats, args.quick)
    for row in rows:
        print(describe(row))
    print("this / seed:", {k: round(v, 1) for k, v in rows[0]["speedup_vs_seed"].items()})
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
