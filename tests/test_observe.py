"""``on_batch`` and ``batched.BatchInfo``: one report per finished batch, on every front."""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any

import anyio
import pytest
from _helpers import Boom, run_python
from hypothesis import given, settings
from hypothesis import strategies as st

import batched
from batched.testing import arrival_schedules, run_schedule

pytestmark = pytest.mark.anyio

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def double(items: list[int]) -> list[int]:
    return [2 * x for x in items]


async def _send(b: Any, items: list[Any], tg: Any) -> None:
    # One at a time, in order: trio shuffles start_soon's order.
    for item in items:
        tg.start_soon(b, item)
        await anyio.wait_all_tasks_blocked()


@pytest.mark.virtual_time  # it reads exact waits and start times
async def test_each_batch_is_reported_with_size_reason_waits_and_waiting() -> None:
    infos: list[batched.BatchInfo] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as outer, batched.Batcher(
            double, batch_size=3, timeout_ms=10, on_batch=infos.append
        ) as b:
            async with anyio.create_task_group() as tg:
                t0 = anyio.current_time()
                for x in range(4):  # all four wait before the collector runs
                    tg.start_soon(b, x)
                await anyio.wait_all_tasks_blocked()
            await _send(b, [10], outer)  # still waiting as the block ends
    full, timed, closing = infos
    assert (full.size, full.reason, full.waiting) == (3, "full", 1)
    assert (timed.size, timed.reason, timed.waiting) == (1, "timeout", 0)
    assert (closing.size, closing.reason) == (1, "closing")
    assert timed.started == pytest.approx(t0 + 0.010)  # anyio.current_time()'s clock
    assert timed.waits_s == pytest.approx((0.010,))
    assert all(info.outcome == batched.OutcomeCounts(completed=info.size) for info in infos)
    assert all(len(info.waits_s) == info.size == len(info.contexts) for info in infos)
    assert all(info.padded_size is None and info.duration_s >= 0 for info in infos)


async def test_outcomes_are_counted_per_item_failure_slot_and_cancelled_caller() -> None:
    infos: list[batched.BatchInfo] = []
    started = anyio.Event()

    async def fn(items: list[int]) -> list[Any]:
        started.set()
        await anyio.sleep(1)
        return [batched.Failure(Boom(x)) if x == 1 else x for x in items]

    with anyio.fail_after(10):
        async with batched.Batcher(
                fn, batch_size=3, timeout_ms=1000, on_batch=infos.append
            ) as b, anyio.create_task_group() as tg:

            async def call(x: int) -> None:
                with pytest.raises(Boom) if x == 1 else _nothing():
                    await b(x)

            for x in (0, 1):
                tg.start_soon(call, x)
                await anyio.wait_all_tasks_blocked()
            with anyio.CancelScope() as leaver:
                tg.start_soon(_cancel_when, started, leaver)
                await b(2)  # cancelled while its batch runs
    (info,) = infos
    assert info.outcome == batched.OutcomeCounts(completed=1, failed=1, cancelled=1)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def test_a_raising_fn_and_isolated_errors_count_failed_items() -> None:
    infos: list[batched.BatchInfo] = []

    async def fn(items: list[int]) -> list[int]:
        if 3 in items:
            raise Boom
        return items

    for isolate in (False, True):
        async with batched.Batcher(
            fn, batch_size=4, isolate_errors=isolate, on_batch=infos.append
        ) as b:
            with pytest.raises(Boom):  # its first failing item's error
                await b.many([0, 1, 2, 3])
    plain, isolated = infos  # one report per batch, not per retry
    assert plain.outcome == batched.OutcomeCounts(failed=4)
    assert isolated.outcome == batched.OutcomeCounts(completed=3, failed=1)
    assert isolated.size == 4


