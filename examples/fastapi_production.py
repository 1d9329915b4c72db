"""FastAPI in production: load shedding, readiness, metrics and a SIGTERM drain.

Run ``python examples/fastapi_production.py serve --port 8000`` to serve it (needs
fastapi, uvicorn and prometheus_client), or ``python examples/fastapi_production.py``
for a demo that starts that server in a subprocess, loads it, scrapes it and stops it
with SIGTERM (``uvicorn fastapi_production:app`` serves it too, without the drain).
``make_app`` builds the app:

- ``POST /embed``: the batcher is a ``batched.Batcher`` opened in the app's lifespan
  (``async with batcher: yield``). The model is a plain ``def``: the batcher runs it in a
  worker thread, so a blocking forward pass never stalls the event loop (every request,
  the batcher's own timer, the probes). ``max_queue_size`` bounds the items waiting;
  requests call with ``wait=False``, so a full queue is ``batched.QueueFull`` at once:
  HTTP 503 with a ``Retry-After`` of the seconds the batcher needs to serve what waits,
  at the service rate it measured (see ``ServiceRate``).
- ``GET /ready``: 200 while the batcher accepts calls, 503 once it drains.
- ``GET /metrics``: the Prometheus text format, from a
  ``batched.metrics.PrometheusObserver`` on a registry of this app's own, and the app's
  own ``embed_refused_total{reason="queue_full"|"draining"}``: the load it shed.

**SIGTERM.** uvicorn's own handling of SIGTERM is no drain: it closes the listening
socket at once, lets the requests in flight finish, runs the lifespan's shutdown, then
exits (uvicorn 0.29 and later re-raise the signal at the end: exit status 143). A
readiness probe never sees the server go unready (its connections are refused from the
first instant), while a load balancer that has not yet noticed keeps sending it new
connections, refused too; and a drain in the lifespan's shutdown would come after the
last request. So ``serve`` runs uvicorn as ``DrainingServer``, whose first SIGTERM:

1. calls ``batcher.stop_accepting()`` (from the event loop): ``/ready`` answers 503, a new
   ``/embed`` gets 503 (with ``Connection: close``, so its client's next request opens a
   connection elsewhere), and every request already accepted is still served;
2. keeps the socket open for ``drain_s`` seconds: the time the readiness probe needs
   to fail (``periodSeconds`` x ``failureThreshold`` in Kubernetes) and the load
   balancer to take this instance out;
3. then hands over to uvicorn's own shutdown: the socket closes, the requests in
   flight finish (within ``timeout_graceful_shutdown``), leaving ``async with batcher:``
   serves anything still accepted, and the process exits with status 0.

A second SIGTERM, or Ctrl+C, goes straight to step 3 (uvicorn's own: a second SIGTERM
ends with status 143). Kubernetes waits
``terminationGracePeriodSeconds`` (30 s by default) for all of it: keep ``drain_s``
plus the longest request below that.

"Accepted" is what the batcher took in: a request that reached ``/embed`` while it
accepted. Once step 3 closes the socket, a new connection is refused by the kernel: it
was never accepted, and a client (or the load balancer) retries it elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import math
import os
import re
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import httpx
import prometheus_client
import prometheus_client.parser
import uvicorn
from anyio.streams.text import TextReceiveStream
from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel

import batched
from batched.metrics import PrometheusObserver

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence
    from types import FrameType

    from anyio.abc import Process

DIMENSIONS = 8
BATCH_SIZE = 8
MAX_QUEUE_SIZE = 32
FORWARD_S = 0.02  # the stand-in model's cost per batch (a GPU's is mostly per batch too)
RETRY_AFTER_MAX_S = 60  # a client told to wait longer would rather go elsewhere
THIS_FILE = os.path.abspath(__file__)
BATCHED_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(batched.__file__)))


class EmbedRequest(BaseModel):
    text: str


class EmbedResponse(BaseModel):
    vector: list[float]


def embed_text(text: str) -> list[float]:
    """The unbatched "model": a deterministic unit vector of ``DIMENSIONS`` floats."""
    vector = [0.0] * DIMENSIONS
    for position, char in enumerate(text):
        digest = hashlib.blake2b(f"{position}:{char}".encode(), digest_size=2).digest()
        vector[digest[0] % DIMENSIONS] += 1.0 if digest[1] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def embed_batch(texts: list[str], forward_s: float = FORWARD_S) -> list[list[float]]:
    """One forward pass for many texts, ``forward_s`` seconds: a plain ``def`` that
    blocks, run by the batcher in a worker thread (as ``model(batch)`` of torch would
    be, which releases the GIL)."""
    time.sleep(forward_s)
    return [embed_text(text) for text in texts]


class ServiceRate:
    """The items per second a busy batcher gets through, measured batch by batch: an
    ``on_batch`` callable.

    Each batch served ``size`` items in ``duration_s`` seconds on one slot. Both are
    smoothed (exponentially weighted, ``weight`` for the newest batch) and divided:
    items per second per slot, which follows a model that gets slower or faster without
    one outlier batch swinging it. While the queue is full every slot is busy, so this
    rate times ``max_concurrent_batches`` is how fast the queue drains.
    """

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight
        self.items = 0.0
        self.seconds = 0.0

    def __call__(self, info: batched.BatchInfo) -> None:
        if self.seconds == 0.0:  # the first batch: nothing to smooth yet
            self.items, self.seconds = float(info.size), info.duration_s
            return
        w = self.weight
        self.items += w * (info.size - self.items)
        self.seconds += w * (info.duration_s - self.seconds)

    def per_second(self, slots: int = 1) -> float | None:
        """Items per second with ``slots`` batches running at once; None before the
        first measured batch."""
        if self.seconds <= 0.0:
            return None
        return slots * self.items / self.seconds

    def retry_after(self, waiting: int, slots: int = 1) -> int:
        """Whole seconds until ``waiting`` items are served: ``waiting`` / the rate,
        rounded up, at least 1 (the header counts whole seconds, and 0 would invite
        the client straight back), at most ``RETRY_AFTER_MAX_S``; 1 before any batch
        was measured."""
        rate = self.per_second(slots)
        if rate is None:
            return 1
        return max(1, min(RETRY_AFTER_MAX_S, math.ceil(waiting / rate)))


def make_app(
    model: Callable[[list[str]], Sequence[list[float]]] = embed_batch,
    *,
    batch_size: int = BATCH_SIZE,
    max_queue_size: int = MAX_QUEUE_SIZE,
    timeout_ms: float = 5.0,
) -> FastAPI:
    """An app with ``POST /embed``, ``GET /ready`` and ``GET /metrics`` (see the module
    docstring). ``app.state`` holds ``batcher``, ``service_rate``, ``registry`` and
    ``drain`` (what a SIGTERM calls: ``batcher.stop_accepting()``, and a line saying so)."""
    registry = prometheus_client.CollectorRegistry()  # this app's own: apps stay apart
    metrics = PrometheusObserver("embed", registry)
    # Shed load is no batch, so on_batch never sees it: the app counts its own 503s.
    refused = prometheus_client.Counter(
        "embed_refused", "Requests answered 503, by reason", ["reason"], registry=registry
    )
    service_rate = ServiceRate()

    def on_batch(info: batched.BatchInfo) -> None:
        metrics(info)
        service_rate(info)

    batcher: batched.Batcher[str, list[float]] = batched.Batcher(
        model,
        batch_size=batch_size,
        timeout_ms=timeout_ms,
        max_queue_size=max_queue_size,
        on_batch=on_batch,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with batcher:  # leaving it serves every call still accepted
            yield
        stats = batcher.stats
        print(
            f"batcher closed: completed={stats.completed} failed={stats.failed} "
            f"rejected={stats.rejected}",
            flush=True,
        )

    def drain() -> None:
        stats = batcher.stats
        settled = stats.completed + stats.failed + stats.cancelled + stats.rejected
        batcher.stop_accepting()
        print(
            f"draining: stopped accepting, {stats.submitted - settled} accepted item(s) in flight",
            flush=True,
        )

    api = FastAPI(lifespan=lifespan)
    api.state.batcher = batcher
    api.state.service_rate = service_rate
    api.state.registry = registry
    api.state.drain = drain

    @api.post("/embed")
    async def embed_route(request: EmbedRequest) -> EmbedResponse:
        try:
            vector = await batcher(request.text, wait=False)
        except batched.QueueFull:
            refused.labels("queue_full").inc()
            seconds = service_rate.retry_after(
                batcher.stats.queue_size, batcher.settings.max_concurrent_batches
            )
            raise HTTPException(503, "queue full", headers={"Retry-After": str(seconds)}) from None
        except batched.BatcherClosed:
            # Draining (or not started): this instance takes no more; the client's next
            # request should go elsewhere, on a new connection.
            refused.labels("draining").inc()
            raise HTTPException(503, "draining", headers={"Connection": "close"}) from None
        return EmbedResponse(vector=vector)

    @api.get("/ready")
    async def ready_route(response: Response) -> dict[str, bool]:
        if not batcher.accepting:
            response.status_code = 503
        return {"ready": batcher.accepting}

    @api.get("/metrics")
    async def metrics_route() -> Response:
        return Response(
            prometheus_client.generate_latest(registry),
            media_type=prometheus_client.CONTENT_TYPE_LATEST,
        )

    return api


app = make_app()


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose first SIGTERM drains before uvicorn's own shutdown: it
    calls ``drain`` on the event loop, then, ``drain_s`` seconds later, shuts down as
    uvicorn does (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, *, drain: Callable[[], None], drain_s: float):
        super().__init__(config)
        self.drain = drain
        self.drain_s = drain_s
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self._loop
        if sig != signal.SIGTERM or self.draining or not self.started or loop is None:
            super().handle_exit(sig, frame)  # Ctrl+C, a second SIGTERM, during startup
            return
        self.draining = True
        # A signal handler runs between two bytecodes of whatever the loop's thread was
        # doing, the batcher's own code included: act from the loop instead.
        loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        assert self._loop is not None
        # The shutdown is scheduled first: it comes whatever drain() does.
        self._loop.call_later(self.drain_s, setattr, self, "should_exit", True)
        self.drain()


def serve(api: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, drain_s: float = 5.0) -> None:
    """Serve ``api`` with ``DrainingServer`` until SIGTERM (or Ctrl+C)."""
    config = uvicorn.Config(
        api,
        host=host,
        port=port,
        lifespan="on",
        ws="none",
        access_log=False,  # a line per request: at batching rates, a cost of its own
        timeout_graceful_shutdown=20,  # then uvicorn cancels what still runs
    )
    # Ctrl+C: uvicorn shuts down, then re-raises SIGINT (KeyboardInterrupt), as done.
    with contextlib.suppress(KeyboardInterrupt):
        DrainingServer(config, drain=api.state.drain, drain_s=drain_s).run()


# -- the demo: a server in a subprocess, a steady load, a burst, a scrape, SIGTERM --------


class Spawned(NamedTuple):
    process: Process
    url: str
    lines: list[str]  # its output so far, stdout and stderr (uvicorn's log) mixed


@contextlib.asynccontextmanager
async def spawn_server(*args: str) -> AsyncIterator[Spawned]:
    """``python fastapi_production.py serve --port 0 *args`` (a free loopback port) for
    the block: yields once uvicorn's startup line gives the port. Its output is read
    all along (a full pipe would block the server). The block's end kills it if it is
    still running."""
    # The child imports the same `batched` as this process, installed or not.
    path = os.pathsep.join(filter(None, [BATCHED_ROOT, os.environ.get("PYTHONPATH")]))
    command = [sys.executable, THIS_FILE, "serve", "--port", "0", *args]
    lines: list[str] = []
    url: list[str] = []
    started = anyio.Event()
    async with await anyio.open_process(command, env=dict(os.environ, PYTHONPATH=path)) as process:

        async def read(stream: Any) -> None:
            async for chunk in TextReceiveStream(stream):
                for line in chunk.splitlines():
                    lines.append(line)
                    found = re.search(r"Uvicorn running on (http://\S+)", line)
                    if found:
                        url.append(found.group(1))
                        started.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read, process.stdout)
            tg.start_soon(read, process.stderr)
            try:
                with anyio.fail_after(60):
                    await started.wait()
                yield Spawned(process, url[0], lines)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()


class Reply(NamedTuple):
    """One ``POST /embed``: its status, or ``error`` (the exception's type) when no
    response came; ``at``: when it ended (``time.monotonic()``)."""

    text: str
    status: int | None
    vector: list[float] | None
    retry_after: str | None
    detail: str | None
    error: str | None
    at: float


async def post(client: httpx.AsyncClient, text: str) -> Reply:
    """``POST /embed`` with ``text``; the outcome as a ``Reply``, also a connection error."""
    try:
        response = await client.post("/embed", json={"text": text})
    except httpx.TransportError as exc:
        return Reply(text, None, None, None, None, type(exc).__name__, time.monotonic())
    body = response.json()
    return Reply(
        text,
        response.status_code,
        body.get("vector"),
        response.headers.get("retry-after"),
        body.get("detail"),
        None,
        time.monotonic(),
    )


class Load:
    """A steady load: ``clients`` clients, each with one connection, each sending one
    request after another until its first refusal (a 503, or no response: told to go
    elsewhere)."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.clients = clients
        self.replies: list[Reply] = []
        self._changed = anyio.Event()

    def ok(self) -> int:
        return sum(reply.status == 200 for reply in self.replies)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for n in range(self.clients):
                tg.start_soon(self._client, n)

    async def _client(self, n: int) -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=30.0) as client:
            for i in range(sys.maxsize):
                reply = await post(client, f"client {n} request {i}")
                self.replies.append(reply)
                self._changed.set()
                self._changed = anyio.Event()
                if reply.status != 200:
                    return

    async def served(self, count: int) -> None:
        """Wait until ``count`` requests got their 200."""
        while self.ok() < count:
            await self._changed.wait()


