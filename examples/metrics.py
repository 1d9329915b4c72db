"""Metrics: a Batcher exporting each batch to Prometheus, on asyncio and trio.

Run it with ``python examples/metrics.py`` (needs ``pip install 'batched-anyio[metrics]'``).
``on_batch`` is called after every batch with a ``batched.BatchInfo``;
``batched.metrics.PrometheusObserver`` is such a callable: it turns each batch into
histograms (batch size, item wait, batch duration), counters (items by outcome,
batches by reason) and a gauge (items left waiting). A web app serves
``prometheus_client.generate_latest(registry)`` at ``/metrics``; here the scrape is
printed instead.
"""

from __future__ import annotations

import contextlib

import anyio
import prometheus_client

import batched
from batched.metrics import PrometheusObserver

SHOWN = (
    "batched_batch_size_count",
    "batched_batch_size_sum",
    "batched_items_total",
    "batched_batches_total",
    "batched_waiting_items",
    'batched_item_wait_seconds_bucket{batcher="embed",le="0.001"}',
    'batched_item_wait_seconds_bucket{batcher="embed",le="+Inf"}',
)


async def embed(texts: list[str]) -> list[int]:
    """A stand-in model: one number per text."""
    await anyio.sleep(0.01)
    return [len(text) if text else batched.Failure(ValueError("empty text")) for text in texts]


async def main() -> None:
    # A registry of its own, so that each run starts from zero (a service would use the
    # default one, prometheus_client.REGISTRY, and leave `registry` out).
    registry = prometheus_client.CollectorRegistry()
    observer = PrometheusObserver("embed", registry)
    async with batched.Batcher(embed, batch_size=16, timeout_ms=5.0, on_batch=observer) as b:

        async def call(text: str) -> None:
            with contextlib.suppress(ValueError):  # counted as a failed item
                await b(text)

        async with anyio.create_task_group() as tg:
            for i in range(40):  # 40 callers at once: batches of 16, 16, then 8 by timeout
                tg.start_soon(call, "" if i == 7 else f"text {i}")
    for line in prometheus_client.generate_latest(registry).decode().splitlines():
        if line.startswith(SHOWN):
            print(line)


if __name__ == "__main__":
    for backend in ("asyncio", "trio"):
        print(f"--- {backend} ---")
        anyio.run(main, backend=backend)
