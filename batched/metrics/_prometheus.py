"""``PrometheusObserver``: batches exported as Prometheus metrics."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, cast, final

try:
    import prometheus_client
except ImportError:  # pragma: no cover - the extra is missing
    msg = (
        "batched.metrics.PrometheusObserver needs prometheus_client: "
        "pip install 'batched-anyio[metrics]'"
    )
    raise ImportError(msg) from None

from .._core.queue import REASONS

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from .._observe import BatchInfo

__all__ = ["PrometheusObserver"]

_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_PADDED_BUCKETS = tuple(4**k for k in range(11))  # 1 .. ~1M padded positions
# Seconds, from a fraction of a millisecond (a batch that left at once) to a stalled one.
_SECONDS_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
_OUTCOMES = ("completed", "failed", "cancelled")


@final
class _Families:
    """The metric families of one registry, shared by every observer that exports to it
    (a family may be registered once per registry; observers differ by label)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        label = ["batcher"]
        self.size = prometheus_client.Histogram(
            "batched_batch_size", "Items per batch.", label,
            registry=registry, buckets=_SIZE_BUCKETS,
        )  # fmt: skip
        self.padded = prometheus_client.Histogram(
            "batched_batch_padded_size",
            "Padded size per batch (longest row x rows; batched.inference only).",
            label, registry=registry, buckets=_PADDED_BUCKETS,
        )  # fmt: skip
        self.wait = prometheus_client.Histogram(
            "batched_item_wait_seconds", "Each item's wait from its arrival to its batch's start.",
            label, registry=registry, buckets=_SECONDS_BUCKETS,
        )  # fmt: skip
        self.duration = prometheus_client.Histogram(
            "batched_batch_duration_seconds",
            "Seconds from a batch's start until its outcomes were handed back.",
            label, registry=registry, buckets=_SECONDS_BUCKETS,
        )  # fmt: skip
        self.items = prometheus_client.Counter(
            "batched_items", "Items that went through a batch, by outcome.",
            [*label, "outcome"], registry=registry,
        )  # fmt: skip
        self.batches = prometheus_client.Counter(
            "batched_batches", "Batches, by why they were cut.",
            [*label, "reason"], registry=registry,
        )  # fmt: skip
        self.waiting = prometheus_client.Gauge(
            "batched_waiting_items", "Items left waiting by the latest cut.",
            label, registry=registry,
        )  # fmt: skip


_families: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()


@final
class PrometheusObserver:
    """An ``on_batch`` callable that exports each batch through ``prometheus_client``.

    Metrics, each with the label ``batcher=name``: histograms ``batched_batch_size``,
    ``batched_batch_padded_size`` (``batched.inference``), ``batched_item_wait_seconds``
    and ``batched_batch_duration_seconds``; counters ``batched_items_total`` (label
    ``outcome``: completed, failed, cancelled) and ``batched_batches_total`` (label
    ``reason``); gauge ``batched_waiting_items``. Observers of several batchers may
    share a registry: give each its own ``name``.

    :param name: the ``batcher`` label's value
    :param registry: a ``prometheus_client.CollectorRegistry`` (default: the global
        ``prometheus_client.REGISTRY``)
    """

    __slots__ = ("_batches", "_duration", "_items", "_padded", "_size", "_wait", "_waiting", "name")

    def __init__(self, name: str, registry: CollectorRegistry | None = None) -> None:
        if not isinstance(name, str) or not name:
            msg = f"'name' must be a non-empty str: {name!r}"
            raise (TypeError if not isinstance(name, str) else ValueError)(msg)
        if registry is None:
            registry = prometheus_client.REGISTRY
        elif not isinstance(cast("object", registry), prometheus_client.CollectorRegistry):
            msg = f"'registry' must be a prometheus_client.CollectorRegistry or None: {registry!r}"
            raise TypeError(msg)  # an untyped caller's
        families = _families.get(registry)
        if families is None:
            families = _families[registry] = _Families(registry)
        self.name = name
        # Children bound once: a batch costs no label lookups. Every outcome and reason
        # is exported from the start, at 0, so that rates over them are defined.
        self._size = families.size.labels(name)
        self._padded = families.padded.labels(name)
        self._wait = families.wait.labels(name)
        self._duration = families.duration.labels(name)
        self._items = {o: families.items.labels(name, o) for o in _OUTCOMES}
        self._batches = {r: families.batches.labels(name, r) for r in REASONS}
        self._waiting = families.waiting.labels(name)

    def __repr__(self) -> str:
        return f"PrometheusObserver({self.name!r})"

    def __call__(self, info: BatchInfo) -> None:
        """Export one batch."""
        self._size.observe(info.size)
        if info.padded_size is not None:
            self._padded.observe(info.padded_size)
        wait = self._wait
        for seconds in info.waits_s:
            wait.observe(seconds)
        self._duration.observe(info.duration_s)
        outcome = info.outcome
        items = self._items
        if outcome.completed:
            items["completed"].inc(outcome.completed)
        if outcome.failed:
            items["failed"].inc(outcome.failed)
        if outcome.cancelled:
            items["cancelled"].inc(outcome.cancelled)
        self._batches[info.reason].inc()
        self._waiting.set(info.waiting)
