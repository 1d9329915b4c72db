"""What the test modules share: planned errors, recording batch functions, callers,
counters, thread and subprocess helpers.

Everything here goes through batched's public API, except the functions in the last
section ("private state"): each says why no public observation would do, so that a
rewrite of the library's internals has one place to update.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import batched
from batched.testing import fresh_backend_options, settle

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from types import ModuleType

    from anyio.abc import TaskGroup

__all__ = [
    "BACKENDS",
    "HOLD_GUARD_S",
    "JOIN",
    "ROOT",
    "Boom",
    "Caller",
    "Fatal",
    "ItemBoom",
    "Rec",
    "Recorder",
    "assert_nothing_left",
    "assert_stats_add_up",
    "asyncio_only",
    "await_until",
    "check_exit_ok",
    "close_bounded",
    "current_run",
    "demo_display",
    "demo_module",
    "echo",
    "gather",
    "launch",
    "load_example",
    "recorded",
    "run_python",
    "run_releases_its_loop",
    "running_tasks",
    "settle",
    "settled",
    "submit",
    "sync_calls_not_taken_in",
    "tag",
    "trio_only",
    "wait_until",
]

ROOT = Path(__file__).resolve().parent.parent
"""The repository root."""

BACKENDS = ["asyncio", "trio"]
"""The backends a sync test runs ``anyio.run`` on, each example afresh."""

JOIN = 10.0
"""Real seconds: the longest any single wait on another thread or process may take."""

HOLD_GUARD_S = 600.0
"""Virtual seconds a batch held by :class:`Rec` waits for its release at most."""

trio_only = pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
"""Run an async test on trio only (for what only trio has)."""

asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
"""Run an async test on asyncio (the virtual-time loop) only."""


# -- planned errors ----------------------------------------------------------------------


class Boom(Exception):
    """A failure planned by the test (equal only to itself)."""


class Fatal(BaseException):
    """A ``BaseException`` that is not a cancellation (like ``KeyboardInterrupt``),
    planned by the test."""


class ItemBoom(Exception):
    """The failure of one item, ``ItemBoom(item)``: equal to another of the same item, so
    that expected outcomes can be written as values."""

    def __eq__(self, other: object) -> bool:
        return type(other) is ItemBoom and other.args == self.args

    def __hash__(self) -> int:
        return hash(self.args)


# -- results and counters ----------------------------------------------------------------


def tag(items: Sequence[Any]) -> list[tuple[str, Any]]:
    """Each item's result, tagged so that a result handed to the wrong caller shows."""
    return [("r", item) for item in items]


async def echo(items: list[Any]) -> list[tuple[str, Any]]:
    """A batch function that returns :func:`tag` of its items."""
    return tag(items)


def settled(stats: batched.BatchStats) -> int:
    """Items whose caller got an outcome: completed, failed, cancelled or rejected."""
    return stats.completed + stats.failed + stats.cancelled + stats.rejected


def assert_stats_add_up(f: Any) -> None:
    """Nothing waits in ``f`` (a batcher or batched function), and every item submitted
    got its outcome."""
    s = f.stats
    assert s.queue_size == 0, s
    assert s.submitted == settled(s), s


def running_tasks() -> int:
    """How many tasks exist now, on asyncio or trio."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running asyncio loop: trio
        pass
    import trio.lowlevel

    return trio.lowlevel.current_statistics().tasks_living


def assert_nothing_left(f: Any, baseline: int) -> None:
    """``f`` left nothing behind after its last call returned: the running tasks are back
    to ``baseline`` (taken with :func:`running_tasks` before the first call), nothing
    waits, and the stats add up."""
    assert running_tasks() == baseline, "a task outlived the calls"
    assert_stats_add_up(f)


def current_run() -> object:
    """What identifies the running event loop: asyncio's loop, or trio's run token."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # trio
        pass
    import trio.lowlevel

    return trio.lowlevel.current_trio_token()


def run_releases_its_loop(backend: str, main: Callable[[], Awaitable[None]]) -> bool:
    """Run ``main`` on a fresh virtual-time loop; True if nothing holds on to that run
    once it is over (its :func:`current_run` is garbage collected).

    Whatever a batched function keeps per event loop must go with the loop's last call:
    else every ``asyncio.run`` leaks a loop into a long-lived function.
    """
    refs: list[weakref.ref[Any]] = []

    async def run() -> None:
        refs.append(weakref.ref(current_run()))
        await main()

    anyio.run(run, backend=backend, backend_options=fresh_backend_options(backend))
    gc.collect()
    return refs[0]() is None


# -- recording batch functions -------------------------------------------------------------


def _is_in(item: Any, keys: set[Any]) -> bool:
    try:
        return item in keys
    except TypeError:  # an unhashable item
        return False


