"""``OpenTelemetryObserver``: one span per batch, linked to each caller's span."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, final

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
except ImportError:  # pragma: no cover - the extra is missing
    msg = (
        "batched.metrics.OpenTelemetryObserver needs opentelemetry-api: "
        "pip install 'batched-anyio[metrics]'"
    )
    raise ImportError(msg) from None

if TYPE_CHECKING:
    from .._observe import BatchInfo

__all__ = ["OpenTelemetryObserver"]


@final
class OpenTelemetryObserver:
    """An ``on_batch`` callable that records one span per batch.

    The span, named ``"batch <name>"``, is a root span (a batch serves many traces)
    linked to the span that was current in each caller when it called (from
    :attr:`batched.BatchInfo.contexts`); each link carries ``batched.items``, how many
    of the batch's items that caller sent. It covers the batch from its start until its
    outcomes were handed back, and is recorded when the batch ends. Attributes:
    ``batched.batcher``, ``batched.size``, ``batched.reason``, ``batched.waiting``,
    ``batched.waits_s`` (each item's wait), ``batched.wait_max_s``,
    ``batched.completed``, ``batched.failed``, ``batched.cancelled`` and, with
    ``batched.inference``, ``batched.padded_size``. A batch with a failed item has the
    status ``ERROR``.

    :param name: names the batcher in the span's name and ``batched.batcher``
    :param tracer_provider: where the spans go (default: the global tracer provider)
    """

    __slots__ = ("_tracer", "name")

    def __init__(self, name: str, tracer_provider: trace.TracerProvider | None = None) -> None:
        if not isinstance(name, str) or not name:
            msg = f"'name' must be a non-empty str: {name!r}"
            raise (TypeError if not isinstance(name, str) else ValueError)(msg)
        self.name = name
        self._tracer = trace.get_tracer("batched", tracer_provider=tracer_provider)

    def __repr__(self) -> str:
        return f"OpenTelemetryObserver({self.name!r})"

    def __call__(self, info: BatchInfo) -> None:
        """Record one batch's span."""
        callers: dict[tuple[int, int], list[Any]] = {}
        for ctx in info.contexts:
            span_context = ctx.run(trace.get_current_span).get_span_context()
            if not span_context.is_valid:
                continue
            key = (span_context.trace_id, span_context.span_id)
            seen = callers.get(key)
            if seen is None:
                callers[key] = [span_context, 1]
            else:
                seen[1] += 1
        links = [
            trace.Link(span_context, {"batched.items": count})
            for span_context, count in callers.values()
        ]
        outcome = info.outcome
        attributes: dict[str, Any] = {
            "batched.batcher": self.name,
            "batched.size": info.size,
            "batched.reason": info.reason,
            "batched.waiting": info.waiting,
            "batched.waits_s": list(info.waits_s),
            "batched.wait_max_s": max(info.waits_s, default=0.0),
            "batched.completed": outcome.completed,
            "batched.failed": outcome.failed,
            "batched.cancelled": outcome.cancelled,
        }
        if info.padded_size is not None:
            attributes["batched.padded_size"] = info.padded_size
        # Called as the batch ends: its start is that long before now, on the wall clock
        # spans use (the batcher's clock is anyio's, which has another origin).
        end = time.time_ns()
        span = self._tracer.start_span(
            f"batch {self.name}",
            context=otel_context.Context(),  # a root: not a child of the driver's task
            attributes=attributes,
            links=links,
            start_time=end - round(info.duration_s * 1e9),
        )
        if outcome.failed:
            span.set_status(
                trace.Status(
                    trace.StatusCode.ERROR, f"{outcome.failed} of {info.size} item(s) failed"
                )
            )
        span.end(end_time=end)
