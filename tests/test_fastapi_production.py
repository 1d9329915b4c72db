"""examples/fastapi_production.py with the real things: uvicorn, httpx, prometheus_client.

asyncio only, by nature: uvicorn and FastAPI run on asyncio (the in-process servers
also on uvloop, in CI's uvloop pass; the subprocess's uvicorn picks uvloop itself).
Everything here runs in real time (``real_time()``: sockets, a subprocess, the model's
worker threads), under a ``fail_after`` hang guard, with generous bounds and no timing
asserts. Nothing waits by sleeping: readiness comes from uvicorn's startup line, an
event, the server's own counters, or a poll of ``/ready`` (what a probe does).

The SIGTERM test's terms: a request *reached the app* when the batcher counted it
(``stats``: ``completed``, accepted and served; ``failed``, refused while draining;
``rejected``, queue full); it was *accepted* when it reached the app while the batcher
accepted calls. Every request that reached the app must have reached its client with
that answer (the client's tallies equal the server's), every accepted one with a 200
and its own vector. A request with no response at all never reached the app (refused by
the kernel once the listener closed, or on a connection closed before its request was
read): allowed, and only after SIGTERM; a timeout is never allowed (a hang).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from _helpers import JOIN, await_until, load_example

import batched
from batched.testing import real_time

if TYPE_CHECKING:
    from types import ModuleType

asyncio_or_uvloop = pytest.mark.parametrize(
    "anyio_backend",
    ["asyncio", *(["asyncio+uvloop"] if os.environ.get("BATCHED_UVLOOP") == "1" else [])],
    indirect=True,
)
NEEDS = ("fastapi", "uvicorn", "httpx", "prometheus_client")


def example() -> ModuleType:
    return load_example("fastapi_production", *NEEDS)


def batch_info(size: int, duration_s: float) -> batched.BatchInfo:
    return batched.BatchInfo(
        size=size,
        reason="full",
        started=0.0,
        duration_s=duration_s,
        waits_s=(0.0,) * size,
        outcome=batched.OutcomeCounts(completed=size),
    )


def test_retry_after_is_what_waits_over_the_measured_rate_rounded_up() -> None:
    rate = example().ServiceRate(weight=0.2)
    assert rate.per_second() is None
    assert rate.retry_after(100) == 1  # nothing measured yet
    rate(batch_info(10, 0.5))  # 20 items/s
    assert rate.per_second() == pytest.approx(20.0)
    assert rate.retry_after(64) == 4  # 3.2 s, rounded up
    assert rate.retry_after(64, slots=2) == 2  # two batches at once: 1.6 s
    assert rate.retry_after(40) == 2  # exactly 2 s
    assert rate.retry_after(0) == 1  # never 0
    assert rate.retry_after(10_000) == 60  # capped: RETRY_AFTER_MAX_S
    # Smoothed: one slow batch moves the rate part of the way.
    rate(batch_info(10, 1.0))  # items 10, seconds 0.5 + 0.2 * 0.5 = 0.6
    assert rate.per_second() == pytest.approx(10 / 0.6)


class GatedModel:
    """The example's model, with a cost of ``seconds`` per batch; while ``gate`` is
    clear, a batch waits for it instead (``held`` is set then) in its worker thread."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()
        self.batches: list[int] = []

    def __call__(self, texts: list[str]) -> list[list[float]]:
        self.batches.append(len(texts))
        if not self.gate.is_set():
            self.held.set()
            if not self.gate.wait(JOIN):
                raise TimeoutError("the test never opened the gate")
        elif self.seconds:
            time.sleep(self.seconds)  # the model's cost: what the service rate measures
        return [example().embed_text(text) for text in texts]


