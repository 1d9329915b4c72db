"""Observers for ``on_batch``: Prometheus metrics and OpenTelemetry traces.

Each needs its library (``pip install 'batched-anyio[metrics]'``), imported only when
its observer is first named here; ``import batched`` imports neither::

    from batched.metrics import PrometheusObserver

    async with batched.Batcher(embed, on_batch=PrometheusObserver("embed")) as b: ...
"""

from __future__ import annotations

import typing as _typing

if _typing.TYPE_CHECKING:
    from ._opentelemetry import OpenTelemetryObserver as OpenTelemetryObserver
    from ._prometheus import PrometheusObserver as PrometheusObserver

__all__ = ["OpenTelemetryObserver", "PrometheusObserver"]

_WHERE = {
    "PrometheusObserver": "._prometheus",
    "OpenTelemetryObserver": "._opentelemetry",
}


def __getattr__(name: str) -> object:
    # Each observer imports its own library, on first use: one may be installed alone.
    where = _WHERE.get(name)
    if where is None:
        msg = f"module 'batched.metrics' has no attribute {name!r}"
        raise AttributeError(msg)
    import importlib

    value = getattr(importlib.import_module(where, __name__), name)
    value.__module__ = __name__
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
