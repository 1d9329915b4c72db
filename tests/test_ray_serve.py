"""examples/ray_serve_app.py on a local Ray cluster: batches form inside every replica.

Ray is an optional extra (``batched-anyio[ray]``): without it this module skips. Ray
starts once for the module (a local cluster of 2 CPUs, Serve's HTTP proxy on a free
loopback port, the example's 2 replicas); the requests go through the proxy over real
sockets, so the test follows real time (``real_time()``) under a ``fail_after`` guard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest
from _helpers import ROOT, load_example

from batched.testing import real_time

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

pytest.importorskip("ray", reason="Ray Serve is not installed: pip install 'batched-anyio[ray]'")
pytest.importorskip("ray.serve", reason="Ray is installed without Serve: pip install 'ray[serve]'")
httpx = pytest.importorskip("httpx", reason="the requests go through Serve's proxy with httpx")

pytestmark = [pytest.mark.anyio, pytest.mark.ray]

REQUESTS = 400
GUARD_S = 120.0  # real seconds: 400 requests take a few on this 2-core machine


@pytest.fixture(scope="module")
def app() -> ModuleType:
    """examples/ray_serve_app.py, whose classes Ray ships to the replicas by value: Ray
    pickles a class by reference when its module imports, and a replica could not import
    this one (loaded from a file, under a made-up name)."""
    import ray.cloudpickle

    module = load_example("ray_serve_app")
    ray.cloudpickle.register_pickle_by_value(module)
    return module


@pytest.fixture(scope="module")
def base_url(app: ModuleType) -> Iterator[str]:
    """The example's deployment behind Serve's proxy, for the whole module."""
    # The replicas import this checkout's `batched`, as the test process does.
    with app.local_ray(runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}):
        yield app.serve_app(app.Scorer.bind(), port=app.free_port())


async def test_concurrent_requests_batch_in_every_replica(app: ModuleType, base_url: str) -> None:
    texts = [f"request {i}: {'x' * (i % 13)}" for i in range(REQUESTS)]
    with real_time(), anyio.fail_after(GUARD_S):
        replies: list[dict[str, Any]] = await app.post_many(base_url, texts)

    # Every caller got the unbatched answer for its own text.
    assert [reply["text"] for reply in replies] == texts
    wrong = [t for t, r in zip(texts, replies, strict=True) if r["score"] != app.score(t)]
    assert not wrong, f"{len(wrong)} wrong scores, e.g. {wrong[:3]}"

    sizes = app.batch_sizes_by_replica(replies)
    assert len(sizes) == app.REPLICAS, sizes  # Serve used both replicas
    for replica, counts in sizes.items():
        assert max(counts) > 1, f"replica {replica} never formed a batch: {counts}"
        assert max(counts) <= app.BATCH_SIZE, (replica, counts)
        # n requests report a batch of size k only in whole batches: k divides n (the
        # replies report what the batch function saw, not a guess).
        assert all(n % size == 0 for size, n in counts.items()), (replica, counts)



async def test_a_bad_request_is_refused_alone(app: ModuleType, base_url: str) -> None:
    texts = [f"neighbour {i}" for i in range(40)]
    with real_time(), anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg, httpx.AsyncClient(timeout=60.0) as client:

            async def bad() -> None:
                nonlocal refused
                refused = await client.post(f"{base_url}/", json={"text": 5})

            refused: httpx.Response | None = None
            tg.start_soon(bad)
            replies = await app.post_many(base_url, texts)

    assert refused is not None
    assert refused.status_code == 400, refused.text
    assert refused.json() == {"error": "'text' must be a string: 5"}
    # Its neighbours, sent at the same time, all got their own answers.
    assert [reply["score"] for reply in replies] == [app.score(text) for text in texts]
