"""Scaling out: a Ray Serve deployment of 2 replicas, each batching its own requests.

Run it with ``python examples/ray_serve_app.py`` (needs ``ray[serve]`` and httpx: ``pip
install 'batched-anyio[ray]' httpx``). It does not serve forever: it starts a local Ray
cluster (2 CPUs, no dashboard) and Serve's HTTP proxy on a free loopback port, deploys
``Scorer`` with 2 replicas, sends concurrent ``POST /`` requests through the proxy,
prints what each replica did and shuts Ray down.

Serve spreads the requests over the replicas; inside each replica, one
``batched.Batcher`` gathers that replica's concurrent requests into batches. The batcher
belongs to the replica: a task of the replica's event loop holds its ``async with``
block, opened by the replica's ``async def __init__`` and closed by its ``async def
__del__`` (Serve awaits both, and calls ``__del__`` once the replica's requests are
done). Each reply names the replica that served it and the size of the batch it
travelled in.

(The decorator works too, without any of this: ``@batched.dynamically`` on a method gives
each replica its own batcher, driven by the waiting requests themselves; see
docs/decorator.md.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import socket
import time
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import ray
from fastapi.responses import JSONResponse
from ray import serve

import batched

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.requests import Request

REPLICAS = 2
BATCH_SIZE = 16
TIMEOUT_MS = 10.0
# Serve sends a replica at most this many requests at a time (its default is 5: too few
# to fill a batch of 16). It is the replica's queue: a batcher of its own with a
# `max_queue_size` above it would never fill, one below it would refuse requests that
# Serve already routed here.
MAX_ONGOING_REQUESTS = 64
FORWARD_PASS_S = 0.005  # what the "model" costs per batch, whatever its size


def score(text: str) -> int:
    """The unbatched computation: what every reply must carry for ``text``."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


@serve.deployment(num_replicas=REPLICAS, max_ongoing_requests=MAX_ONGOING_REQUESTS)
class Scorer:
    """A replica: scores one text per request, many texts per batch."""

    async def __init__(self) -> None:
        self.replica = serve.get_replica_context().replica_tag
        self.batcher = batched.Batcher(
            self.score_batch, batch_size=BATCH_SIZE, timeout_ms=TIMEOUT_MS
        )
        # The block must be entered and left by one task (anyio's cancel scopes are
        # task-bound), and Serve calls __init__ and __del__ from different ones: a task of
        # the replica holds it instead, from now until __del__.
        self._closing = asyncio.Event()
        opened = asyncio.Event()
        self._owner = asyncio.create_task(self._own(opened))
        waiting = asyncio.create_task(opened.wait())
        await asyncio.wait({self._owner, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if self._owner.done():
            self._owner.result()  # it failed to open: the replica fails to start

    async def _own(self, opened: asyncio.Event) -> None:
        async with self.batcher:
            opened.set()
            await self._closing.wait()
        # Leaving the block served every request it had accepted.

    async def __del__(self) -> None:
        self._closing.set()
        await self._owner

    async def score_batch(self, texts: list[str]) -> list[dict[str, Any]]:
        """One "forward pass" for the whole batch."""
        await asyncio.sleep(FORWARD_PASS_S)
        return [
            {"text": text, "score": score(text), "replica": self.replica, "batch_size": len(texts)}
            for text in texts
        ]

    async def __call__(self, request: Request) -> dict[str, Any] | JSONResponse:
        body = await request.json()
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            # Refused here, before it joins a batch: a bad item inside score_batch would
            # fail every request of its batch.
            error = f"'text' must be a string: {text!r}"
            return JSONResponse({"error": error}, status_code=400)
        reply: dict[str, Any] = await self.batcher(text)
        return reply


def free_port() -> int:
    """A loopback port that was free a moment ago (Serve's proxy binds it itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def local_ray(**init: Any) -> Iterator[None]:
    """A local Ray cluster for the block, shut down after it (Serve's actors included)."""
    options: dict[str, Any] = {
        "num_cpus": 2,
        "include_dashboard": False,
        "logging_level": "warning",
        "log_to_driver": False,
    }
    ray.init(**(options | init))
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()  # its replicas' __del__ run first: every batcher closes
        ray.shutdown()


def serve_app(app: Any, *, port: int, name: str = "default", route_prefix: str = "/") -> str:
    """Start Serve's proxy on ``port`` (once per cluster), run ``app``; its base URL."""
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app, name=name, route_prefix=route_prefix)
    base_url = f"http://127.0.0.1:{port}{route_prefix.rstrip('/')}"
    wait_until_routed(base_url)
    return base_url


def wait_until_routed(base_url: str, *, timeout_s: float = 60.0) -> None:
    """Block until Serve's proxy routes a request to the app.

    ``serve.run`` returns once the replicas are up; the proxy learns the route a moment
    later (Serve pushes it over a long poll) and answers 404 or 503 until then. Nothing
    tells a client when, so this asks.
    """
    limit = time.monotonic() + timeout_s
    while True:
        try:
            response = httpx.post(f"{base_url}/", json={"text": "ping"}, timeout=10.0)
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > limit:
            raise TimeoutError(f"Serve's proxy did not route {base_url} in {timeout_s} s")
        time.sleep(0.1)


async def post_many(base_url: str, texts: list[str], *, clients: int = 8) -> list[dict[str, Any]]:
    """``POST`` every text at once through the proxy; the replies in the same order.

    The requests are spread over ``clients`` httpx clients, like that many users (one
    client's connection pool grows slow with hundreds of connections).
    """
    replies: list[dict[str, Any]] = [{} for _ in texts]

    async def user(indexes: range) -> None:
        limits = httpx.Limits(max_connections=len(indexes))
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0) as client:

            async def post(i: int) -> None:
                response = await client.post("/", json={"text": texts[i]})
                response.raise_for_status()
                replies[i] = response.json()

            async with anyio.create_task_group() as tg:
                for i in indexes:
                    tg.start_soon(post, i)

    async with anyio.create_task_group() as tg:
        for first in range(min(clients, len(texts))):
            tg.start_soon(user, range(first, len(texts), clients))
    return replies


def batch_sizes_by_replica(replies: list[dict[str, Any]]) -> dict[str, collections.Counter[int]]:
    """For each replica, how many requests travelled in batches of each size."""
    sizes: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    for reply in replies:
        sizes[reply["replica"]][reply["batch_size"]] += 1
    return dict(sizes)


def main() -> None:
    texts = [f"request {i}" for i in range(200)]
    with local_ray():
        base_url = serve_app(Scorer.bind(), port=free_port())
        replies = anyio.run(post_many, base_url, texts)
    ok = sum(reply["score"] == score(text) for reply, text in zip(replies, texts, strict=True))
    print(f"{len(texts)} requests through Serve's proxy: {ok} replies match the unbatched score")
    sizes = batch_sizes_by_replica(replies)
    for replica, counts in sorted(sizes.items()):
        mean = sum(size * n for size, n in counts.items()) / sum(counts.values())
        print(
            f"replica {replica}: {sum(counts.values())} requests, largest batch {max(counts)}, "
            f"mean batch {mean:.1f} (per request)"
        )
    batched_in = sum(any(size > 1 for size in counts) for counts in sizes.values())
    print(f"replicas that formed batches: {batched_in} of {REPLICAS}")


if __name__ == "__main__":
    main()
