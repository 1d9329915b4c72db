"""A sync model class whose ``predict`` method batches calls from many threads.

Run it with ``python examples/sync_model.py`` (needs numpy). ``Model.predict`` is a
plain ``def`` taking a list of input vectors, decorated with ``batched.dynamically``:
on an instance, ``model.predict(x)`` takes one vector and blocks the calling thread
until its row of the batch is ready, and the calls of 16 threads of a
``ThreadPoolExecutor`` share batches (one matrix product per batch). Each instance has
its own batcher, served by one event-loop thread of its own, started on first use;
``model.predict.stats`` reads its counters, and ``with model.predict:`` (or
``model.predict.close()``) stops it. Async code would call
``await model.predict.acall(x)``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

import batched

Vector = npt.NDArray[np.float64]


class Model:
    """A stand-in for a model: a two-layer perceptron in numpy."""

    def __init__(self, inputs: int = 32, hidden: int = 64, outputs: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w1 = rng.standard_normal((inputs, hidden)) / np.sqrt(inputs)
        self.w2 = rng.standard_normal((hidden, outputs)) / np.sqrt(hidden)

    def forward(self, x: Vector) -> Vector:
        """Rows in, rows out: one input vector or a matrix of them (the unbatched form)."""
        result: Vector = np.maximum(x @ self.w1, 0.0) @ self.w2
        return result

    @batched.dynamically(batch_size=64, timeout_ms=2.0)
    def predict(self, xs: list[Vector]) -> Vector:
        """The batch: one matrix product for every waiting vector; row i answers xs[i]."""
        return self.forward(np.stack(xs))


THREADS = 16
CALLS_PER_THREAD = 50


def main() -> None:
    model = Model()
    rng = np.random.default_rng(1)
    inputs = list(rng.standard_normal((THREADS * CALLS_PER_THREAD, 32)))

    with model.predict, ThreadPoolExecutor(THREADS) as pool:  # the block's end closes it
        outputs = list(pool.map(model.predict, inputs))  # each call: one vector -> one row
        stats = model.predict.stats

    # A matrix product sums in a different order in a batch than for one row, so the
    # rows agree to rounding, not bit for bit.
    ok = all(
        np.allclose(out, model.forward(x), rtol=1e-12, atol=1e-12)
        for x, out in zip(inputs, outputs, strict=True)
    )
    print(
        f"{len(inputs)} calls from {THREADS} threads: every result matches the unbatched "
        f"model: {'yes' if ok else 'no'}"
    )
    print(
        f"stats: completed={stats.completed} batches={stats.total_batches} "
        f"mean batch size {stats.avg_batch_size:.1f}"
    )
    print(f"batched: {'yes' if stats.avg_batch_size > 1 else 'no'}")
    try:
        model.predict(inputs[0])
    except batched.BatcherClosed:
        print("after `with model.predict:` the method is closed")
    other = Model(seed=2)  # another instance: a batcher (and a serving thread) of its own
    with other.predict:
        other.predict(inputs[0])
    print(
        f"another instance: completed={other.predict.stats.completed} "
        f"(the first: {model.predict.stats.completed})"
    )


if __name__ == "__main__":
    main()
