"""Virtual time for tests: an autojumping asyncio loop and matching trio options.

``VirtualTimeLoop`` gives asyncio what ``trio.testing.MockClock(autojump_threshold=0)``
gives trio: whenever every task is blocked and a timer is pending, the clock jumps straight
to that timer, so a one-hour sleep costs no real time and runs are deterministic.

Caveat: a busy worker thread does not count as "not blocked". While a thread runs, any
pending timer (a ``fail_after`` deadline, a batching timeout) fires at once in virtual time,
on both backends. Nothing deadlocks (threads wake the loop through its self-pipe), but tests
of sync functions or of the thread front-end should run inside ``real_time()``.
"""

from __future__ import annotations

import asyncio
import gc
import selectors
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, final

import anyio

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from _typeshed import FileDescriptorLike

__all__ = [
    "BACKEND_NAMES",
    "VirtualTimeLoop",
    "drain_reports",
    "fresh_backend_options",
    "real_time",
    "settle",
    "virtual_time_backends",
]

BACKEND_NAMES = ("asyncio", "trio")


class _AutojumpSelector(selectors.BaseSelector):
    """Delegates to a real selector; turns "sleep for ``timeout``" into a clock jump."""

    def __init__(self, loop: VirtualTimeLoop, real: selectors.BaseSelector) -> None:
        self._loop = loop
        self._real = real

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self._loop._real_since is not None:  # inside real_time(): behave like asyncio
            return self._real.select(timeout)
        events = self._real.select(0)  # real I/O is always polled, never waited for
        if events:
            return events
        if timeout is None:
            # Nothing scheduled: only I/O or another thread (call_soon_threadsafe writes
            # the self-pipe) can make progress. Block for real instead of spinning.
            return self._real.select(None)
        if timeout > 0:
            # Every task is blocked and a timer is due in `timeout` s: jump to it. asyncio
            # caps `timeout` at one day, so longer sleeps take a few jumps.
            self._loop._virtual += timeout
        return []

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_key(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


@final
class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on a virtual clock that autojumps to the next timer.

    Reports that reach the default exception handler are appended to ``recorded_errors``
    instead of being logged: "Task was destroyed but it is pending!" carries no exception,
    so nothing else would fail the test. (Under anyio's pytest runner, reports carrying an
    ``Exception`` are re-raised in the test by anyio's own handler and never get here.)
    """

    def __init__(self, start: float = 0.0) -> None:
        # Set before super().__init__(), which already registers the self-pipe.
        self._virtual = start
        self._real_since: float | None = None  # real-clock origin while inside real_time()
        self.recorded_errors: list[dict[str, Any]] = []
        super().__init__(_AutojumpSelector(self, selectors.DefaultSelector()))

    def time(self) -> float:
        if self._real_since is None:
            return self._virtual
        return self._virtual + (time.monotonic() - self._real_since)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.recorded_errors.append(context)

    async def shutdown_default_executor(self, *args: Any) -> None:
        # Joining executor threads is real work. Python >= 3.12 guards it with a timeout
        # (300 s at Runner.close) that autojump would fire at once, with a RuntimeWarning.
        with self._following_real_time():
            await super().shutdown_default_executor(*args)

    @contextmanager
    def _following_real_time(self) -> Iterator[None]:
        if self._real_since is not None:  # already following real time (nested)
            yield
            return
        self._real_since = time.monotonic()
        try:
            yield
        finally:
            self._virtual, self._real_since = self.time(), None  # time() before the reset


@contextmanager
def real_time() -> Iterator[None]:
    """Let the current loop's clock follow real time inside the block (no autojump).

    For tests with worker threads: a ``fail_after`` hang guard then waits for real. Works
    on ``VirtualTimeLoop`` and on trio's ``MockClock``; a no-op on any other loop or clock.
    Call it from the event-loop thread, inside the async test.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass  # not asyncio: trio, below
    else:
        if isinstance(loop, VirtualTimeLoop):
            with loop._following_real_time():
                yield
        else:
            yield
        return

    import trio.lowlevel  # lazily: `import batched` must never import trio
    import trio.testing

    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock):
        yield
        return
    saved = clock.rate, clock.autojump_threshold
    clock.rate, clock.autojump_threshold = 1.0, float("inf")
    try:
        yield
    finally:
        clock.rate, clock.autojump_threshold = saved


def fresh_backend_options(name: str) -> dict[str, Any]:
    """Fresh anyio ``backend_options`` with virtual time for ``name`` ("asyncio"/"trio").

    Call it once per test (and per hypothesis example): a ``MockClock`` keeps its time.
    """
    if name == "asyncio":
        return {"loop_factory": VirtualTimeLoop}
    if name == "trio":
        import trio.testing  # lazily: `import batched` must never import trio

        return {"clock": trio.testing.MockClock(autojump_threshold=0)}
    msg = f"no virtual-time options for backend {name!r}; expected one of {BACKEND_NAMES}"
    raise ValueError(msg)


def virtual_time_backends() -> list[tuple[str, dict[str, Any]]]:
    """``(backend, backend_options)`` for asyncio and trio, both on instant virtual time.

    asyncio runs on a ``VirtualTimeLoop``, trio on ``MockClock(autojump_threshold=0)``:
    when every task waits, the clock jumps to the next deadline, so a one-hour sleep takes
    no real time and runs are deterministic. Each call builds fresh options (a clock
    keeps its time): call it per run. Worker threads (a sync batch function) let virtual
    time jump while they work. Example::

        for backend, options in virtual_time_backends():
            anyio.run(main, backend=backend, backend_options=options)
    """
    return [(name, fresh_backend_options(name)) for name in BACKEND_NAMES]


def drain_reports(loops: Iterable[VirtualTimeLoop]) -> list[dict[str, Any]]:
    """What reached the exception handler of ``loops`` (closed), late reports included."""
    for loop in loops:
        # anyio's runner handler would swallow late reports that carry an exception.
        loop.set_exception_handler(None)
    gc.collect()  # abandoned pending tasks report when collected
    return [context for loop in loops for context in loop.recorded_errors]


async def settle() -> None:
    """Return once every other task waits on something, without moving virtual time.

    ``anyio.wait_all_tasks_blocked()`` polls with ``sleep(0.1)`` on asyncio, which on
    virtual time jumps the clock (firing batch deadlines on the way); this does not.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio: its wait_all_tasks_blocked takes no time
        await anyio.wait_all_tasks_blocked()
        return
    this = asyncio.current_task()
    for _ in range(10_000):
        await asyncio.sleep(0)
        if all(task is this or _blocked(task) for task in asyncio.all_tasks()):
            return
    msg = "tasks never settled: some task keeps running"
    raise AssertionError(msg)


def _blocked(task: asyncio.Task[Any]) -> bool:
    waiter = getattr(task, "_fut_waiter", None)  # what the task awaits (CPython, uvloop)
    return waiter is not None and not waiter.done()
