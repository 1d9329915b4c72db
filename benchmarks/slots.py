"""Several slots: how the waiting rules serve a model that runs batches side by side.

Run it with ``python -m benchmarks.slots [--quick] [--out results.json]`` (not part of
``python -m benchmarks``: it measures a rule, not this machine). A ``batched.Batcher``
with ``max_concurrent_batches=k`` in front of a model whose batch of ``n`` items takes
``a + b·n`` on each slot (several GPU streams, replicas of a remote model), fed Poisson
arrivals (``open_loop.schedule``) at a share of the bound ``k·B / (a + b·B)`` (``B``
= ``BATCH_SIZE``). Everything runs in virtual time (asyncio on
``batched.testing.VirtualTimeLoop``, trio on ``MockClock``): the batcher's own cost is
zero and each figure is exact for its rule on those arrivals, so a run repeats to the
digit. Latency counts from each arrival's scheduled time.

Three rules on the same arrivals: ``timeout_ms=0`` (a batch whenever a slot is free), a
fixed ``timeout_ms=5`` and ``timeout_ms="auto"``. Reported per model, load and rule:
p50 and p99 latency (ms), throughput as a share of the bound, and the mean batch size.
With a large per-batch cost ``a``, sending whatever waits puts every slot to work on
small batches and leaves arrivals queueing behind them; "auto" waits on each free slot
until batches that keep up with the arrivals wait (see ``batched/_core/auto.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any, Literal, NamedTuple

import anyio

import batched
from batched.testing import fresh_backend_options

from ._common import percentile
from .open_loop import schedule

BATCH_SIZE = 32
RULES: tuple[float | Literal["auto"], ...] = (0, 5, "auto")
LOADS = (0.25, 0.5, 0.8, 0.95)


class Model(NamedTuple):
    """``slots`` slots, each running a batch of ``n`` in ``per_batch + per_item·n`` s."""

    slots: int
    per_batch: float
    per_item: float

    @property
    def bound(self) -> float:
        """Items per second with full batches on every slot."""
        return self.slots * BATCH_SIZE / (self.per_batch + self.per_item * BATCH_SIZE)

    def __str__(self) -> str:
        a, b = self.per_batch * 1e3, self.per_item * 1e3
        return f"{self.slots} slots x ({a:g} ms + {b:g} ms/item)"


MODELS = (Model(2, 0.010, 0.0002), Model(4, 0.020, 0.0005), Model(8, 0.020, 0.0005))


async def _play(
    model: Model, rule: float | Literal["auto"], arrivals: list[float]
) -> dict[str, float]:
    sizes: list[int] = []

    async def fn(items: list[int]) -> list[int]:
        sizes.append(len(items))
        await anyio.sleep(model.per_batch + model.per_item * len(items))
        return items

    latencies: list[float] = []
    batcher = batched.Batcher(
        fn,
        batch_size=BATCH_SIZE,
        timeout_ms=rule,
        max_concurrent_batches=model.slots,
    )
    async with batcher as b:
        t0 = anyio.current_time()

        async def call(i: int, at: float) -> None:
            if await b(i) != i:
                raise AssertionError(f"call {i} got another item's result")
            latencies.append(anyio.current_time() - at)

        async with anyio.create_task_group() as tg:
            for i, offset in enumerate(arrivals):
                await anyio.sleep_until(t0 + offset)
                tg.start_soon(call, i, t0 + offset)
        end = anyio.current_time() - t0
    return {
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "throughput": len(arrivals) / end / model.bound,
        "mean_batch": statistics.fmean(sizes),
    }


def play(
    model: Model, rule: float | Literal["auto"], arrivals: list[float], backend: str = "asyncio"
) -> dict[str, float]:
    """One rule on ``arrivals`` (seconds from the start), in virtual time on ``backend``."""
    return anyio.run(
        _play,
        model,
        rule,
        arrivals,
        backend=backend,
        backend_options=fresh_backend_options(backend),
    )


def run(seconds: float = 2.0, seed: int = 1, backend: str = "asyncio") -> list[dict[str, Any]]:
    """Every model, load and rule: one row each."""
    rows: list[dict[str, Any]] = []
    for model in MODELS:
        for load in LOADS:
            arrivals = schedule(load * model.bound, seconds, seed)
            for rule in RULES:
                row = play(model, rule, arrivals, backend)
                rows.append({"model": str(model), "load": load, "rule": str(rule), **row})
    return rows


def describe(row: dict[str, Any]) -> str:
    return (
        f"{row['model']:<34} {row['load']:>4.0%}  {row['rule']:>4}:  p50 {row['p50_ms']:6.1f} ms"
        f"  p99 {row['p99_ms']:6.1f} ms  throughput {row['throughput']:.3f}"
        f"  mean batch {row['mean_batch']:5.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.slots", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="0.5 s of arrivals, not 2 s")
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument("--out", help="write the rows as JSON to this file")
    args = parser.parse_args(argv)
    rows = run(seconds=0.5 if args.quick else 2.0, backend=args.backend)
    for row in rows:
        print(describe(row), flush=True)
    if args.out:
        with open(args.out, "w") as out:
            json.dump(rows, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
