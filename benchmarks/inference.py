"""Scenario: ``batched.inference``: model throughput and padding waste.

(a) throughput: the transformer encoder of ``examples/torch_embeddings.py`` (torch, one
    thread), its texts sent by concurrent ``acall`` callers through the example's
    ``@batched.inference.dynamically`` function, next to one model call per text, in the
    same run; reported: texts/s of both and their ratio. Skipped without torch.
(b) padding waste: 2,000 single-row calls of seeded random length 1..512 sent at once
    through ``batched.aio.inference.dynamically`` (an ``async def`` model on asyncio,
    default settings but ``max_batch_length=4096``), with ``Fifo()`` and ``ByLength()``;
    waste = 1 - real tokens / padded tokens (rows x padded length), over every batch the
    model saw. Target: ``ByLength()`` wastes at most 2 %.
(c) fixed shapes: (b) again with ``allowed_batch_sizes=(1, 2, 4, 8, 16, 32)`` and
    ``allowed_lengths=(64, 128, 256, 512)``; the extra waste of filler rows and length
    buckets against the shapes a compiled model must be compiled for: the distinct
    (rows, length) shapes the model saw, free and fixed. Outside ``--quick``, the cost of
    compiling one new shape is measured with ``torch.compile`` (inductor, CPU) on a small
    embedding + MLP model (median over a few fresh shapes, after a first compile that
    warms inductor up), and the compile time of each run's shapes is that x its shapes.
"""

from __future__ import annotations

import gc
import importlib.util
import random
import statistics
import time
from pathlib import Path
from typing import Any

import anyio

import batched
import batched.aio.inference

ROOT = Path(__file__).resolve().parent.parent
WASTE_ITEMS = 2_000
MAX_LENGTH = 512
MAX_BATCH_LENGTH = 4_096
WASTE_TARGET = 0.02
ALLOWED_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
ALLOWED_LENGTHS = (64, 128, 256, 512)


# -- (b) padding waste -------------------------------------------------------------------


def padding_waste(
    strategy: Any, items: int = WASTE_ITEMS, seed: int = 0, fixed: bool = False
) -> dict[str, Any]:
    """Send ``items`` calls at once; the padded and real tokens of every batch (with
    ``fixed``, padded to the allowed batch sizes and lengths)."""
    import numpy as np

    rng = random.Random(seed)
    lengths = [rng.randint(1, MAX_LENGTH) for _ in range(items)]
    calls = [{"input_ids": np.ones((1, n), dtype=np.int32)} for n in lengths]
    seen: list[tuple[int, int, int]] = []  # rows, padded length, real tokens

    shapes: dict[str, Any] = {}
    if fixed:
        shapes = {"allowed_batch_sizes": ALLOWED_BATCH_SIZES, "allowed_lengths": ALLOWED_LENGTHS}

    @batched.aio.inference.dynamically(
        max_batch_length=MAX_BATCH_LENGTH, strategy=strategy, **shapes
    )
    async def model(features: dict[str, Any]) -> Any:
        ids = features["input_ids"]  # padded with 0: the real tokens are the ones
        seen.append((int(ids.shape[0]), int(ids.shape[1]), int(ids.sum())))
        return ids.sum(axis=1)

    async def main() -> None:
        async def one(i: int) -> None:
            out = await model(calls[i])
            if int(out[0]) != lengths[i]:
                raise AssertionError((i, out, lengths[i]))

        async with anyio.create_task_group() as tg:
            for i in range(items):
                tg.start_soon(one, i)

    start = time.perf_counter()
    anyio.run(main, backend="asyncio")
    seconds = time.perf_counter() - start
    padded = sum(rows * length for rows, length, _ in seen)
    real = sum(tokens for _, _, tokens in seen)
    if real != sum(lengths):
        raise AssertionError((real, sum(lengths)))
    over = [(r, n) for r, n, _ in seen if r > 1 and r * n > MAX_BATCH_LENGTH]
    if over:
        raise AssertionError(f"batches over max_batch_length: {over}")
    return {
        "scenario": "inference",
        "case": "padding waste",
        "strategy": type(strategy).__name__,
        "fixed_shapes": fixed,
        "distinct_shapes": len({(rows, length) for rows, length, _ in seen}),
        "items": items,
        "max_batch_length": MAX_BATCH_LENGTH,
        "batches": len(seen),
        "mean_batch_size": round(items / len(seen), 2),
        "real_tokens": real,
        "padded_tokens": padded,
        "waste": round(1 - real / padded, 4),
        "target_waste": WASTE_TARGET if type(strategy) is batched.ByLength and not fixed else None,
        "seconds": round(seconds, 3),
    }


