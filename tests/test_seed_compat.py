"""Code written for mixedbread's ``batched`` 0.1.5 runs unchanged.

Each test uses the seed's public API the way its README and docstrings show it: the
names of its modules' ``__all__`` (and of ``batched.types`` and ``batched.utils``), its
decorators' keywords, its processors and their methods. Async code runs on asyncio and
trio (the seed's API is asyncio's; ours serves both); thread code runs in real time,
small, with a hang guard on every wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import pytest
from _helpers import BACKENDS, JOIN, Rec, assert_stats_add_up, close_bounded, run_python, settle

import batched
import batched.aio.inference
import batched.inference
import batched.types
import batched.utils
from batched import aio, inference
from batched.testing import real_time
from batched.types import PriorityStrategy

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

# The seed's public names, module by module: its `__all__`s, and the public namespaces of
# `batched.types` and `batched.utils` (which have none).
SEED_NAMES = {
    "batched": ["BatchProcessor", "aio", "dynamically", "inference", "types", "utils"],
    "batched.aio": ["AsyncBatchProcessor", "dynamically", "inference"],
    "batched.inference": ["ModelBatchProcessor", "dynamically"],
    "batched.aio.inference": ["AsyncModelBatchProcessor", "dynamically"],
    "batched.types": [
        "AsyncCache",
        "BatchFunc",
        "BatchInfer",
        "BatchProcessorStats",
        "CacheStats",
        "Feature",
        "NDArrayOrTensor",
        "PriorityStrategy",
        "T",
        "U",
    ],
    # Module paths the seed's own code and tests import from (in no `__all__`).
    "batched.batch_processor": ["BatchProcessor", "dynamically"],
    "batched.aio.batch_processor": ["AsyncBatchProcessor", "dynamically"],
    "batched.inference.model_batch_processor": ["ModelBatchProcessor", "dynamically"],
    "batched.aio.inference.model_batch_processor": ["AsyncModelBatchProcessor", "dynamically"],
    "batched.inference.helper": [
        "stack_features",
        "stack_outputs",
        "torch_or_np",
        "unstack_features",
        "unstack_outputs",
    ],
    "batched.utils": [
        "AsyncDiskCache",
        "batch_iter",
        "batch_iter_by_length",
        "bucket_batch_iter",
        "ensure_async",
        "ensure_import",
        "first",
        "get_or_create_event_loop",
        "is_method",
    ],
}


@pytest.fixture
def cleanup() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


def in_threads(fn: Any, *args_per_thread: tuple[Any, ...]) -> list[Any]:
    """``fn(*args)`` in one thread per tuple, started together; the results in order."""
    results: list[Any] = [None] * len(args_per_thread)
    barrier = threading.Barrier(len(args_per_thread), timeout=JOIN)

    def run(index: int, args: tuple[Any, ...]) -> None:
        barrier.wait()
        results[index] = fn(*args)

    threads = [
        threading.Thread(target=run, args=(index, args), daemon=True)
        for index, args in enumerate(args_per_thread)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN)
        assert not thread.is_alive(), "a caller is still blocked"
    return results


# -- the names --------------------------------------------------------------------------


@pytest.mark.parametrize("module", sorted(SEED_NAMES))
def test_every_public_name_of_the_seed_exists_at_its_path(module: str) -> None:
    namespace = __import__(module, fromlist=["_"])
    missing = [name for name in SEED_NAMES[module] if not hasattr(namespace, name)]
    assert not missing
    if module in ("batched", "batched.aio", "batched.inference", "batched.aio.inference"):
        assert set(SEED_NAMES[module]) <= set(namespace.__all__)


def test_the_seed_module_paths_hold_the_same_objects() -> None:
    import batched.aio.batch_processor
    import batched.aio.inference.model_batch_processor
    import batched.batch_processor
    import batched.inference.model_batch_processor

    assert batched.batch_processor.BatchProcessor is batched.BatchProcessor
    assert batched.batch_processor.dynamically is batched.dynamically
    assert batched.aio.batch_processor.AsyncBatchProcessor is batched.aio.AsyncBatchProcessor
    assert batched.aio.batch_processor.dynamically is batched.aio.dynamically
    paths = (batched.inference.model_batch_processor, batched.aio.inference.model_batch_processor)
    assert paths[0].ModelBatchProcessor is batched.inference.ModelBatchProcessor
    assert paths[1].AsyncModelBatchProcessor is batched.aio.inference.AsyncModelBatchProcessor


def test_the_inference_helpers_pad_stack_and_unstack() -> None:
    from batched.inference.helper import (
        stack_features,
        stack_outputs,
        torch_or_np,
        unstack_features,
        unstack_outputs,
    )

    rows = [{"ids": np.array([1, 2, 3], dtype=np.int32)}, {"ids": np.array([4], dtype=np.int32)}]
    right = stack_features(rows, {"ids": 9})
    assert right["ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert right["ids"].dtype == np.int32  # the feature's own dtype
    left = stack_features(rows, {}, padding_side="left")
    assert left["ids"].tolist() == [[1, 2, 3], [0, 0, 4]]
    with pytest.raises(ValueError, match="padding_side"):
        stack_features(rows, {}, padding_side="middle")
    assert [row["ids"].tolist() for row in unstack_features(right)] == [[1, 2, 3], [4, 9, 9]]
    outputs = [np.array([1.0, 2.0]), np.array([3.0, 4.0])]
    stacked = stack_outputs(outputs)
    assert stacked.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert [row.tolist() for row in unstack_outputs(stacked)] == [[1.0, 2.0], [3.0, 4.0]]
    as_dicts = stack_outputs([{"e": out} for out in outputs])
    assert [row["e"].tolist() for row in unstack_outputs(as_dicts)] == [[1.0, 2.0], [3.0, 4.0]]
    as_lists = stack_outputs([[out, out * 2] for out in outputs])
    assert [len(row) for row in unstack_outputs(as_lists)] == [2, 2]
    assert torch_or_np({"x": [np.zeros(1)]}) is np
    with pytest.raises(ValueError, match="numpy arrays or torch tensors"):
        torch_or_np([1, 2])


def test_submodules_load_on_first_access_and_keep_import_light() -> None:
    code = (
        "import sys\n"
        "from batched import aio\n"
        "import batched\n"
        "assert callable(aio.inference.dynamically)\n"  # no one imported it before
        "assert batched.types.PriorityStrategy is batched.PriorityStrategy\n"
        "assert list(batched.utils.batch_iter([1, 2, 3], 2)) == [[1, 2], [3]]\n"
        "from batched import *\n"
        "assert inference.ModelBatchProcessor and types.CacheStats and utils.first\n"
        "print(sorted({'numpy', 'torch', 'trio', 'hypothesis'} & set(sys.modules)))\n"
    )
    proc = run_python("-c", code, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_seed_types_map_onto_ours() -> None:
    assert batched.types.BatchProcessorStats is batched.BatchStats
    assert batched.types.AsyncCache is batched.cache.AsyncCache
    assert PriorityStrategy is batched.PriorityStrategy is batched.aio.PriorityStrategy
    assert [member.name for member in PriorityStrategy] == ["NONE", "LENGTH", "PRIORITY"]


# -- README: the thread implementation --------------------------------------------------


class Embedder:
    def __init__(self, scale: int) -> None:
        self.scale = scale

    @batched.dynamically
    def embed(self, sentences: list[str]) -> list[np.ndarray]:
        return [np.full(2, len(sentence) * self.scale) for sentence in sentences]


def test_readme_basic_example_on_a_method(cleanup: contextlib.ExitStack) -> None:
    embedder = Embedder(10)
    cleanup.callback(close_bounded, embedder.embed)
    assert embedder.embed("four").tolist() == [40, 40]
    embeddings = embedder.embed([f"s{i}" for i in range(100)])
    assert len(embeddings) == 100
    assert embeddings[99].tolist() == [30, 30]

    async def main() -> None:
        with anyio.fail_after(JOIN):
            assert (await embedder.embed.acall("xy")).tolist() == [20, 20]
            assert len(await embedder.embed.acall(["a", "bb"])) == 2

    for backend in BACKENDS:
        anyio.run(main, backend=backend)
    stats = embedder.embed.stats
    assert (stats.submitted, stats.completed) == (107, 107)  # 1 + 100 + 2 x (1 + 2)


def test_readme_sync_function_with_the_seed_keywords(cleanup: contextlib.ExitStack) -> None:
    batches: list[int] = []

    @batched.dynamically(batch_size=64, timeout_ms=5.0, small_batch_threshold=2)
    def my_function(items: list[int]) -> list[str]:
        batches.append(len(items))
        return [f"{item * 2}" for item in items]

    cleanup.callback(close_bounded, my_function)
    assert my_function(2) == "4"
    assert my_function([2, 3, 4]) == ["4", "6", "8"]

    async def main() -> None:
        with anyio.fail_after(JOIN):
            assert await my_function.acall(2) == "4"
            assert await my_function.acall([2, 3, 4]) == ["4", "6", "8"]

    for backend in BACKENDS:
        anyio.run(main, backend=backend)
    assert isinstance(my_function.stats, batched.types.BatchProcessorStats)
    assert my_function.stats.total_processed == sum(batches) == 12


def test_start_shutdown_and_clear_stats_of_a_decorated_sync_function(
    cleanup: contextlib.ExitStack,
) -> None:
    @batched.dynamically(batch_size=4, timeout_ms=1.0)
    def double(items: list[int]) -> list[int]:
        return [item * 2 for item in items]

    cleanup.callback(close_bounded, double)
    double.start()
    double.start()  # harmless when running
    assert double([1, 2]) == [2, 4]
    double.clear_stats()
    assert double.stats == batched.BatchStats()
    double.shutdown()
    with pytest.raises(batched.BatcherClosed):  # the seed's call would hang here
        double(1)
    double.start()  # starts afresh
    assert double(3) == 6
    assert double.stats.completed == 1


def test_batch_processor_shows_the_seed_attributes(cleanup: contextlib.ExitStack) -> None:
    def dummy(items: list[int]) -> list[int]:
        return items

    processor: batched.BatchProcessor[int, int] = batched.BatchProcessor(
        dummy, batch_size=32, timeout_ms=5.0, small_batch_threshold=8
    )
    cleanup.callback(close_bounded, processor)
    assert processor.batch_func is dummy
    assert processor.small_batch_threshold == 8
    assert processor([1, 2]) == [1, 2]


def test_wrong_result_count_is_an_error_not_a_hang(cleanup: contextlib.ExitStack) -> None:
    # The seed checks with `assert`: under `python -O` its callers wait for ever.
    processor: batched.BatchProcessor[int, int] = batched.BatchProcessor(
        lambda items: items[:-1], batch_size=4, timeout_ms=1.0
    )
    cleanup.callback(close_bounded, processor)
    with pytest.raises(batched.BatchSizeMismatch, match="2 results for a batch of 3"):
        processor([1, 2, 3])


# -- README: the asyncio implementation --------------------------------------------------


async def test_readme_aio_function_sync_and_async() -> None:
    @aio.dynamically(batch_size=64, timeout_ms=20.0, small_batch_threshold=10)
    def my_function(items: list[int]) -> list[int]:  # a plain def: still awaited
        return [item * 2 for item in items]

    @aio.dynamically
    async def my_async_function(items: list[int]) -> list[int]:
        return [item * 3 for item in items]

    with real_time(), anyio.fail_after(JOIN):  # the plain def runs in a worker thread
        assert await my_function(2) == 4
        assert await my_function([2, 3, 4]) == [4, 6, 8]
    assert await my_async_function(2) == 6
    assert await my_async_function.acall([1, 2]) == [3, 6]
    assert my_function.stats.completed == 4
    await my_async_function.start()  # nothing to start or stop: kept for seed code
    await my_async_function.shutdown()
    my_async_function.clear_stats()
    assert my_async_function.stats == batched.BatchStats()


@pytest.mark.parametrize(
    ("strategy", "order"),
    [
        (PriorityStrategy.NONE, ["ccc", "a", "bb"]),
        (PriorityStrategy.LENGTH, ["a", "bb", "ccc"]),
    ],
)
async def test_priority_strategy_keyword_of_aio_dynamically(
    strategy: PriorityStrategy, order: list[str]
) -> None:
    rec = Rec(hold={"hold"})
    f = aio.dynamically(rec, batch_size=8, timeout_ms=50.0, priority_strategy=strategy)
    async with anyio.create_task_group() as tg:
        tg.start_soon(f, "hold")
        await rec.running.wait()
        for item in ["ccc", "a", "bb"]:  # wait while the held batch runs
            tg.start_soon(f, item)
            await settle()
        rec.release.set()
    assert rec.batches == [["hold"], order]


async def test_aio_processor_and_its_attributes() -> None:
    async def dummy(items: list[int]) -> list[int]:
        return [item * 2 for item in items]

    processor: aio.AsyncBatchProcessor[int, int] = aio.AsyncBatchProcessor(
        dummy, batch_size=3, timeout_ms=10.0, priority_strategy=PriorityStrategy.PRIORITY
    )
    assert processor.batch_func is dummy
    assert processor.small_batch_threshold == 8
    assert processor.priority_strategy is PriorityStrategy.PRIORITY
    assert await processor(5) == 10
    assert await processor([1, 2, 3, 4]) == [2, 4, 6, 8]
    assert (processor.stats.total_batches, processor.stats.total_processed) == (3, 5)
    processor.clear_stats()
    assert processor.stats.total_batches == 0


def test_seed_keywords_batch_item_cls_and_both_strategies() -> None:
    class Item:
        pass

    with pytest.warns(UserWarning, match="batch_item_cls"):
        aio.dynamically(batch_item_cls=Item)
    with pytest.warns(UserWarning, match="batch_item_cls"):
        aio.AsyncBatchProcessor(Rec(), batch_item_cls=Item)
    with pytest.warns(UserWarning, match="batch_item_cls"):
        aio.inference.AsyncModelBatchProcessor(lambda features: features, batch_item_cls=Item)
    with pytest.raises(TypeError, match="not both"):
        batched.dynamically(strategy=batched.Fifo(), priority_strategy=PriorityStrategy.NONE)


async def test_clear_stats_mid_run_keeps_the_counters_adding_up() -> None:
    rec = Rec(hold={"hold"})
    f = aio.dynamically(rec, batch_size=1, timeout_ms=0.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(f, "hold")
        await rec.running.wait()
        tg.start_soon(f, "next")
        await settle()
        f.clear_stats()
        assert f.stats.submitted == 2  # in flight: the held item and the one behind it
        rec.release.set()
    stats = f.stats
    assert (stats.submitted, stats.completed) == (2, 2)
    assert_stats_add_up(f)


# -- inference ------------------------------------------------------------------------------


def test_inference_processor_left_padding_from_threads(cleanup: contextlib.ExitStack) -> None:
    processor = inference.ModelBatchProcessor(
        lambda features: features["input_ids"],
        batch_size=2,
        timeout_ms=10_000.0,  # the two calls fill the batch
        pad_tokens={"input_ids": 0},
        padding_side="left",
    )
    cleanup.callback(close_bounded, processor)
    assert (processor.padding_side, processor.pad_tokens) == ("left", {"input_ids": 0})
    assert (processor.spread_kwargs, processor.small_batch_threshold) == (False, 8)
    first, second = in_threads(
        processor, ({"input_ids": np.array([[1, 2, 3]])},), ({"input_ids": np.array([[4, 5]])},)
    )
    assert first.tolist() == [[1, 2, 3]]
    assert second.tolist() == [[0, 4, 5]]  # left-padded to its batch-mate's length
    assert processor.stats.total_batches == 1
    processor.shutdown()
    with pytest.raises(batched.BatcherClosed):
        processor(input_ids=np.array([[1]]))


def test_inference_decorator_keyword_calls_and_acall(cleanup: contextlib.ExitStack) -> None:
    # batched.inference's decorators are typed loosely (Any): hence the ignores.
    @inference.dynamically(  # type: ignore[untyped-decorator]
        batch_size=4, timeout_ms=1.0, pad_tokens={"x": -1}, spread_kwargs=True
    )
    def model(x: np.ndarray) -> np.ndarray:
        return x * 2

    cleanup.callback(close_bounded, model)
    assert model(x=np.array([[1, 2], [3, 4]])).tolist() == [[2, 4], [6, 8]]
    assert model({"x": np.array([[5]])}).tolist() == [[10]]

    async def main() -> None:
        with anyio.fail_after(JOIN):
            assert (await model.acall(x=np.array([[1]]))).tolist() == [[2]]

    for backend in BACKENDS:
        anyio.run(main, backend=backend)
    model.clear_stats()
    assert model.stats.submitted == 0


async def test_readme_aio_inference_model_returning_a_list() -> None:
    @aio.inference.dynamically(  # type: ignore[untyped-decorator]
        pad_tokens={"input_ids": 0}, batch_size=8, timeout_ms=20.0
    )
    async def model(features: dict[str, np.ndarray]) -> list[np.ndarray]:
        ids = features["input_ids"]
        return [ids * 2, ids.sum(axis=1)]

    results: dict[str, Any] = {}

    async def call(name: str, ids: np.ndarray) -> None:
        results[name] = await model(input_ids=ids)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "two", np.array([[1, 2, 3], [4, 5, 6]]))
        await settle()
        tg.start_soon(call, "one", np.array([[7, 8]]))
    assert [part.tolist() for part in results["two"]] == [[[2, 4, 6], [8, 10, 12]], [6, 15]]
    assert [part.tolist() for part in results["one"]] == [[[14, 16, 0]], [15]]
    assert model.stats.total_batches == 1


async def test_aio_model_processor_with_dict_outputs() -> None:
    async def model(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"ids": features["input_ids"], "mask": features["attention_mask"]}

    processor = aio.inference.AsyncModelBatchProcessor(
        model,
        batch_size=2,
        pad_tokens={"input_ids": 0, "attention_mask": 0},
        padding_side="left",
        priority_strategy=PriorityStrategy.LENGTH,
    )
    assert processor.batch_func is model
    assert processor.pad_tokens == {"input_ids": 0, "attention_mask": 0}
    out = await processor(input_ids=np.array([[1, 2], [3, 4]]), attention_mask=np.ones((2, 2)))
    assert out["ids"].tolist() == [[1, 2], [3, 4]]
    assert processor.stats.total_processed == 2


# -- batched.types and batched.utils ---------------------------------------------------


class SeedStyleCache:
    """A cache written for the seed: ``None`` for a miss, its own ``CacheStats`` updated
    in place (as the seed's ``AsyncDiskCache`` does)."""

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self._stats = batched.types.CacheStats()

    async def get(self, key: Any) -> Any:
        value = self.data.get(key)
        self._stats.update_get(hit=value is not None, time_taken=0.25)
        return value

    async def set(self, key: Any, value: Any) -> None:
        self.data[key] = value
        self._stats.update_set(time_taken=0.5)

    async def clear(self) -> None:
        self.data.clear()

    def stats(self) -> batched.types.CacheStats:
        return self._stats


def test_seed_cache_stats_count_in_place() -> None:
    stats = batched.types.CacheStats()
    assert (stats.avg_get_time, stats.avg_hit_time, stats.avg_set_time) == (0.0, 0.0, 0.0)
    stats.update_get(hit=True, time_taken=1.0)
    stats.update_get(hit=False, time_taken=3.0)
    stats.update_set(time_taken=0.5)
    assert (stats.gets, stats.hits, stats.misses, stats.sets) == (2, 1, 1, 1)
    assert (stats.avg_get_time, stats.avg_hit_time, stats.avg_set_time) == (2.0, 1.0, 0.5)


async def test_a_cache_written_for_the_seed_serves_a_batcher() -> None:
    cache = SeedStyleCache()
    rec = Rec()
    f = aio.dynamically(rec, cache=cache)
    assert isinstance(cache, batched.types.AsyncCache)
    assert await f(1) == ("r", 1)
    assert await f(1) == ("r", 1)  # served from the cache
    assert rec.batches == [[1]]
    counted = f.stats.cache_stats
    assert isinstance(counted, batched.cache.CacheStats)
    assert (counted.gets, counted.hits, counted.misses, counted.sets) == (2, 1, 1, 1)
    assert (counted.avg_get_time, counted.avg_hit_time, counted.avg_set_time) == (0.25, 0.25, 0.5)


async def test_async_disk_cache(tmp_path: Path) -> None:
    rec = Rec()
    with real_time():  # the disk works in worker threads
        cache: batched.utils.AsyncDiskCache[Any, Any] = batched.utils.AsyncDiskCache(
            str(tmp_path / "cache"), collect_stats=True, expiration_seconds=60
        )
        assert await cache.get("absent") is None
        f = aio.dynamically(rec, cache=cache)
        with anyio.fail_after(JOIN):
            assert await f.many([1, 2]) == [("r", 1), ("r", 2)]
            assert await f(2) == ("r", 2)
        assert rec.batches == [[1, 2]]
        stats = cache.stats()
        assert (stats.gets, stats.hits, stats.sets) == (4, 1, 2)
        assert stats.avg_get_time >= 0.0
        cache.clear_stats()
        assert cache.stats() == batched.types.CacheStats()
        await cache.clear()
        assert await cache.get(1) is None
    quiet: batched.utils.AsyncDiskCache[str, str] = batched.utils.AsyncDiskCache(
        str(tmp_path / "quiet")
    )
    with real_time():
        await quiet.set("k", "v")
        assert await quiet.get("k") == "v"
    assert quiet.stats().gets == 0  # counted only with collect_stats=True


def test_iteration_helpers() -> None:
    utils = batched.utils
    assert utils.first({"a": 1, "b": 2}) == "a"
    with pytest.raises(StopIteration):
        utils.first([])
    assert list(utils.batch_iter([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    words = ["aaaa", "b", "cc", "dddddd", "e"]
    assert list(utils.batch_iter_by_length(words, max_batch_length=5, batch_size=2)) == [
        ["aaaa", "b"],
        ["cc"],
        ["dddddd"],  # over the budget alone: it travels alone
        ["e"],
    ]
    assert list(utils.bucket_batch_iter(["bb", "a"], 4)) == [(["bb", "a"], [0, 1])]
    assert list(utils.bucket_batch_iter(["bb", "a", "cccc", "ddd"], 2)) == [
        (["cccc", "ddd"], [2, 3]),
        (["bb", "a"], [0, 1]),
    ]
    assert list(utils.bucket_batch_iter(["bb", "a", "cccc"], 2, descending=False)) == [
        (["a", "bb"], [1, 0]),
        (["cccc"], [2]),
    ]


def test_introspection_and_import_helpers() -> None:
    utils = batched.utils

    class Model:
        def predict(self, items: list[int]) -> list[int]:
            return items

    assert utils.is_method(Model.predict)
    assert not utils.is_method(Model().predict)  # bound: `self` is gone
    assert not utils.is_method(len)
    assert not utils.is_method(42)
    expected = pytest.raises(ImportError, match="pip install some-dist")
    with expected as caught, utils.ensure_import("some-dist"):
        import batched_no_such_module  # type: ignore[import-not-found]  # noqa: F401
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


async def test_ensure_async() -> None:
    async def native(x: int) -> int:
        return x + 1

    def blocking(x: int, *, by: int) -> int:
        return x * by

    assert batched.utils.ensure_async(native) is native
    wrapped = batched.utils.ensure_async(blocking)
    assert wrapped.__name__ == "blocking"
    with real_time(), anyio.fail_after(JOIN):
        assert await wrapped(3, by=4) == 12


def test_get_or_create_event_loop() -> None:
    created = batched.utils.get_or_create_event_loop()  # none running: made and set
    try:
        assert batched.utils.get_or_create_event_loop() is created  # and reused

        async def running() -> asyncio.AbstractEventLoop:
            return batched.utils.get_or_create_event_loop()

        assert created.run_until_complete(running()) is created
    finally:
        created.close()
        asyncio.set_event_loop(None)