def refused_counts(scrape: str) -> dict[str, float]:
    """The app's ``embed_refused_total`` by reason, from a scrape (reasons never counted
    have no sample)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
        if sample.name == "embed_refused_total"
    }


async def post_all(client: Any, texts: list[str], replies: dict[str, Any]) -> None:
    async with anyio.create_task_group() as tg:
        for text in texts:
            tg.start_soon(_post_into, client, text, replies)


async def _post_into(client: Any, text: str, replies: dict[str, Any]) -> None:
    replies[text] = await example().post(client, text)


@asyncio_or_uvloop
@pytest.mark.anyio
async def test_a_full_queue_is_503_with_retry_after_from_the_measured_rate() -> None:
    import httpx

    module = example()
    model = GatedModel(seconds=0.2)
    # Batches leave only full (a long timeout_ms): each holds exactly `batch_size` items.
    api = module.make_app(model, batch_size=2, max_queue_size=32, timeout_ms=60_000)
    batcher = api.state.batcher
    serving = load_example("fastapi_app").serving
    replies: dict[str, Any] = {}
    with real_time(), anyio.fail_after(60):
        async with (
            serving(api) as url,
            httpx.AsyncClient(base_url=url, timeout=30.0) as client,
        ):
            await post_all(client, ["warm 0", "warm 1"], replies)  # one batch of 2 in >= 0.2 s
            model.gate.clear()
            async with anyio.create_task_group() as tg:
                tg.start_soon(post_all, client, ["held 0", "held 1"], replies)
                await await_until(model.held.is_set, "the batch held by the model")
                queued = [f"queued {i}" for i in range(32)]
                tg.start_soon(post_all, client, queued, replies)
                await await_until(lambda: batcher.stats.queue_size == 32, "a full queue")
                refused = await module.post(client, "one too many")
                # Read before the gate opens: the batches after it change the rate.
                expected = str(api.state.service_rate.retry_after(32))
                ready = await client.get("/ready")
                scrape = await client.get("/metrics")
                model.seconds = 0.0
                model.gate.set()
            await post_all(client, ["after 0", "after 1"], replies)
    # 32 waiting items at <= 10 items/s (2 items per >= 0.2 s): at least 3.2 s, so 4.
    assert refused.status == 503, refused
    assert refused.detail == "queue full"
    assert refused.retry_after == expected, refused
    assert int(refused.retry_after) >= 4, refused
    assert ready.status_code == 200  # shedding load is not draining: still ready
    assert refused_counts(scrape.text) == {"queue_full": 1}
    # Every accepted request was served, and so are later ones.
    texts = ["warm 0", "warm 1", "held 0", "held 1", *queued, "after 0", "after 1"]
    assert {text: replies[text].status for text in texts} == dict.fromkeys(texts, 200)
    assert all(replies[text].vector == module.embed_text(text) for text in texts)
    stats = batcher.stats
    assert (stats.completed, stats.rejected, stats.failed) == (len(texts), 1, 0)


@asyncio_or_uvloop
@pytest.mark.anyio
async def test_metrics_serves_the_prometheus_text_of_the_apps_own_batcher() -> None:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    module = example()
    api = module.make_app(GatedModel(), batch_size=4)
    other = module.make_app(GatedModel())  # another app: its own registry, untouched
    texts = [f"text {i}" for i in range(20)]
    replies: dict[str, Any] = {}
    serving = load_example("fastapi_app").serving
    with real_time(), anyio.fail_after(60):
        async with (
            serving(api) as url,
            httpx.AsyncClient(base_url=url, timeout=30.0) as client,
        ):
            await post_all(client, texts, replies)
            response = await client.get("/metrics")
    assert all(replies[text].status == 200 for text in texts)
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"batcher": "embed", **labels}.items())))]

    stats = api.state.batcher.stats
    assert value("batched_items_total", outcome="completed") == 20
    assert value("batched_items_total", outcome="failed") == 0
    assert value("batched_batch_size_sum") == 20
    assert value("batched_batch_size_count") == stats.total_batches
    reasons = [labels for (name, labels) in samples if name == "batched_batches_total"]
    assert sum(samples[("batched_batches_total", labels)] for labels in reasons) == (
        stats.total_batches
    )
    assert value("batched_item_wait_seconds_count") == 20
    assert other.state.registry is not api.state.registry
    assert other.state.batcher.stats.total_batches == 0


@asyncio_or_uvloop
@pytest.mark.anyio
async def test_draining_serves_what_was_accepted_and_refuses_the_rest_with_503() -> None:
    import httpx

    module = example()
    model = GatedModel()
    api = module.make_app(model, batch_size=4, timeout_ms=1.0)
    serving = load_example("fastapi_app").serving
    replies: dict[str, Any] = {}
    with real_time(), anyio.fail_after(60):
        async with (
            serving(api) as url,
            httpx.AsyncClient(base_url=url, timeout=30.0) as client,
        ):
            ready = await client.get("/ready")
            model.gate.clear()
            async with anyio.create_task_group() as tg:
                tg.start_soon(post_all, client, ["in flight 0", "in flight 1"], replies)
                await await_until(model.held.is_set, "the batch held by the model")
                batcher = api.state.batcher
                await await_until(lambda: batcher.stats.submitted == 2, "both accepted")
                api.state.drain()  # what the first SIGTERM calls
                unready = await client.get("/ready")
                refused = await client.post("/embed", json={"text": "too late"})
                scrape = await client.get("/metrics")
                model.gate.set()
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert (unready.status_code, unready.json()) == (503, {"ready": False})
    assert refused.status_code == 503
    assert refused.json() == {"detail": "draining"}
    assert refused.headers["connection"] == "close"  # its client reconnects, elsewhere
    assert "retry-after" not in refused.headers  # this instance will not take it later
    assert scrape.status_code == 200  # still scraped while draining
    assert refused_counts(scrape.text) == {"draining": 1}
    for text in ("in flight 0", "in flight 1"):
        assert replies[text].status == 200, replies[text]
        assert replies[text].vector == module.embed_text(text)
    stats = batcher.stats
    assert (stats.completed, stats.failed) == (2, 1)


_CLOSED = re.compile(r"batcher closed: completed=(\d+) failed=(\d+) rejected=(\d+)")
_DRAINING = re.compile(r"draining: stopped accepting, (\d+) accepted item\(s\) in flight")
# No response at all: a refused connection, or one closed before its request was read.
# A timeout is not among them: that would be a hang.
_NOT_TAKEN_IN = {"ConnectError", "RemoteProtocolError", "ReadError"}


@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
@pytest.mark.anyio
async def test_sigterm_mid_load_drains_every_accepted_request_then_exits_0() -> None:
    import httpx

    module = example()
    # Twice the batch size, and a model slow enough (200 ms a batch) for the clients to
    # keep up even on a loaded machine: a batch runs and the next one waits whenever
    # SIGTERM comes, so requests are in flight then.
    clients = 2 * module.BATCH_SIZE
    with real_time(), anyio.fail_after(90):
        async with module.spawn_server("--drain-s", "2", "--forward-ms", "200") as server:
            ready = await module.wait_ready(server.url, 200)
            load = module.Load(server.url, clients=clients)
            async with anyio.create_task_group() as tg:
                tg.start_soon(load.run)
                await load.served(4 * module.BATCH_SIZE)
                sigterm = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                unready = await module.wait_ready(server.url, 503)
            status = await server.process.wait()
            with pytest.raises(httpx.ConnectError):  # it is gone: nothing listens
                await module.wait_ready(server.url, 200)
    output = "\n".join(server.lines)
    assert status == 0, output
    assert ready < sigterm < unready
    closed, draining = _CLOSED.search(output), _DRAINING.search(output)
    assert closed is not None, output
    assert draining is not None, output
    assert draining.start() < closed.start()  # drained, then closed
    completed, failed, rejected = map(int, closed.groups())
    in_flight = int(draining.group(1))

    replies = load.replies
    ok = [r for r in replies if r.status == 200]
    drained = [r for r in replies if r.status == 503 and r.detail == "draining"]
    full = [r for r in replies if r.status == 503 and r.detail == "queue full"]
    no_response = [r for r in replies if r.status is None]
    assert len(ok) + len(drained) + len(full) + len(no_response) == len(replies), replies
    # Every accepted request got its answer, and each 200 its own text's vector.
    assert (len(ok), len(drained), len(full)) == (completed, failed, rejected), output
    assert all(r.vector == module.embed_text(r.text) for r in ok)
    assert all(r.retry_after is not None and int(r.retry_after) >= 1 for r in full)
    # The requests in flight at the drain were served after SIGTERM; the new ones refused.
    assert in_flight >= 1, output
    assert sum(r.at > sigterm for r in ok) >= in_flight
    assert drained, "no request was refused while draining"
    assert all(r.at > sigterm for r in drained)
    # Only the listener's closing may leave a request without a response.
    assert all(r.at > sigterm and r.error in _NOT_TAKEN_IN for r in no_response), no_response
    # Each client stopped at its refusal: none was left waiting.
    assert len(drained) + len(full) + len(no_response) == clients