class Rec:
    """A batch function that records each batch: its items, when it started and ended,
    the id of the task that ran it.

    A batch holding an item of ``hold`` waits for ``release`` (``running`` is set then),
    at most :data:`HOLD_GUARD_S` virtual seconds (a guard: a held batch, shielded in a
    caller's task in caller-driven mode, must not hang a failing test). ``duration``
    (seconds) is slept in every batch; ``cancelled`` counts batches cancelled meanwhile.
    A batch holding an item of ``raise_on`` raises ``ItemBoom(item)``; an item of
    ``fail_on`` gets ``Failure(ItemBoom(item))`` in its slot. Other results are
    ``out(item)``, by default ``("r", item)`` (see :func:`tag`).
    """

    def __init__(
        self,
        *,
        hold: set[Any] | None = None,
        duration: float = 0.0,
        raise_on: set[Any] | None = None,
        fail_on: set[Any] | None = None,
        out: Callable[[Any], Any] | None = None,
    ) -> None:
        self.batches: list[list[Any]] = []
        self.times: list[float] = []
        self.ends: list[float] = []
        self.tasks: list[int] = []
        self.hold = hold if hold is not None else set()
        self.duration = duration
        self.raise_on = raise_on or set()
        self.fail_on = fail_on or set()
        self.out = out or (lambda item: ("r", item))
        self.running = anyio.Event()
        self.release = anyio.Event()
        self.cancelled = 0

    async def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self.times.append(anyio.current_time())
        self.tasks.append(anyio.get_current_task().id)
        try:
            if any(_is_in(item, self.hold) for item in items):
                self.running.set()
                with anyio.fail_after(HOLD_GUARD_S):
                    await self.release.wait()
            if self.duration:
                await anyio.sleep(self.duration)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        for item in items:
            if _is_in(item, self.raise_on):
                raise ItemBoom(item)
        self.ends.append(anyio.current_time())
        return [
            batched.Failure(ItemBoom(item)) if _is_in(item, self.fail_on) else self.out(item)
            for item in items
        ]

    def seen(self) -> list[Any]:
        """Every item ``fn`` saw, in the order of its batches."""
        return [item for batch in self.batches for item in batch]


def recorded(rec: Rec, **settings: Any) -> batched.BatchedFunction[Any, Any]:
    """``rec`` behind ``batched.dynamically(**settings)``, as an ``async def``."""

    @batched.dynamically(**settings)
    async def fn(items: list[Any]) -> list[Any]:
        return await rec(items)

    return fn


class Recorder:
    """A batch function that records each batch and when it started; results are
    ``(item, "r")``.

    With ``hold_first``, the first batch waits for ``release`` (``held`` is set then): the
    only slot is busy and later items accumulate. Once ``batcher`` is set, each batch
    also records the batcher's ``queue_size`` as it starts.
    """

    def __init__(self, *, hold_first: bool = False) -> None:
        self.batches: list[list[Any]] = []
        self.times: list[float] = []
        self.queue_sizes: list[int] = []
        self.batcher: batched.Batcher[Any, Any] | None = None
        self.hold_first = hold_first
        self.held = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, items: list[Any]) -> list[tuple[Any, str]]:
        self.batches.append(list(items))
        self.times.append(anyio.current_time())
        if self.batcher is not None:
            self.queue_sizes.append(self.batcher.stats.queue_size)
        if self.hold_first and len(self.batches) == 1:
            self.held.set()
            await self.release.wait()
        return [(item, "r") for item in items]


# -- callers ---------------------------------------------------------------------------------


class Caller:
    """One call, ``call(*args, **kwargs)``, in its own cancel scope ``scope``; start it
    with ``tg.start_soon(caller.run)`` (or :func:`launch`).

    ``outcome`` is ``("result", value)``, ``("error", exc)`` for an exception of
    ``catch`` (any other fails the task group), or ``("cancelled", None)``; ``None``
    until the call returned. Also kept: the id of its task, when it returned (``at``, on
    the anyio clock), and ``done``, set then.
    """

    def __init__(
        self,
        call: Callable[..., Awaitable[Any]],
        *args: Any,
        catch: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        **kwargs: Any,
    ) -> None:
        self.call = call
        self.args = args
        self.kwargs = kwargs
        self.catch = catch
        self.scope = anyio.CancelScope()
        self.outcome: tuple[str, Any] | None = None
        self.task_id = -1
        self.at = -1.0
        self.done = anyio.Event()

    async def run(self) -> None:
        self.task_id = anyio.get_current_task().id
        try:
            with self.scope:
                try:
                    self.outcome = ("result", await self.call(*self.args, **self.kwargs))
                except self.catch as exc:
                    self.outcome = ("error", exc)
            if self.scope.cancelled_caught:
                self.outcome = ("cancelled", None)
            self.at = anyio.current_time()
        finally:
            self.done.set()

    @property
    def result(self) -> Any:
        """What the call returned (fails unless it returned a result)."""
        assert self.outcome is not None, "the call has not returned"
        kind, value = self.outcome
        assert kind == "result", self.outcome
        return value

    @property
    def error(self) -> BaseException:
        """The exception the call raised (fails unless it raised one)."""
        assert self.outcome is not None, "the call has not returned"
        kind, value = self.outcome
        assert kind == "error", self.outcome
        return value  # type: ignore[no-any-return]

    @property
    def cancelled(self) -> bool:
        """Whether the call ended by the cancellation of its own scope."""
        return self.outcome == ("cancelled", None)