async def test_contexts_carry_each_callers_context_variables() -> None:
    infos: list[batched.BatchInfo] = []
    async with batched.Batcher(
        double, batch_size=2, timeout_ms=1000, on_batch=infos.append
    ) as b:

        async def call(rid: str, x: int) -> None:
            request_id.set(rid)
            await b(x)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "a", 1)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(call, "b", 2)
    (info,) = infos
    assert [ctx.run(request_id.get) for ctx in info.contexts] == ["a", "b"]


async def test_a_raising_callback_is_logged_and_batching_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = []

    def broken(info: batched.BatchInfo) -> None:
        calls.append(info.size)
        raise Boom("observer")

    with caplog.at_level(logging.ERROR, logger="batched"):
        async with batched.Batcher(double, batch_size=2, timeout_ms=0, on_batch=broken) as b:
            assert await b(1) == 2
            assert await b(2) == 4
            assert b.stats.completed == 2
    assert calls == [1, 1]
    records = [r for r in caplog.records if r.name == "batched"]
    assert len(records) == 2
    assert "on_batch raised" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] is Boom


async def test_a_callback_returning_a_coroutine_is_logged_not_awaited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def later(info: batched.BatchInfo) -> None:
        raise AssertionError("never awaited")

    with caplog.at_level(logging.ERROR, logger="batched"):
        async with batched.Batcher(double, timeout_ms=0, on_batch=lambda i: later(i)) as b:
            assert await b(1) == 2
    (record,) = [r for r in caplog.records if r.name == "batched"]
    assert record.exc_info is not None
    assert "awaitable" in str(record.exc_info[1])


async def test_the_caller_driven_decorator_reports_its_batches() -> None:
    infos: list[batched.BatchInfo] = []

    @batched.dynamically(batch_size=2, timeout_ms=100, on_batch=infos.append)
    async def f(items: list[int]) -> list[int]:
        return items

    async with anyio.create_task_group() as tg:
        await _send(f, [1, 2, 3], tg)
    assert [(i.size, i.reason) for i in infos] == [(2, "full"), (1, "timeout")]


async def test_pulled_batches_are_reported_when_answered() -> None:
    infos: list[batched.BatchInfo] = []
    async with anyio.create_task_group() as outer, batched.Batcher(
        batch_size=2, timeout_ms=100, on_batch=infos.append
    ) as b:

        async def worker(batches: Any) -> None:
            async with batches:
                async for batch in batches:
                    assert not infos or infos[-1].size != 0
                    if 3 in batch.items:
                        batch.fail(Boom())
                    else:
                        batch.set_results(batch.items)

        outer.start_soon(worker, b.batches())
        async with anyio.create_task_group() as tg:
            await _send(b, [1, 2], tg)

            async def failing() -> None:
                with pytest.raises(Boom):
                    await b(3)

            tg.start_soon(failing)
    assert [(i.size, i.reason, i.outcome) for i in infos] == [
        (2, "full", batched.OutcomeCounts(completed=2)),
        (1, "timeout", batched.OutcomeCounts(failed=1)),
    ]


def test_a_sync_function_reports_from_its_serving_thread() -> None:
    threads: list[str] = []
    infos: list[batched.BatchInfo] = []

    def record(info: batched.BatchInfo) -> None:
        threads.append(threading.current_thread().name)
        infos.append(info)

    @batched.dynamically(batch_size=4, timeout_ms=0, on_batch=record)
    def f(items: list[int]) -> list[int]:
        return [x + 1 for x in items]

    with f:
        assert f.many([1, 2, 3]) == [2, 3, 4]
    assert sum(info.size for info in infos) == 3
    assert all(name.startswith("batched") for name in threads)


def test_inference_reports_the_padded_size() -> None:
    np = pytest.importorskip("numpy")
    infos: list[batched.BatchInfo] = []

    @batched.inference.dynamically(batch_size=4, timeout_ms=0, on_batch=infos.append)
    def model(features: dict[str, Any]) -> Any:
        return features["ids"].sum(axis=1)

    with model:
        model({"ids": np.ones((2, 5), dtype=np.int64)})
    (info,) = infos
    assert (info.size, info.padded_size) == (2, 10)


async def _amodel(features: Any) -> Any:
    return features


