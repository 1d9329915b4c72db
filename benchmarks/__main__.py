"""Run the benchmarks: ``python -m benchmarks [--quick] [--out results.json] [--plot DIR]``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from . import (
    burst,
    cache,
    closed_loop,
    continuous,
    inference,
    latency,
    open_loop,
    peers,
    plot,
    pulled,
    scale,
    threads,
)


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` where there is one (Linux), else what
    ``platform`` knows."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):  # x86, then Arm, MIPS
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return " ".join(value.split())
    return platform.processor() or platform.machine() or "unknown"


def meta(quick: bool) -> dict[str, Any]:
    """Where and when the results came from; the plots' captions read it."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count() or 0,
        "platform": platform.platform(),
        "quick": quick,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: every scenario in under 2 minutes"
    )
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument(
        "--plot",
        metavar="DIR",
        help="draw the results' plots (PNG) into this folder; needs matplotlib (extra bench)",
    )
    args = parser.parse_args(argv)
    if args.plot:
        plot.require_matplotlib()  # before minutes of benchmarks, not after
    n, repeats = (2_000, 3) if args.quick else (20_000, 7)
    rows = burst.run(n=n, repeats=repeats)
    for row in rows:
        print(
            f"{row['scenario']:8s} {row['backend']:15s} spawn {row['spawn_us_per_item']:6.2f} µs"
            f"  batched {row['batched_us_per_item']:6.2f} µs  ratio {row['ratio']:.2f}"
            f" (target <= {row['target_ratio']})  decorator {row['decorator_us_per_item']:6.2f} µs"
            f"  ratio {row['decorator_ratio']:.2f}"
        )
    thread_rows = threads.run(calls=100 if args.quick else 1_000, repeats=repeats)
    for row in thread_rows:
        print(
            f"{row['scenario']:8s} {row['front_end']:15s} {row['threads']} threads"
            f" batch_size={row['batch_size']} timeout_ms={row['timeout_ms']}:"
            f" {row['calls_per_s']:7d} calls/s, mean batch {row['mean_batch_size']:.1f}"
        )
    rows += thread_rows
    cache_rows = cache.run(n=n, repeats=repeats)
    for row in cache_rows:
        print(
            f"{row['scenario']:8s} {row['backend']:15s} miss {row['miss_us_per_item']:6.2f} µs"
            f"  hit {row['hit_us_per_item']:6.2f} µs  50% repeated"
            f" {row['half_repeated_us_per_item']:6.2f} µs  hit/miss {row['hit_to_miss']:.2f}"
        )
    rows += cache_rows
    inference_rows = inference.run(quick=args.quick)
    for row in inference_rows:
        print(inference.describe(row))
    rows += inference_rows
    quick = args.quick
    for module, kwargs in (
        (closed_loop, {"rounds": 100, "repeats": 3} if quick else {"rounds": 1_000, "repeats": 7}),
        (latency, {"rounds": 40, "repeats": 3} if quick else {"rounds": 300, "repeats": 3}),
        (
            peers,
            {"n": 2_000, "rounds": 100, "full_rounds": 40, "repeats": 3} if quick else {},
        ),
        (open_loop, {"seconds": 0.4, "repeats": 2} if quick else {"seconds": 2.0, "repeats": 5}),
        (continuous, {"n": 300} if quick else {}),
        (pulled, {"seconds": 0.3, "repeats": 1} if quick else {}),
        (
            scale,
            {
                "sizes": (1_000, 10_000, 100_000),
                "repeats": (1, 5),
                "items_per_size": 100_000,
                "memory_n": 10_000,
                "memory_repeats": 1,
            }
            if quick
            else {},
        ),
    ):
        for row in module.run(**kwargs):
            print(module.describe(row), flush=True)
            rows.append(row)
    results = {"meta": meta(quick), "results": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    if args.plot:
        # On stderr: stdout holds one line per result row.
        for path in plot.render(results, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
