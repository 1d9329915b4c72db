"""A FastAPI embedding endpoint whose concurrent requests share batches.

Run it with ``python examples/fastapi_app.py`` (needs fastapi, uvicorn and httpx). It
does not serve forever: it starts uvicorn in-process on a free loopback port, sends
200 concurrent ``POST /embed`` requests with httpx, checks every vector against the
unbatched embedding, reads ``GET /stats`` and shuts uvicorn down. It does so for two
apps built by ``make_app``:

- ``make_app(lifespan=True)`` (the module's ``app``; ``uvicorn fastapi_app:app`` serves
  it): the batched function is opened in the app's lifespan (``async with embed:
  yield``), so a task owned by the lifespan collects the batches;
- ``make_app(lifespan=False)`` (``app_driven``): no lifespan; the decorator's
  caller-driven mode batches the requests all the same, the waiting requests running
  the batches themselves. (The request whose task runs a batch sees its own
  cancellation, a client disconnecting say, only when the batch returns: the lifespan
  form avoids that.)

Each app gets its own batched function, so their stats stay apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import socket
import ssl
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

import batched

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

DIMENSIONS = 8


class EmbedRequest(BaseModel):
    text: str


class EmbedResponse(BaseModel):
    vector: list[float]


class StatsResponse(BaseModel):
    """A few of ``embed.stats`` (a ``batched.BatchStats``)."""

    completed: int
    failed: int
    total_batches: int
    avg_batch_size: float
    latency_p50_ms: float
    latency_p99_ms: float


def embed_text(text: str) -> list[float]:
    """The unbatched "model": a deterministic unit vector of ``DIMENSIONS`` floats."""
    vector = [0.0] * DIMENSIONS
    for position, char in enumerate(text):
        digest = hashlib.blake2b(f"{position}:{char}".encode(), digest_size=2).digest()
        vector[digest[0] % DIMENSIONS] += 1.0 if digest[1] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def make_app(*, lifespan: bool = True) -> FastAPI:
    """An app with ``POST /embed`` and ``GET /stats``; see the module docstring."""

    @batched.dynamically(batch_size=32, timeout_ms=5.0)
    async def embed(texts: list[str]) -> list[list[float]]:
        """One forward pass for many texts."""
        await anyio.sleep(0.002)  # the cost of a forward pass, paid once per batch
        return [embed_text(text) for text in texts]

    @contextlib.asynccontextmanager
    async def open_embed(app: FastAPI) -> AsyncIterator[None]:
        async with embed:  # the batches are collected by a task of this block
            yield

    api = FastAPI(lifespan=open_embed if lifespan else None)
    api.state.embed = embed

    @api.post("/embed")
    async def embed_route(request: EmbedRequest) -> EmbedResponse:
        return EmbedResponse(vector=await embed(request.text))

    @api.get("/stats")
    async def stats_route() -> StatsResponse:
        stats = embed.stats
        return StatsResponse(
            completed=stats.completed,
            failed=stats.failed,
            total_batches=stats.total_batches,
            avg_batch_size=stats.avg_batch_size,
            latency_p50_ms=stats.latency_p50_ms,
            latency_p99_ms=stats.latency_p99_ms,
        )

    return api


app = make_app(lifespan=True)
app_driven = make_app(lifespan=False)


@contextlib.asynccontextmanager
async def serving(api: FastAPI) -> AsyncIterator[str]:
    """Serve ``api`` with uvicorn on a free loopback port for the block; its base URL.

    uvicorn runs on asyncio only, so this does too. The block's end shuts it down
    (lifespan shutdown included).
    """
    config = uvicorn.Config(api, lifespan="on", ws="none", log_level="warning")
    server = uvicorn.Server(config)
    # uvicorn's shutdown closes the socket; `with` closes it on every other way out.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))  # a free port, chosen by the kernel
        # Listening before uvicorn starts: a connection made before uvicorn is up waits
        # in the kernel's backlog and is served once it is (after the lifespan's
        # startup), so nothing polls `server.started` (uvicorn has no event for it).
        sock.listen(1024)
        port: int = sock.getsockname()[1]
        # A failed startup ends server.serve with SystemExit, which cancels the block.
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True  # uvicorn notices within 0.1 s and shuts down


async def post_many(base_url: str, texts: list[str], *, clients: int = 10) -> list[list[float]]:
    """``POST /embed`` every text at once; the vectors in the same order.

    The requests are spread over ``clients`` clients, like that many users: httpx's
    connection pool scans all its connections for each request, a cost that grows with
    the square of the connections of one client.
    """
    vectors: list[list[float]] = [[] for _ in texts]
    tls = ssl.create_default_context()  # unused on http://, but each client would load one

    async def user(indexes: range) -> None:
        limits = httpx.Limits(max_connections=len(indexes))
        async with httpx.AsyncClient(
            base_url=base_url, limits=limits, timeout=30.0, verify=tls
        ) as client:

            async def post(i: int) -> None:
                response = await client.post("/embed", json={"text": texts[i]})
                response.raise_for_status()
                vectors[i] = response.json()["vector"]

            async with anyio.create_task_group() as tg:
                for i in indexes:
                    tg.start_soon(post, i)

    async with anyio.create_task_group() as tg:
        for first in range(min(clients, len(texts))):
            tg.start_soon(user, range(first, len(texts), clients))
    return vectors


async def get_stats(base_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:
        response = await client.get("/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats


async def main() -> None:
    texts = [f"request {i}: {'lorem ipsum ' * (i % 7)}" for i in range(200)]
    for label, api in (("lifespan", app), ("caller-driven", app_driven)):
        async with serving(api) as base_url:
            vectors = await post_many(base_url, texts)
            stats = await get_stats(base_url)
        ok = sum(vector == embed_text(text) for text, vector in zip(texts, vectors, strict=True))
        print(
            f"{label}: {ok} responses ok, mean batch size {stats['avg_batch_size']:.1f} "
            f"({stats['total_batches']} batches, p50 latency {stats['latency_p50_ms']:.1f} ms)"
        )
        print(f"{label}: batched: {'yes' if stats['avg_batch_size'] > 1 else 'no'}")


if __name__ == "__main__":
    anyio.run(main)  # uvicorn needs asyncio
