"""Run the benchmarks: ``python -m benchmarks [--quick] [--out results.json]``."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

from . import burst, cache, closed_loop, inference, latency, open_loop, scale, threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--out", help="write the results as JSON to this file")
    args = parser.parse_args(argv)
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
        (open_loop, {"seconds": 0.4, "repeats": 2} if quick else {"seconds": 2.0, "repeats": 5}),
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
    if args.out:
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "processor": platform.processor(),
        }
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