async def launch(
    tg: TaskGroup,
    call: Callable[..., Awaitable[Any]],
    *args: Any,
    catch: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    **kwargs: Any,
) -> Caller:
    """Start a :class:`Caller` of ``call(*args, **kwargs)`` and let it reach its wait
    before returning (trio starts new tasks in any order: sequence them this way)."""
    caller = Caller(call, *args, catch=catch, **kwargs)
    tg.start_soon(caller.run)
    await settle()
    return caller


async def submit(tg: TaskGroup, f: Any, item: Any, out: dict[Any, Any], **kwargs: Any) -> None:
    """Start one caller of ``f(item, **kwargs)`` and let it reach its wait before
    returning; ``out[item]`` then gets its result, or the exception it raised."""

    async def call() -> None:
        try:
            out[item] = await f(item, **kwargs)
        except Exception as exc:
            out[item] = exc

    tg.start_soon(call)
    await settle()


async def gather(call: Callable[[Any], Awaitable[Any]], items: Sequence[Any]) -> dict[Any, Any]:
    """Call ``call(item)`` for each item concurrently; map item -> result or exception."""
    outcome: dict[Any, Any] = {}

    async def one(item: Any) -> None:
        try:
            outcome[item] = await call(item)
        except Exception as exc:
            outcome[item] = exc

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for item in items:
                tg.start_soon(one, item)
    return outcome


# -- threads -----------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = JOIN) -> None:
    """Wait for a condition another thread makes true (a bounded poll, not a timed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.001)


async def await_until(predicate: Callable[[], bool], what: str) -> None:
    """:func:`wait_until` for async code: yields to the event loop between polls."""
    try:
        with anyio.fail_after(JOIN):
            # The condition is made true by another thread: no anyio.Event can carry it.
            while not predicate():  # noqa: ASYNC110
                await anyio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"timed out after {JOIN} s waiting for {what}") from None


def close_bounded(f: Any) -> None:
    """``f.close()`` (a sync batched function), failing instead of hanging if it does
    not return."""
    closer = threading.Thread(target=f.close, daemon=True)
    closer.start()
    closer.join(JOIN)
    assert not closer.is_alive(), f"{f!r}.close() did not return within {JOIN} s"


# -- subprocesses ------------------------------------------------------------------------


def run_python(
    *args: str, timeout: float = 120, unset: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess[str]:
    """``python *args`` from the repository root against this checkout's ``batched``, as a
    user would run it: stdin closed, output captured; ``env`` added to the environment
    and the variables named in ``unset`` removed from it."""
    environ = dict(os.environ, **env)
    for name in unset:
        environ.pop(name, None)
    # Import this checkout's `batched`, installed or not.
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def load_example(name: str, *needs: str) -> ModuleType:
    """``examples/<name>.py`` as a module (loaded once); skipped if a need is missing,
    as ``NEEDS`` in tests/test_examples.py skips the script."""
    for need in needs:
        pytest.importorskip(need)
    module_name = f"_example_{name}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "examples" / f"{name}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # pydantic resolves the models' annotations here
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return module


def check_exit_ok(proc: subprocess.CompletedProcess[str]) -> str:
    """Its stdout, once it exited 0 (else fail, showing both streams)."""
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc.stdout


# -- private state -------------------------------------------------------------------------
# Each function below reads something of batched that is not public API. Keep every such
# read here, and say why no public observation would do.


def sync_calls_not_taken_in(f: Any) -> int:
    """Calls of a sync batched function ``f`` made by blocked threads and not yet taken
    in by its serving thread.

    Private: while ``fn`` runs in the serving thread itself (``max_concurrent_batches=1``)
    that thread's event loop is blocked, so new calls wait in a hand-off queue that
    nothing public counts (``stats.submitted`` counts a call once the loop takes it in),
    and a blocked calling thread shows nothing either. A test that needs calls to pile up
    there, to see them batched together afterwards, must wait for this.
    """
    return len(f._server.pending)


def demo_module() -> ModuleType:
    """``python -m batched demo``'s own module.

    Private: the demo's displays are tested by feeding them made-up figures, and its
    choice of model by asking it, since the command line shows only what a whole,
    measured (machine-dependent) run gives.
    """
    from batched import _demo

    return _demo


def demo_display(kind: str) -> Any:
    """The display ``python -m batched demo --display KIND`` would use here and now.

    Private: which display "auto" picks depends on whether stdout is a terminal, and a
    subprocess would need a pseudo-terminal and a whole demo run to show it.
    """
    return demo_module()._make_display(kind)
