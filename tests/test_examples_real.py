"""The examples with real parts, driven from the test process.

``tests/test_examples.py`` runs every example as a script; here the pieces the examples
define (a FastAPI app served by uvicorn, a trio TCP service, a SQLite loader, a sync
model) are imported from their files and checked against their unbatched form.

Time: real sockets and worker threads run under ``real_time()`` (virtual time would
jump over every pending timer while a thread or the kernel works, firing batch windows
and hang guards early), with a ``fail_after`` hang guard. Nothing here waits by
sleeping: readiness comes from real I/O (a listening socket, a reply line), events, or
a thread's return.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import pytest
import trio
from _helpers import load_example, trio_only

import batched
from batched.testing import real_time

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

# uvicorn runs on asyncio only (also with uvloop, in CI's uvloop pass).
asyncio_or_uvloop = pytest.mark.parametrize(
    "anyio_backend",
    ["asyncio", *(["asyncio+uvloop"] if os.environ.get("BATCHED_UVLOOP") == "1" else [])],
    indirect=True,
)
# The trio example's nursery and `trio.serve_tcp` are trio's own: trio_only.


# -- examples/fastapi_app.py -----------------------------------------------------------


class Served(NamedTuple):
    mode: str
    api: Any  # a fastapi.FastAPI
    url: str


@pytest.fixture(params=["lifespan", "caller-driven"])
async def served(request: pytest.FixtureRequest, anyio_backend: object) -> AsyncIterator[Served]:
    """A fresh app of the example (its own batched function and stats), served by
    uvicorn on a free loopback port for the test."""
    example = load_example("fastapi_app", "fastapi", "uvicorn", "httpx")
    api = example.make_app(lifespan=request.param == "lifespan")
    with real_time():
        async with example.serving(api) as url:
            yield Served(request.param, api, url)


@asyncio_or_uvloop
@pytest.mark.anyio
async def test_fastapi_app_answers_200_concurrent_requests_in_batches(served: Served) -> None:
    example = load_example("fastapi_app")
    texts = [f"text {i}: " + "ab" * (i % 13) for i in range(200)]
    with anyio.fail_after(60):
        vectors = await example.post_many(served.url, texts)
        stats = await example.get_stats(served.url)
    assert vectors == [example.embed_text(text) for text in texts]
    assert stats["completed"] == len(texts), stats
    assert stats["failed"] == 0, stats
    assert stats["avg_batch_size"] > 1, stats  # the requests shared batches
    assert stats["total_batches"] < len(texts), stats
    # /stats serves the app's own batched function's counters.
    assert stats["total_batches"] == served.api.state.embed.stats.total_batches


@asyncio_or_uvloop
@pytest.mark.anyio
async def test_fastapi_app_rejects_a_bad_body_without_calling_the_model(served: Served) -> None:
    import httpx

    with anyio.fail_after(30):
        async with httpx.AsyncClient(base_url=served.url) as client:
            response = await client.post("/embed", json={"txt": "no text field"})
    assert response.status_code == 422
    assert served.api.state.embed.stats.submitted == 0


def test_fastapi_app_module_has_both_apps() -> None:
    example = load_example("fastapi_app", "fastapi", "uvicorn", "httpx")
    paths = {route.path for route in example.app.routes}
    assert {"/embed", "/stats"} <= paths
    assert {"/embed", "/stats"} <= {route.path for route in example.app_driven.routes}
    # Two apps, two batched functions: their stats stay apart.
    assert example.app.state.embed is not example.app_driven.state.embed


# -- examples/trio_service.py ----------------------------------------------------------


@trio_only
@pytest.mark.anyio
async def test_trio_service_replies_to_every_line_with_batched_lookups() -> None:
    example = load_example("trio_service")
    service = example.KeyValueService({f"k{i}": f"v{i * i}" for i in range(50)})
    requests = [[f"k{(5 * c + 3 * j) % 60}" for j in range(8)] for c in range(12)]
    # Real time: the batch window must stay open while the kernel moves the lines.
    with real_time(), anyio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await service.serve(nursery)
            replies = await example.ask_all(port, requests)
            nursery.cancel_scope.cancel()
    assert replies == [[service.value_of(key) for key in keys] for keys in requests]
    assert example.MISSING in {reply for lines in replies for reply in lines}
    lines = sum(map(len, requests))
    assert sum(service.batch_sizes) == lines
    assert max(service.batch_sizes) > 1  # lookups of several connections shared a batch
    assert service.lookup.stats.completed == lines
    assert service.lookup.stats.failed == 0


@trio_only
@pytest.mark.anyio
async def test_trio_service_drops_a_partial_line_and_survives_a_vanished_client() -> None:
    example = load_example("trio_service")
    service = example.KeyValueService({"a": "1"})
    with real_time(), anyio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await service.serve(nursery)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"a\nunfinished")  # then hang up mid-line
                reply = await example.LineStream(stream).receive_line()
            # The service still serves the next client.
            replies = await example.ask_all(port, [["a", "b"]])
            nursery.cancel_scope.cancel()
    assert reply == service.value_of("a")
    assert replies == [[service.value_of("a"), service.value_of("b")]]
    assert service.lookup.stats.completed == 3  # the partial line never reached a lookup


@trio_only
@pytest.mark.anyio
async def test_trio_nursery_of_1000_callers_shares_batches() -> None:
    example = load_example("trio_service")
    example.square_batches.clear()
    results: dict[int, int] = {}

    async def caller(n: int) -> None:
        results[n] = await example.square(n)

    with anyio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for n in range(1000):
                nursery.start_soon(caller, n)
    assert results == {n: example.square_of(n) for n in range(1000)}
    # The nursery's tasks all call before the first batch is cut: only full batches.
    assert example.square_batches == [100] * math.ceil(1000 / 100)


# -- examples/sqlite_dataloader.py -----------------------------------------------------


@pytest.fixture(scope="module")
def user_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    example = load_example("sqlite_dataloader")
    path = tmp_path_factory.mktemp("sqlite") / "users.db"
    example.create_database(path, users=1000)
    return path


@pytest.mark.anyio
async def test_sqlite_loader_answers_1000_calls_with_few_deduplicated_queries(
    user_db: Path,
) -> None:
    example = load_example("sqlite_dataloader")
    ids = example.requested_ids(1000, seed=3)
    # Real time: the queries run in worker threads (virtual time would fire the hang
    # guard while one runs); nothing below depends on how long they take.
    with real_time(), anyio.fail_after(60):
        async with example.UserLoader(user_db) as loader:
            users = await example.load_all(loader, ids)
    assert users == [example.select_user(user_db, user_id) for user_id in ids]
    assert None in users  # some ids have no row
    assert len(loader.queries) * 10 <= len(ids)  # far fewer queries than calls
    fetched = [user_id for query in loader.queries for user_id in query]
    assert all(len(query) == len(set(query)) for query in loader.queries)  # dedupe
    assert len(fetched) < len(ids)  # repeated ids were collapsed
    assert set(fetched) == set(ids)
    stats = loader.batcher.stats
    assert stats.completed == len(ids)
    assert stats.failed == 0


@pytest.mark.anyio
async def test_sqlite_loader_gives_none_for_a_missing_id(user_db: Path) -> None:
    example = load_example("sqlite_dataloader")
    with real_time(), anyio.fail_after(30):
        async with example.UserLoader(user_db) as loader:
            missing = await loader.get_user(0)
            mixed = await loader.batcher.many([1, 5000, 2, 5000])
        with pytest.raises(batched.BatcherClosed):
            await loader.get_user(1)  # the loader's block has ended
    assert missing is None
    assert example.select_user(user_db, 0) is None
    assert mixed == [example.select_user(user_db, user_id) for user_id in (1, 5000, 2, 5000)]
    assert mixed[0] is not None
    assert mixed[1] is None


@pytest.mark.anyio
async def test_sqlite_loader_without_dedupe_fetches_every_call(user_db: Path) -> None:
    example = load_example("sqlite_dataloader")
    ids = [7, 7, 7, 8]
    with real_time(), anyio.fail_after(30):
        async with example.UserLoader(user_db, dedupe=False) as loader:
            users = await example.load_all(loader, ids)
    assert users == [example.select_user(user_db, user_id) for user_id in ids]
    assert sorted(user_id for query in loader.queries for user_id in query) == sorted(ids)


# -- examples/sync_model.py ------------------------------------------------------------


def _inputs(n: int, seed: int) -> list[Any]:
    np = pytest.importorskip("numpy")
    return list(np.random.default_rng(seed).standard_normal((n, 32)))


def _close_rows(got: Any, want: Any) -> bool:
    import numpy as np

    return bool(np.allclose(got, want, rtol=1e-12, atol=1e-12))


def test_sync_model_predict_from_16_threads() -> None:
    example = load_example("sync_model", "numpy")
    model = example.Model()
    inputs = _inputs(16 * 20, seed=5)
    with model.predict, ThreadPoolExecutor(16) as pool:
        outputs = list(pool.map(model.predict, inputs))
        stats = model.predict.stats
    assert all(_close_rows(out, model.forward(x)) for x, out in zip(inputs, outputs, strict=True))
    assert stats.completed == len(inputs)
    assert stats.failed == 0
    assert stats.total_batches < len(inputs)
    assert stats.avg_batch_size > 1  # the threads' calls shared batches
    with pytest.raises(batched.BatcherClosed):
        model.predict(inputs[0])  # `with model.predict:` closed it


def test_sync_model_has_one_batcher_per_instance() -> None:
    example = load_example("sync_model", "numpy")
    first, second = example.Model(seed=0), example.Model(seed=1)
    x = _inputs(1, seed=6)[0]
    try:
        assert first.predict is first.predict
        assert first.predict is not second.predict
        out_first, out_second = first.predict(x), second.predict(x)
        assert _close_rows(out_first, first.forward(x))
        assert _close_rows(out_second, second.forward(x))
        assert not _close_rows(out_first, out_second)  # each instance used its own weights
        assert first.predict.stats.completed == second.predict.stats.completed == 1
    finally:
        first.predict.close()
        second.predict.close()


@pytest.mark.anyio
async def test_sync_model_from_async_code() -> None:
    example = load_example("sync_model", "numpy")
    model = example.Model()
    inputs = _inputs(64, seed=7)
    outputs: list[Any] = [None] * len(inputs)

    async def caller(i: int) -> None:
        outputs[i] = await model.predict.acall(inputs[i])

    with real_time(), anyio.fail_after(30):  # the batches run in the serving thread
        try:
            with pytest.raises(RuntimeError, match="acall"):
                model.predict(inputs[0])  # would block this event loop's thread
            async with anyio.create_task_group() as tg:
                for i in range(len(inputs)):
                    tg.start_soon(caller, i)
        finally:
            await model.predict.aclose()
    assert all(_close_rows(out, model.forward(x)) for x, out in zip(inputs, outputs, strict=True))
    stats = model.predict.stats
    assert stats.completed == len(inputs)
    assert stats.total_batches < len(inputs)


# A model object is often copied (a variant with other weights) or pickled (sent to a
# process pool, saved): each copy gets a batched method of its own on first use.


def test_sync_model_copy_predicts_with_its_own_weights() -> None:
    example = load_example("sync_model", "numpy")
    model = example.Model(seed=0)
    x = _inputs(1, seed=8)[0]
    model.predict(x)  # first use: the batched method is made and cached
    variant = copy.copy(model)
    variant.w2 = variant.w2 * 2.0
    try:
        assert _close_rows(variant.predict(x), variant.forward(x))
    finally:
        model.predict.close()
        variant.predict.close()


def test_sync_model_deepcopies_after_use() -> None:
    example = load_example("sync_model", "numpy")
    model = example.Model(seed=0)
    x = _inputs(1, seed=9)[0]
    try:
        model.predict(x)
        clone = copy.deepcopy(model)
        try:
            assert _close_rows(clone.predict(x), model.forward(x))
        finally:
            clone.predict.close()
    finally:
        model.predict.close()


def test_sync_model_pickles_after_use() -> None:
    example = load_example("sync_model", "numpy")
    model = example.Model(seed=0)
    x = _inputs(1, seed=10)[0]
    try:
        model.predict(x)
        clone = pickle.loads(pickle.dumps(model))
        try:
            assert _close_rows(clone.predict(x), model.forward(x))
        finally:
            clone.predict.close()
    finally:
        model.predict.close()
