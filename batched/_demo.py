"""``python -m batched demo``: one CPU-bound numpy model served one call per item, then
batched, to many concurrent callers; prints what was measured.

The model is a 2-layer perceptron, ``relu(x @ w1) @ w2``. For one item that is two
matrix-vector products, each reading every weight to produce a single row; for a batch it
is two matrix products that read the weights once for all rows. That is why batching pays:
the per-item cost of the batched form is much lower, and the batcher makes many
independent callers share it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import TYPE_CHECKING, final

import anyio
import attrs

from ._batcher import Batcher

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Vector = NDArray[np.float32]

__all__ = ["add_arguments", "run"]

_BACKENDS = ("asyncio", "trio")
# One BLAS thread unless the user says otherwise: the comparison is about the work per
# item, and multi-threaded BLAS on a small or shared machine mostly measures threads
# spinning against each other (seen here: a 64-row product 15x slower on 2 threads).
_BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@final
class MLP:
    """``relu(x @ w1 + b1) @ w2 + b2`` with fixed random float32 weights.

    A plain (sync) function: the batcher runs it in a worker thread, and numpy releases
    the GIL while it multiplies, so the event loop keeps taking callers meanwhile.
    """

    def __init__(self, dim: int, hidden: int, seed: int = 0) -> None:
        import numpy as np

        rng = np.random.default_rng(seed)
        self.w1 = (rng.standard_normal((dim, hidden)) / np.sqrt(dim)).astype(np.float32)
        self.b1 = rng.standard_normal(hidden).astype(np.float32)
        self.w2 = (rng.standard_normal((hidden, dim)) / np.sqrt(hidden)).astype(np.float32)
        self.b2 = rng.standard_normal(dim).astype(np.float32)

    def forward(self, x: Vector) -> Vector:
        """The model on one vector or on a stack of them (one row each)."""
        import numpy as np

        hidden = np.maximum(x @ self.w1 + self.b1, np.float32(0))
        out: Vector = hidden @ self.w2 + self.b2
        return out

    def __call__(self, xs: list[Vector]) -> list[Vector]:
        """The batch function: one output row per input vector, in order."""
        import numpy as np

        return list(self.forward(np.stack(xs)))


@final
@attrs.frozen
class Measurement:
    """What one run of all callers through one batcher measured."""

    batch_size: int
    items: int
    seconds: float
    batches: int
    avg_batch_size: float
    latency_p50_ms: float
    latency_p99_ms: float

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")


async def _serve(
    model: MLP, inputs: list[Vector], batch_size: int, timeout_ms: float
) -> tuple[Measurement, list[Vector]]:
    """All callers at once, each awaiting its own vector's output through one batcher."""
    outputs: list[Vector | None] = [None] * len(inputs)
    async with Batcher(model, batch_size=batch_size, timeout_ms=timeout_ms) as batcher:

        async def caller(index: int) -> None:
            outputs[index] = await batcher(inputs[index])

        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for index in range(len(inputs)):
                tg.start_soon(caller, index)
        seconds = anyio.current_time() - start
        stats = batcher.stats
    done = [out for out in outputs if out is not None]
    if len(done) != len(inputs) or stats.completed != len(inputs):
        msg = f"only {stats.completed} of {len(inputs)} callers got a result"
        raise RuntimeError(msg)
    measurement = Measurement(
        batch_size=batch_size,
        items=len(inputs),
        seconds=seconds,
        batches=stats.total_batches,
        avg_batch_size=stats.avg_batch_size,
        latency_p50_ms=stats.latency_p50_ms,
        latency_p99_ms=stats.latency_p99_ms,
    )
    return measurement, done


def _line(label: str, m: Measurement) -> str:
    return (
        f"  {label:<34} {m.items_per_second:>11,.0f} items/s"
        f"  {m.batches:>5} batches of {m.avg_batch_size:5.1f}"
        f"  latency p50 {m.latency_p50_ms:8.2f} ms  p99 {m.latency_p99_ms:8.2f} ms"
    )


async def _compare(model: MLP, inputs: list[Vector], batch_size: int, timeout_ms: float) -> bool:
    import numpy as np

    # Warm up BLAS and the worker thread, so neither run pays for the other's start-up.
    model(inputs[: min(len(inputs), batch_size)])
    await _serve(model, inputs[:8], 1, timeout_ms)

    single, single_out = await _serve(model, inputs, 1, timeout_ms)
    batched, batched_out = await _serve(model, inputs, batch_size, timeout_ms)
    print(_line("one call per item (batch_size=1)", single))
    print(_line(f"batched (batch_size={batch_size})", batched))
    # Each caller must get its own vector's output, whichever batch it travelled in.
    expected = model.forward(np.stack(inputs))
    same = all(
        np.allclose(out, want, rtol=1e-4, atol=1e-4)
        for outs in (single_out, batched_out)
        for out, want in zip(outs, expected, strict=True)
    )
    speed_up = batched.items_per_second / single.items_per_second
    print(f"  speed-up: {speed_up:.1f}x; every caller got its own row: {'yes' if same else 'NO'}")
    return same


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"must be an int >= 1: {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):  # also rejects NaN
        msg = f"must be a finite number of milliseconds >= 0: {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's command-line options."""
    parser.add_argument(
        "--callers",
        type=_positive_int,
        default=None,
        help="concurrent callers (default 2000; 200 quick)",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=64, help="batch size (default 64)"
    )
    parser.add_argument(
        "--timeout-ms", type=_milliseconds, default=5.0, help="batching timeout (default 5 ms)"
    )
    parser.add_argument(
        "--backend",
        choices=("all", *_BACKENDS),
        default="all",
        help="event loop to run on (default: asyncio, and trio when it is installed)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")


def run(args: argparse.Namespace) -> int:
    """Run the demo as ``args`` say; return the exit status."""
    if "numpy" not in sys.modules:  # the thread count is read when numpy loads BLAS
        for name in _BLAS_THREAD_VARS:
            os.environ.setdefault(name, "1")
    try:
        import numpy as np
    except ImportError:
        print("the demo needs numpy: pip install numpy", file=sys.stderr)
        return 1

    callers: int = args.callers if args.callers is not None else (200 if args.quick else 2000)
    if args.backend == "all":
        backends = [b for b in _BACKENDS if importlib.util.find_spec(b) is not None]
    elif importlib.util.find_spec(args.backend) is None:
        print(
            f"--backend {args.backend} needs {args.backend}: pip install {args.backend}",
            file=sys.stderr,
        )
        return 1
    else:
        backends = [args.backend]

    dim, hidden = (128, 256) if args.quick else (256, 1024)
    model = MLP(dim, hidden)
    rng = np.random.default_rng(1)
    inputs: list[Vector] = list(rng.standard_normal((callers, dim)).astype(np.float32))
    print(
        f"batched demo: {callers} concurrent callers, each awaiting one output of a "
        f"2-layer MLP ({dim} -> {hidden} -> {dim}, float32, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')})"
    )
    ok = True
    for backend in backends:
        print(f"{backend}:")
        ok &= anyio.run(_compare, model, inputs, args.batch_size, args.timeout_ms, backend=backend)
    return 0 if ok else 1
