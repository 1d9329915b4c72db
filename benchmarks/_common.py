"""What the newer scenarios share: the backends, native task groups, percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

import sniffio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    Main = Callable[[], Awaitable[Any]]


def runners() -> dict[str, Callable[[Main], Any]]:
    """asyncio, asyncio+uvloop (when uvloop imports) and trio; each runs ``main()`` on a
    fresh event loop and returns its result."""

    def on_asyncio(main: Main, loop_factory: Any = None) -> Any:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main())  # type: ignore[arg-type]

    def on_trio(main: Main) -> Any:
        import trio

        return trio.run(main)

    found: dict[str, Callable[[Main], Any]] = {"asyncio": on_asyncio}
    try:
        import uvloop
    except ImportError:
        pass
    else:
        found["asyncio+uvloop"] = lambda main: on_asyncio(main, uvloop.new_event_loop)
    found["trio"] = on_trio
    return found


@contextlib.asynccontextmanager
async def native_group() -> AsyncIterator[Callable[..., object]]:
    """A native task group (asyncio.TaskGroup or a trio nursery); yields ``spawn(fn, *args)``.

    The callers are native tasks, as in the burst scenario: anyio's ``start_soon`` costs
    more per task than some of what is measured here.
    """
    if sniffio.current_async_library() == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            yield nursery.start_soon
    else:
        async with asyncio.TaskGroup() as tg:
            yield lambda fn, *args: tg.create_task(fn(*args))


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


now = time.perf_counter
