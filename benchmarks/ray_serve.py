"""Ray Serve: the same deployment batched by ``batched`` and by Serve's ``@serve.batch``.

Run it with ``python -m benchmarks.ray_serve [--quick] [--out results.json]`` (needs
``ray[serve]`` and httpx; not part of ``python -m benchmarks``, which must run without
Ray). One run starts a local Ray cluster (2 CPUs) and deploys two apps side by side,
each 2 replicas of the same "model" (``FORWARD_PASS_S`` per batch, whatever its size)
with the same settings (batches of ``BATCH_SIZE``, a ``TIMEOUT_MS`` window, one batch at a
time per replica); they differ only in what batches the requests:

- ``batched``: a ``batched.Batcher`` owned by the replica (as in
  examples/ray_serve_app.py);
- ``serve.batch``: the method decorated with ``@serve.batch``.

Two measurements, in alternating rounds (A, B, A, B, ...), medians over the rounds:

(a) closed loop through Serve's HTTP proxy: ``USERS`` users, each sending its next
    ``POST`` as soon as its last reply came. Throughput (requests/s) and latency p50/p99
    (ms). On one small machine the proxy and the client cost far more than either
    batcher, so both should come out alike here.
(b) overhead inside the replica, through a handle call (``probe``): the replica launches
    ``PROBE_N`` concurrent calls (one task each, as Serve gives each request) into its
    batching path with a batch function that does nothing, and times them; then the same
    number of tasks of a plain coroutine. The difference divided by ``PROBE_N`` is what
    batching costs a request, in µs; the median over all bursts (5 per handle call).
    Target: ``batched`` <= 0.5 x ``serve.batch``.

Both apps share one proxy and one machine, so only figures from the same run compare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import time
from typing import Any

import anyio
import httpx
import ray
from ray import serve

import batched

from ._common import percentile

REPLICAS = 2
BATCH_SIZE = 16
TIMEOUT_MS = 10.0
MAX_ONGOING_REQUESTS = 64
FORWARD_PASS_S = 0.005
USERS = 64
PROBE_N = 1024  # 64 full batches
TARGET_RATIO = 0.5


def _model(texts: list[str]) -> list[int]:
    return [len(text) for text in texts]


async def _noop(items: list[int]) -> list[int]:
    return items


async def _timed_burst(call: Any, n: int) -> float:
    """Seconds for ``n`` concurrent calls of ``call(i)``, each in a task of its own (as
    Serve runs each request), each result checked."""

    async def request(i: int) -> Any:
        # A coroutine, so that gather makes it a task: a batcher's call is a future
        # already, which gather would wait on without any task, unlike a request.
        return await call(i)

    start = time.perf_counter()
    results = await asyncio.gather(*(request(i) for i in range(n)))
    elapsed = time.perf_counter() - start
    if results != list(range(n)):
        raise AssertionError("a probe call got another call's result")
    return elapsed


async def _direct(i: int) -> int:
    return i


async def _probe(call: Any, n: int, repeats: int) -> list[tuple[float, float]]:
    """``repeats`` pairs: seconds for ``n`` concurrent calls through the batching path,
    then for ``n`` concurrent calls of a plain coroutine (the tasks' own cost)."""
    return [(await _timed_burst(call, n), await _timed_burst(_direct, n)) for _ in range(repeats)]


# Both deployments take a share of a CPU: the two apps' 4 replicas fit 2 CPUs.
DEPLOYMENT = {
    "num_replicas": REPLICAS,
    "max_ongoing_requests": MAX_ONGOING_REQUESTS,
    "ray_actor_options": {"num_cpus": 0.5},
}


@serve.deployment(**DEPLOYMENT)
class WithBatched:
    """The model behind a ``batched.Batcher`` owned by the replica."""

    async def __init__(self) -> None:
        self.batcher = batched.Batcher(self.forward, batch_size=BATCH_SIZE, timeout_ms=TIMEOUT_MS)
        self.probe_batcher = batched.Batcher(_noop, batch_size=BATCH_SIZE, timeout_ms=TIMEOUT_MS)
        self._closing = asyncio.Event()
        opened = asyncio.Event()
        self._owner = asyncio.create_task(self._own(opened))
        await opened.wait()

    async def _own(self, opened: asyncio.Event) -> None:
        async with self.batcher, self.probe_batcher:
            opened.set()
            await self._closing.wait()

    async def __del__(self) -> None:
        self._closing.set()
        await self._owner

    async def forward(self, texts: list[str]) -> list[int]:
        await asyncio.sleep(FORWARD_PASS_S)
        return _model(texts)

    async def __call__(self, request: Any) -> int:
        body = await request.json()
        result: int = await self.batcher(body["text"])
        return result

    async def probe(self, n: int, repeats: int) -> list[tuple[float, float]]:
        return await _probe(self.probe_batcher, n, repeats)


@serve.deployment(**DEPLOYMENT)
class WithServeBatch:
    """The same model behind ``@serve.batch``."""

    @serve.batch(max_batch_size=BATCH_SIZE, batch_wait_timeout_s=TIMEOUT_MS / 1000)
    async def forward(self, texts: list[str]) -> list[int]:
        await asyncio.sleep(FORWARD_PASS_S)
        return _model(texts)

    @serve.batch(max_batch_size=BATCH_SIZE, batch_wait_timeout_s=TIMEOUT_MS / 1000)
    async def noop(self, items: list[int]) -> list[int]:
        return items

    async def __call__(self, request: Any) -> int:
        body = await request.json()
        result: int = await self.forward(body["text"])
        return result

    async def probe(self, n: int, repeats: int) -> list[tuple[float, float]]:
        return await _probe(self.noop, n, repeats)


SYSTEMS = {"batched": WithBatched, "serve.batch": WithServeBatch}


async def _closed_loop(url: str, requests: int) -> tuple[float, list[float]]:
    """``USERS`` users share ``requests`` requests; wall seconds and each latency."""
    latencies: list[float] = []
    per_user = requests // USERS
    limits = httpx.Limits(max_connections=8)

    async def user(client: httpx.AsyncClient, u: int) -> None:
        for k in range(per_user):
            text = f"user {u} request {k}"
            start = time.perf_counter()
            response = await client.post(url, json={"text": text})
            latencies.append(time.perf_counter() - start)
            response.raise_for_status()
            if response.json() != len(text):
                raise AssertionError(f"wrong reply for {text!r}: {response.text}")

    # 8 users per client: one httpx pool with hundreds of connections grows slow itself.
    clients = [httpx.AsyncClient(limits=limits, timeout=60.0) for _ in range(USERS // 8)]
    start = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)
        async with anyio.create_task_group() as tg:
            for u in range(USERS):
                tg.start_soon(user, clients[u % len(clients)], u)
    return time.perf_counter() - start, latencies


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_routed(url: str, timeout_s: float = 60.0) -> None:
    """Serve's proxy learns a new route a moment after ``serve.run`` returns."""
    limit = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.post(url, json={"text": "ping"}, timeout=10.0).status_code == 200:
                return
        if time.monotonic() > limit:
            raise TimeoutError(f"Serve's proxy did not route {url} in {timeout_s} s")
        time.sleep(0.1)


def run(*, rounds: int = 5, requests: int = 2048, probe_rounds: int = 15) -> list[dict[str, Any]]:
    """Both measurements for both systems; one row per (measurement, system)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        handles = {}
        urls = {}
        for name, deployment in SYSTEMS.items():
            prefix = "/" + name.replace(".", "-")
            handles[name] = serve.run(deployment.bind(), name=name, route_prefix=prefix)
            urls[name] = f"http://127.0.0.1:{port}{prefix}"
            _wait_until_routed(urls[name])

        loop: dict[str, dict[str, list[float]]] = {
            name: {"throughput": [], "p50": [], "p99": []} for name in SYSTEMS
        }
        anyio.run(_closed_loop, urls["batched"], USERS)  # warm both paths up
        anyio.run(_closed_loop, urls["serve.batch"], USERS)
        for _ in range(rounds):
            for name in SYSTEMS:
                wall, latencies = anyio.run(_closed_loop, urls[name], requests)
                loop[name]["throughput"].append(len(latencies) / wall)
                loop[name]["p50"].append(percentile(latencies, 50) * 1e3)
                loop[name]["p99"].append(percentile(latencies, 99) * 1e3)

        overhead: dict[str, list[float]] = {name: [] for name in SYSTEMS}
        raw: dict[str, list[float]] = {name: [] for name in SYSTEMS}
        direct: dict[str, list[float]] = {name: [] for name in SYSTEMS}
        for name in SYSTEMS:  # warm-up
            handles[name].probe.remote(PROBE_N, 1).result()
        for _ in range(probe_rounds):
            for name in SYSTEMS:
                # A handle call reaches one replica, whichever Serve picks.
                for with_batching, plain in handles[name].probe.remote(PROBE_N, 5).result():
                    overhead[name].append((with_batching - plain) / PROBE_N * 1e6)
                    raw[name].append(with_batching / PROBE_N * 1e6)
                    direct[name].append(plain / PROBE_N * 1e6)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()

    settings = f"{REPLICAS} replicas, batch {BATCH_SIZE}, {TIMEOUT_MS:g} ms, {USERS} users"
    rows: list[dict[str, Any]] = [
        {
            "scenario": "ray_serve",
            "case": "closed loop via proxy",
            "system": name,
            "settings": settings,
            "requests_per_round": requests,
            "rounds": rounds,
            "throughput_rps": statistics.median(loop[name]["throughput"]),
            "p50_ms": statistics.median(loop[name]["p50"]),
            "p99_ms": statistics.median(loop[name]["p99"]),
        }
        for name in SYSTEMS
    ]
    ours = statistics.median(overhead["batched"])
    theirs = statistics.median(overhead["serve.batch"])
    rows += [
        {
            "scenario": "ray_serve",
            "case": "overhead in replica",
            "system": name,
            "probe_calls": PROBE_N,
            "bursts": len(overhead[name]),
            "us_per_request": statistics.median(overhead[name]),
            "us_per_request_with_task": statistics.median(raw[name]),
            "us_per_plain_task": statistics.median(direct[name]),
            "ratio_to_serve_batch": ours / theirs,
            "target_ratio": TARGET_RATIO,
            "met": ours <= TARGET_RATIO * theirs,
        }
        for name in SYSTEMS
    ]
    return rows


def describe(row: dict[str, Any]) -> str:
    """One printed line per row."""
    if row["case"] == "closed loop via proxy":
        return (
            f"{row['scenario']} {row['case']:22s} {row['system']:12s}"
            f" {row['throughput_rps']:7.0f} req/s  p50 {row['p50_ms']:7.1f} ms"
            f"  p99 {row['p99_ms']:7.1f} ms  ({row['settings']})"
        )
    line = (
        f"{row['scenario']} {row['case']:22s} {row['system']:12s}"
        f" {row['us_per_request']:7.2f} µs/request (a call in its own task"
        f" {row['us_per_request_with_task']:.2f} µs, the bare task {row['us_per_plain_task']:.2f})"
    )
    if row["system"] == "batched":
        line += (
            f"  ratio to serve.batch {row['ratio_to_serve_batch']:.2f}"
            f" (target <= {row['target_ratio']}{'' if row['met'] else ', MISSED'})"
        )
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_serve")
    parser.add_argument("--quick", action="store_true", help="few rounds: about a minute")
    parser.add_argument("--out", help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    kwargs = {"rounds": 1, "requests": 512, "probe_rounds": 3} if args.quick else {}
    rows = run(**kwargs)
    for row in rows:
        print(describe(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