async def wait_ready(url: str, status: int) -> float:
    """Poll ``GET /ready`` until it answers ``status``; when it did (``time.monotonic()``)."""
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        # A probe polls: the server's state cannot wake a client.
        while (await client.get("/ready")).status_code != status:  # noqa: ASYNC110
            await anyio.sleep(0.01)  # a probe's period, short
    return time.monotonic()


async def burst(url: str, requests: int) -> list[Reply]:
    """``requests`` requests at once: what overflows the queue is refused at once."""
    replies: list[Reply] = []
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:

        async def one(i: int) -> None:
            replies.append(await post(client, f"burst {i}"))

        async with anyio.create_task_group() as tg:
            for i in range(requests):
                tg.start_soon(one, i)
    return replies


async def main() -> None:
    # A hang guard: on its way out, spawn_server kills the server it started.
    with anyio.fail_after(90):
        await demo()


async def demo() -> None:
    # A slow model (100 ms a batch), so that the load's clients keep it busy: a batch
    # runs and the next waits, whenever SIGTERM comes.
    async with spawn_server("--drain-s", "1", "--forward-ms", "100") as server:
        await wait_ready(server.url, 200)
        print("GET /ready: 200 while serving")

        replies = await burst(server.url, 100)
        refused = [reply for reply in replies if reply.status == 503]
        print(f"a burst of 100: {len(replies) - len(refused)} served, {len(refused)} refused")
        print(
            "a burst of 100: each got 200, or 503 with a Retry-After: "
            f"{all(r.status == 200 or (r.status == 503 and r.retry_after) for r in replies)}"
        )

        async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
            scrape = (await client.get("/metrics")).text
        families = prometheus_client.parser.text_string_to_metric_families(scrape)
        shown = sorted(f"{f.name} ({f.type})" for f in families if f.name.startswith("batched_"))
        print(f"GET /metrics: {', '.join(name for name in shown if '_created' not in name)}")

        load = Load(server.url, clients=2 * BATCH_SIZE)
        async with anyio.create_task_group() as tg:
            tg.start_soon(load.run)
            await load.served(4 * BATCH_SIZE)  # under way: send SIGTERM
            sigterm = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            await wait_ready(server.url, 503)
            print("after SIGTERM: GET /ready: 503")
        status = await server.process.wait()
    after = [reply for reply in load.replies if reply.at > sigterm]
    print(
        f"after SIGTERM: {sum(r.status == 200 for r in after)} requests in flight answered 200, "
        f"{sum(r.status == 503 for r in after)} new ones 503"
    )
    wrong = [r for r in load.replies if r.status == 200 and r.vector != embed_text(r.text)]
    print(f"every 200 carries its own text's vector: {wrong or 'yes'}")
    lost = [r for r in load.replies if r.status not in (200, 503)]
    print(f"requests without an answer: {len(lost)}")
    print(f"server exit status: {status}")
    print(next(line for line in server.lines if line.startswith("batcher closed:")))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser("serve", help="serve the app until SIGTERM")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8000, help="0: a free port")
    serve_parser.add_argument("--drain-s", type=float, default=5.0)
    serve_parser.add_argument("--forward-ms", type=float, default=FORWARD_S * 1000)
    arguments = parser.parse_args()
    if arguments.command == "serve":
        model = functools.partial(embed_batch, forward_s=arguments.forward_ms / 1000)
        api = make_app(model)
        serve(api, host=arguments.host, port=arguments.port, drain_s=arguments.drain_s)
    else:
        anyio.run(main)  # uvicorn and the demo's client need asyncio