@pytest.mark.parametrize("bad", [1, "print"])
def test_on_batch_must_be_callable_on_every_front(bad: object) -> None:
    makers = [
        lambda: batched.Batcher(double, on_batch=bad),  # type: ignore[arg-type]
        lambda: batched.dynamically(on_batch=bad)(double),  # type: ignore[call-overload]
        lambda: batched.dynamically(lambda xs: xs, on_batch=bad),  # type: ignore[call-overload]
        lambda: batched.aio.dynamically(double, on_batch=bad),  # type: ignore[call-overload]
        lambda: batched.inference.dynamically(on_batch=bad)(lambda f: f),  # type: ignore[call-overload]
        lambda: batched.inference.dynamically(on_batch=bad)(_amodel),  # type: ignore[call-overload]
    ]
    for make in makers:  # each at construction or decoration, like every setting
        with pytest.raises(TypeError, match="'on_batch' must be callable or None"):
            make()


def test_an_async_on_batch_is_refused() -> None:
    async def observer(info: batched.BatchInfo) -> None: ...

    with pytest.raises(TypeError, match="'on_batch' must be a plain"):
        batched.Batcher(double, on_batch=observer)


def test_importing_batched_imports_no_metrics_library() -> None:
    code = (
        "import sys, batched\n"
        "assert 'batched.metrics' not in sys.modules\n"
        "assert not any(m.split('.')[0] in ('prometheus_client', 'opentelemetry')"
        " for m in sys.modules), sorted(sys.modules)\n"
        "print('clean')"
    )
    done = run_python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clean"


# -- the property: reports match the batches fn saw -----------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    schedule=arrival_schedules(cancellations=False),
    batch_size=st.integers(1, 6),
    timeout_ms=st.integers(0, 10),
    max_wait_ms=st.integers(0, 40),
    backend=st.sampled_from(["asyncio", "trio"]),
)
def test_reports_match_the_batches_fn_saw(
    schedule: Any, batch_size: int, timeout_ms: int, max_wait_ms: int, backend: str
) -> None:
    infos: list[batched.BatchInfo] = []
    reasons: list[str] = []

    def factory(fn: Any) -> batched.Batcher[Any, Any]:
        async def seen(items: list[Any]) -> Any:
            reasons.append(batched.current_batch().reason)
            return await fn(items)

        return batched.Batcher(
            seen,
            batch_size=batch_size,
            timeout_ms=timeout_ms,
            max_wait_ms=max_wait_ms,
            on_batch=infos.append,
        )

    result = run_schedule(factory, schedule, backend=backend)
    arrived = {
        item: arrival.at_ms for arrival in schedule.arrivals for item in arrival.items
    }
    assert len(infos) == len(result.batches) == len(reasons)
    for info, record, reason in zip(infos, result.batches, reasons, strict=True):
        assert info.size == len(record.items)
        assert info.reason == reason
        assert sum(attrs_values(info.outcome)) == info.size == info.outcome.completed
        waits_ms = [w * 1000 for w in info.waits_s]
        assert waits_ms == pytest.approx(
            [record.start_ms - arrived[item] for item in record.items], abs=1e-3
        )
        assert info.duration_s * 1000 >= record.end_ms - record.start_ms - 1e-3
        # What each reason promises, from the report alone.
        if info.reason == "full":
            assert info.size == batch_size
        elif info.reason == "timeout":
            assert info.size < batch_size
            assert max(waits_ms) >= timeout_ms - 1e-3
        elif info.reason == "overdue":
            assert max(waits_ms) >= max_wait_ms - 1e-3
        else:
            assert info.reason == "closing"
            assert result.closed_ms is not None
            assert record.start_ms >= result.closed_ms
        assert info.waiting >= 0
    assert sum(info.size for info in infos) == sum(
        len(arrival.items) for arrival in schedule.arrivals
    )


def attrs_values(counts: batched.OutcomeCounts) -> list[int]:
    return [counts.completed, counts.failed, counts.cancelled]

