"""``batched.metrics``: the observers, with the real prometheus_client and OpenTelemetry SDK."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import pytest
from _helpers import Boom

import batched

prometheus_client = pytest.importorskip("prometheus_client")
pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from batched.metrics import OpenTelemetryObserver, PrometheusObserver  # noqa: E402

pytestmark = pytest.mark.anyio


async def fn(items: list[int]) -> list[Any]:
    return [batched.Failure(Boom()) if x < 0 else x for x in items]


async def _serve(observer: Any, batches: list[list[int]], **settings: Any) -> None:
    """Each inner list is sent at once and waits for its batch (``batch_size=4``)."""
    async with batched.Batcher(fn, batch_size=4, timeout_ms=100, on_batch=observer) as b:
        for items in batches:
            async with anyio.create_task_group() as tg:
                for x in items:
                    tg.start_soon(_call, b, x)


async def _call(b: Any, x: int) -> None:
    with contextlib.suppress(Boom):
        await b(x)


def _scrape(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The text format, parsed back: (sample name, sorted labels) -> value."""
    text = prometheus_client.generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.virtual_time  # it reads exact waits and durations
async def test_prometheus_exports_sizes_waits_outcomes_reasons_and_waiting() -> None:
    registry = prometheus_client.CollectorRegistry()
    await _serve(PrometheusObserver("embed", registry), [[1, 2, 3, 4, 5], [6, -7]])
    got = _scrape(registry)
    b = (("batcher", "embed"),)
    # Batches: 4 (full), then 1 (timeout), then 2 (timeout, one Failure slot).
    assert got["batched_batch_size_count", b] == 3
    assert got["batched_batch_size_sum", b] == 7
    assert got["batched_batch_size_bucket", (*b, ("le", "1.0"))] == 1
    assert got["batched_batch_size_bucket", (*b, ("le", "2.0"))] == 2
    assert got["batched_item_wait_seconds_count", b] == 7
    # Four items left at once (full); three waited the 100 ms timeout.
    assert got["batched_item_wait_seconds_bucket", (*b, ("le", "0.05"))] == 4
    assert got["batched_item_wait_seconds_sum", b] == pytest.approx(0.3, abs=1e-3)
    assert got["batched_batch_duration_seconds_count", b] == 3
    items = {
        o: got["batched_items_total", (*b, ("outcome", o))]
        for o in ("completed", "failed", "cancelled")
    }
    assert items == {"completed": 6, "failed": 1, "cancelled": 0}
    reasons = {
        r: got["batched_batches_total", (*b, ("reason", r))]
        for r in ("full", "timeout", "budget", "overdue", "closing")
    }
    assert reasons == {"full": 1, "timeout": 2, "budget": 0, "overdue": 0, "closing": 0}
    assert got["batched_waiting_items", b] == 0
    assert got["batched_batch_padded_size_count", b] == 0


async def test_prometheus_gauge_shows_items_left_waiting_by_the_cut() -> None:
    registry = prometheus_client.CollectorRegistry()
    seen: list[float] = []
    observer = PrometheusObserver("g", registry)

    def both(info: batched.BatchInfo) -> None:
        observer(info)
        seen.append(_scrape(registry)["batched_waiting_items", (("batcher", "g"),)])

    await _serve(both, [[1, 2, 3, 4, 5, 6]])
    assert seen == [2, 0]


async def test_two_batchers_share_a_registry_by_label() -> None:
    registry = prometheus_client.CollectorRegistry()
    await _serve(PrometheusObserver("a", registry), [[1, 2, 3, 4]])
    await _serve(PrometheusObserver("b", registry), [[1]])
    got = _scrape(registry)
    assert got["batched_batch_size_sum", (("batcher", "a"),)] == 4
    assert got["batched_batch_size_sum", (("batcher", "b"),)] == 1


def test_prometheus_observer_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="'name' must be a non-empty str"):
        PrometheusObserver("")
    with pytest.raises(TypeError, match="'name' must be a non-empty str"):
        PrometheusObserver(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'registry' must be a prometheus_client"):
        PrometheusObserver("x", registry={})  # type: ignore[arg-type]


def test_the_default_registry_is_prometheus_clients_global_one() -> None:
    observer = PrometheusObserver("test_metrics_default_registry")
    observer(
        batched.BatchInfo(
            size=2,
            reason="full",
            started=0.0,
            duration_s=0.001,
            waits_s=(0.0, 0.0),
            outcome=batched.OutcomeCounts(completed=2),
        )
    )
    got = _scrape(prometheus_client.REGISTRY)
    assert got["batched_batch_size_sum", (("batcher", "test_metrics_default_registry"),)] == 2


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_opentelemetry_one_span_per_batch_linked_to_each_callers_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("test")
    async with batched.Batcher(
        fn, batch_size=3, timeout_ms=100, on_batch=OpenTelemetryObserver("embed", provider)
    ) as b:

        async def request(name: str, items: list[int]) -> None:
            with tracer.start_as_current_span(name):
                await b.many(items)

        async with anyio.create_task_group() as tg:
            tg.start_soon(request, "one", [1])
            tg.start_soon(request, "two", [2, 3])
        await b(4)  # no span of its own: no link
    finished = exporter.get_finished_spans()
    requests = {s.name: s for s in finished if s.name in ("one", "two")}
    batch_spans = [s for s in finished if s.name == "batch embed"]
    assert len(batch_spans) == 2
    first, second = sorted(batch_spans, key=lambda s: s.start_time or 0)
    assert first.parent is None  # a root: a batch serves many traces
    links = {
        (link.context.trace_id, link.context.span_id): dict(link.attributes or {})
        for link in first.links
    }
    assert links == {
        (s.context.trace_id, s.context.span_id): {"batched.items": len(items)}
        for s, items in ((requests["one"], [1]), (requests["two"], [2, 3]))
    }
    attributes = dict(first.attributes or {})
    assert attributes["batched.batcher"] == "embed"
    assert attributes["batched.size"] == 3
    assert attributes["batched.reason"] == "full"
    assert attributes["batched.completed"] == 3
    assert len(attributes["batched.waits_s"]) == 3  # type: ignore[arg-type]
    assert first.status.status_code == trace.StatusCode.UNSET
    assert second.links == ()
    assert dict(second.attributes or {})["batched.reason"] == "timeout"
    assert first.end_time is not None
    assert first.start_time is not None
    assert first.end_time >= first.start_time


async def test_opentelemetry_a_failed_item_marks_the_span_as_error(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    await _serve(OpenTelemetryObserver("embed", provider), [[1, -2]])
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.status.description == "1 of 2 item(s) failed"
    assert dict(span.attributes or {})["batched.failed"] == 1


def test_opentelemetry_observer_checks_its_name() -> None:
    with pytest.raises(ValueError, match="'name' must be a non-empty str"):
        OpenTelemetryObserver("")


def test_unknown_names_are_attribute_errors() -> None:
    import batched.metrics

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        batched.metrics.Nope  # noqa: B018
    assert PrometheusObserver.__module__ == "batched.metrics"