# -- (a) model throughput ----------------------------------------------------------------


def _load_example() -> Any:
    path = ROOT / "examples" / "torch_embeddings.py"
    spec = importlib.util.spec_from_file_location("_torch_embeddings_example", path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def throughput(texts: int, repeats: int) -> dict[str, Any] | None:
    """Median texts/s, batched and one call per text, interleaved per repeat."""
    if importlib.util.find_spec("torch") is None:
        return None
    example = _load_example()
    corpus = example.make_texts(texts)
    batched_s: list[float] = []
    single_s: list[float] = []
    with example.embed:
        anyio.run(example.embed_all, corpus[:8])  # warm up both paths
        for text in corpus[:8]:
            example.embed_one(text)
        gc.collect()
        gc.freeze()  # torch's objects make a full collection slow: keep it out of the timings
        try:
            for _ in range(repeats):
                start = time.perf_counter()
                anyio.run(example.embed_all, corpus)
                batched_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                for text in corpus:
                    example.embed_one(text)
                single_s.append(time.perf_counter() - start)
        finally:
            gc.unfreeze()
    batched_rate = texts / statistics.median(batched_s)
    single_rate = texts / statistics.median(single_s)
    return {
        "scenario": "inference",
        "case": "throughput",
        "model": "2-layer transformer encoder, d_model 64, torch 1 thread",
        "texts": texts,
        "batch_size": 32,
        "batched_texts_per_s": round(batched_rate, 1),
        "single_texts_per_s": round(single_rate, 1),
        "ratio": round(batched_rate / single_rate, 2),
    }


# -- (c) what fixed shapes buy: compiling fewer shapes ------------------------------------


def compile_seconds_per_shape(fresh: int = 3) -> float | None:
    """Median seconds ``torch.compile`` (inductor, CPU, ``dynamic=False``) takes for the
    first call at a new (rows, length) shape, after one compile that warms inductor up;
    None without torch or when it cannot compile here (no C compiler)."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch
    from torch import nn

    torch.set_num_threads(1)
    model = nn.Sequential(
        nn.Embedding(257, 32), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)
    ).eval()
    compiled = torch.compile(model, dynamic=False)
    times = []
    try:
        with torch.inference_mode():
            for rows, length in [(1, 8), *((2 + i, 16 * (i + 1)) for i in range(fresh))]:
                start = time.perf_counter()
                compiled(torch.ones((rows, length), dtype=torch.long))
                times.append(time.perf_counter() - start)
    except Exception:  # inductor's failures vary: the figure is then absent
        return None
    return statistics.median(times[1:])


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    row = throughput(texts=256 if quick else 1_024, repeats=3 if quick else 5)
    if row is not None:
        rows.append(row)
    rows += [padding_waste(batched.Fifo()), padding_waste(batched.ByLength())]
    fixed = [padding_waste(s, fixed=True) for s in (batched.Fifo(), batched.ByLength())]
    per_shape = None if quick else compile_seconds_per_shape()
    for row in rows[-2:] + fixed:
        row["compile_s_per_shape"] = None if per_shape is None else round(per_shape, 3)
        row["compile_s"] = (
            None if per_shape is None else round(per_shape * row["distinct_shapes"], 1)
        )
    return rows + fixed


def describe(row: dict[str, Any]) -> str:
    """One printed line per row."""
    if row["case"] == "throughput":
        return (
            f"{row['scenario']:9s} throughput {row['texts']} texts: batched"
            f" {row['batched_texts_per_s']:8,.0f} texts/s  one call per text"
            f" {row['single_texts_per_s']:8,.0f} texts/s  ratio {row['ratio']:.2f}"
        )
    target = f" (target <= {row['target_waste']:.0%})" if row["target_waste"] is not None else ""
    shapes = "fixed shapes" if row["fixed_shapes"] else "free shapes "
    compiled = (
        f", ~{row['compile_s']:,.0f} s to compile them ({row['compile_s_per_shape']:.2f} s each)"
        if row.get("compile_s") is not None
        else ""
    )
    return (
        f"{row['scenario']:9s} padding waste {row['strategy']:8s} {shapes} {row['items']} items"
        f" max_batch_length={row['max_batch_length']}: {row['batches']} batches,"
        f" mean {row['mean_batch_size']:.1f} rows, waste {row['waste']:.2%}{target};"
        f" {row['distinct_shapes']} distinct shapes{compiled}"
    )


if __name__ == "__main__":
    for result in run(quick=True):
        print(describe(result))
