"""Fixed shapes for a compiled model: ``allowed_batch_sizes`` and ``allowed_lengths``.

Run it with ``python examples/fixed_shapes.py`` (needs numpy). A model compiled for a few
shapes (``torch.compile``, CUDA graphs, TensorRT, ONNX) should only ever see those. Here
the "model" is a numpy function that refuses any other shape, as a compiled one would
recompile or fail. ``batched.inference`` pads each batch with filler rows of pad tokens
up to the next allowed batch size and each sequence up to the next allowed length; the
fillers' outputs are dropped, so every caller gets exactly its own rows. A text longer
than the largest allowed length fails its own call with a ``ValueError``.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import numpy as np

import batched.aio.inference

BATCH_SIZES = (1, 2, 4, 8, 16)
LENGTHS = (16, 32, 64)
seen: list[tuple[int, int]] = []


@batched.aio.inference.dynamically(
    allowed_batch_sizes=BATCH_SIZES,  # batch_size defaults to the largest: 16
    allowed_lengths=LENGTHS,
    pad_tokens={"input_ids": 0},
    strategy=batched.ByLength(),  # similar lengths together: fewer buckets
    timeout_ms=2,
)
async def model(features: dict[str, Any]) -> np.ndarray:
    ids = features["input_ids"]
    rows, length = ids.shape
    if rows not in BATCH_SIZES or length not in LENGTHS:
        raise RuntimeError(f"compiled for other shapes, got {ids.shape}")
    seen.append((rows, length))
    return (ids != 0).sum(axis=1)  # each row's real token count


async def main() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 64) for _ in range(50)]
    got: dict[int, Any] = {}

    async def caller(i: int) -> None:
        got[i] = await model({"input_ids": np.ones((1, lengths[i]), dtype=np.int64)})

    async with anyio.create_task_group() as tg:
        for i in range(len(lengths)):
            tg.start_soon(caller, i)
    ok = all(int(got[i][0]) == n for i, n in enumerate(lengths))
    print(f"{len(lengths)} callers: each got its own row back: {'yes' if ok else 'no'}")
    print(f"shapes the model saw: {sorted(set(seen))}")
    print(
        f"all allowed: {'yes' if all(r in BATCH_SIZES and n in LENGTHS for r, n in seen) else 'no'}"
    )
    try:
        await model({"input_ids": np.ones((1, 100), dtype=np.int64)})
    except ValueError as exc:
        print(f"a 100-token text: ValueError: {exc}")


if __name__ == "__main__":
    anyio.run(main)
