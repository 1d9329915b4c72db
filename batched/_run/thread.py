"""The serving thread: one event loop in a thread of its own, serving calls from any thread.

A blocking caller never enters the event loop: it makes its call in its own thread,
appends it to a thread-safe deque and sleeps on a lock. The serving thread moves the
deque into its batcher on one ``post`` per burst (not per call), runs the batches and
releases each caller's lock. Async callers (``acall``) take the same way and are woken
through their own event loop, so calls from threads and from event loops batch
together. Only the serving thread touches the batcher's core and its counters.
"""

from __future__ import annotations

import inspect
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs

from .._backends import call_outside_loop, current, run_in_new_loop
from .._core.calls import CANCELLED, CLOSED, DONE, INTAKE, QUEUED, ROOM, CallCore, closed_error
from .._core.queue import STOPPED
from .._errors import BatcherClosed
from .execute import _boxed
from .owned import Owned

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskGroup

    from .._core.counts import Counts
    from .._core.queue import Core
    from .._settings import Settings

    # The keyed path of the front: (the serving loop's driver, a call, wait) -> outcome.
    Keyed = Callable[[Owned, "ThreadCall", bool], Awaitable[Any]]

__all__ = ["Server", "ThreadCall"]


@final
class ThreadCall(CallCore):
    """A call from outside the serving loop: ``waiter`` wakes its caller, wherever it is
    (a lock's release, or a post to the caller's own event loop)."""

    __slots__ = ("__dict__", "_pool", "arrival", "core", "item", "seq", "state", "waiter")

    def __init__(self, item: Any) -> None:
        self.core = None  # type: ignore[assignment]  # the serving loop's, when submitted
        self.item = item
        self.state = QUEUED
        self._pool = INTAKE
        self.waiter: Callable[[], None] | None = None

    def deliver(self, value: Any) -> None:
        self.out = value
        self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter()


class _Inside(threading.local):
    server: Server | None = None  # whose batch function this thread is running


_inside = _Inside()


def _run_here(fn: Callable[[list[Any]], Any], pending: deque[Any]) -> Callable[[list[Any]], Any]:
    # One batch at a time: fn runs in the serving thread itself, sparing two thread hops
    # per batch (calls arriving meanwhile wait as they would in the batcher), but outside
    # the event loop as far as fn can tell, so that fn may call other blocking batched
    # functions or run an event loop of its own.
    async def run_here(items: list[Any]) -> Any:
        out = call_outside_loop(fn, items)
        if pending:
            # The loop was blocked while fn ran: calls sent meanwhile wait in `pending`,
            # their flush (and the departures of callers that left since) posted to the
            # loop. Let the loop run those, in the order they were posted, before this
            # slot goes on to cut: a leftover that fell due during fn must not leave alone
            # while they wait outside (it would split them into an extra batch).
            await anyio.lowlevel.cancel_shielded_checkpoint()
        if inspect.isawaitable(out):  # a plain function that hands back a coroutine
            out = await out
        return out

    return run_here


@final
class Server:
    """The event-loop thread of one sync batched function, and its batcher."""

    def __init__(self, settings: Settings, counts: Counts, name: str, keyed: Keyed | None) -> None:
        # Calls sent from other threads, until the loop takes them in (flush).
        self.pending: deque[tuple[ThreadCall, bool]] = deque()
        fn = settings.fn
        assert fn is not None  # a sync front always has its function
        here = _run_here(fn, self.pending)

        def in_worker(items: list[Any]) -> Any:
            # Marks the worker thread, so that close() called from inside fn does not
            # wait for the serving thread, which waits for this very batch.
            _inside.server = self
            try:
                return fn(items)
            finally:
                _inside.server = None

        async def run_batch(items: list[Any]) -> Any:
            # One slot: fn runs in the serving thread itself; more: in worker threads.
            # Chosen per batch, since configure() may change max_concurrent_batches.
            run = self.run
            if run is None or run.max_workers == 1:
                return await here(items)
            (out,) = await anyio.to_thread.run_sync(_boxed, in_worker, items)
            if inspect.isawaitable(out):  # a plain function that hands back a coroutine
                out = await out
            return out

        self.settings = attrs.evolve(settings, fn=run_batch, is_async=True)
        # Events of configure() calls waiting for the loop to apply them: set when
        # serving ends, should the loop end before it runs them.
        self.applying: set[threading.Event] = set()
        self.steering: deque[tuple[Settings, threading.Event]] = deque()
        self.steer_event: anyio.Event | None = None
        # Under a cache or dedupe a call needs a task (the cache read is awaited): a
        # bridge per call, cancelled if its async caller leaves.
        self.keyed = keyed  # the front's keyed path: (run, call, wait) -> outcome
        self.bridges: dict[ThreadCall, anyio.CancelScope] = {}
        self.to_bridge: deque[tuple[ThreadCall, bool]] = deque()
        self.bridge_event: anyio.Event | None = None
        self.counts = counts
        self.scheduled = False  # a flush is on its way to the loop
        self.run: Owned | None = None
        self.last_core: Core | None = None  # its `cause` is set before callers wake
        # Serving has ended (closed, or fn's BaseException): the loop takes nothing in.
        self.ended = False
        # Orders a send against the end of serving: a call posted to a loop that has
        # stopped but is not closed yet would be accepted, and never taken in.
        self.lock = threading.Lock()
        self.post: Callable[..., bool] | None = None
        self.stop_event: anyio.Event | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        # A daemon, so it never keeps the interpreter alive; atexit drains it first.
        self.thread = threading.Thread(target=self._main, name=f"batched {name}", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.ready.wait()
        if self.error is not None:
            raise self.error

    def _main(self) -> None:
        try:
            run_in_new_loop(self._serve)
        except BaseException as exc:  # reported to the thread that started it
            self.error = exc
        finally:
            self.ended = True
            self.ready.set()

    async def _serve(self) -> None:
        self.post = current().poster()
        self.stop_event = stop = anyio.Event()
        self.steer_event = anyio.Event()
        self.bridge_event = anyio.Event()
        run = Owned(self.settings, self.counts)
        await run.open()
        self.run = run
        self.last_core = run.core
        try:
            async with anyio.create_task_group() as tg:
                if self.keyed is not None:
                    tg.start_soon(self._spawn_bridges, tg)
                self.ready.set()
                # This task applies configure() (a loop callback cannot start tasks,
                # which the owned driver may need) until the stop.
                while not stop.is_set():
                    await self.steer_event.wait()
                    self.steer_event = anyio.Event()
                    while self.steering:
                        settings, done = self.steering.popleft()
                        run.configure(settings)
                        with self.lock:
                            self.applying.discard(done)
                        done.set()
                self.flush()  # take in what was sent before the stop; the exit drains it
                self.bridge_event.set()  # the last bridges start, then the spawner ends
                # Bridges finish before the batcher drains: what waits leaves now.
                run.core.hurry()
        except BaseException as exc:
            if not await run.close(exc):
                raise
        else:
            await run.close(None)
        finally:
            self.run = None
            with self.lock:
                self.ended = True  # later sends are closed by their senders
                self.flush()  # whatever is left gets BatcherClosed
                for done in self.applying:
                    done.set()  # nothing is served: nothing to apply
                self.applying.clear()

    # -- any thread --------------------------------------------------------------------

    def send(self, call: ThreadCall, wait: bool) -> None:
        """Hand a call to the loop; the caller holds its function's lock. Once serving
        has ended, the call gets ``BatcherClosed`` here, in the caller's thread."""
        with self.lock:
            self.pending.append((call, wait))
            if self.ended:
                self.flush()  # self.run is None: the call is closed
            elif not self.scheduled:
                self.scheduled = True
                assert self.post is not None
                if not self.post(self.flush):
                    self.run = None  # the loop has closed: the call is closed here
                    self.flush()

    def configure(self, settings: Settings) -> threading.Event | None:
        """Hand new settings (checked by the front) to the loop, in the order of calls:
        an event set once they apply (None: applied here, or nothing is served)."""
        if threading.current_thread() is self.thread:  # inside fn, or the loop itself
            self._apply(settings)
            return None
        done = threading.Event()

        def apply() -> None:
            assert self.steer_event is not None
            self.steering.append((settings, done))
            self.steer_event.set()

        with self.lock:
            if self.ended or self.post is None or not self.post(apply):
                return None
            self.applying.add(done)
        return done

    def _apply(self, settings: Settings) -> None:
        run = self.run
        if run is not None:
            run.configure(settings)

    def stop_accepting(self) -> None:
        """Refuse new calls from now on (the front refuses them already); calls posted
        before are taken in first."""

        def stop() -> None:
            run = self.run
            if run is not None:
                run.core.stop_accepting()

        with self.lock:
            if not self.ended and self.post is not None:
                self.post(stop)

    def stop_soon(self) -> None:
        if self.stop_event is not None and self.post is not None:
            self.post(self._stop)

    def _stop(self) -> None:
        assert self.stop_event is not None
        assert self.steer_event is not None
        self.stop_event.set()
        self.steer_event.set()

    def stop(self, timeout: float | None) -> None:
        """Drain and end the serving thread; wait for that, unless called from inside a
        batch of its own (the serving thread, or a worker thread running fn)."""
        self.stop_soon()
        if threading.current_thread() is not self.thread and _inside.server is not self:
            self.thread.join(timeout)

    def outcome(self, call: ThreadCall) -> Any:
        """The outcome of a woken call, in its caller's thread."""
        if call.err is CLOSED:
            core = self.last_core
            raise closed_error(
                core.cause if core is not None else None,
                "the batched function closed before this call was done",
            )
        return call.outcome()

    # -- the serving thread ------------------------------------------------------------

    def flush(self) -> None:
        """Move the pending calls into the batcher."""
        self.scheduled = False
        run, pending, counts = self.run, self.pending, self.counts
        while pending:
            call, wait = pending.popleft()
            if run is None or not run.core.accepting:
                counts.refused_anywhere(call.n)  # also in a caller's thread (send)
                stopped = run is not None and run.core.stopped
                call.err = BatcherClosed(STOPPED) if stopped else CLOSED
                call.state = DONE
                call.wake()
                continue
            if self.keyed is not None:
                call.state = ROOM  # until its bridge takes it to the batcher
                self.to_bridge.append((call, wait))
                assert self.bridge_event is not None
                self.bridge_event.set()
                continue
            call.core = run.core
            try:
                run.core.submit(call, wait)
            except anyio.WouldBlock as exc:  # QueueFull, counted as rejected
                call.err = exc
                call.state = DONE
                call.wake()

    async def _spawn_bridges(self, tg: TaskGroup) -> None:
        # A loop callback (flush) cannot start tasks: this task does it for it.
        to_bridge, stop = self.to_bridge, self.stop_event
        assert stop is not None
        while True:
            assert self.bridge_event is not None
            await self.bridge_event.wait()
            self.bridge_event = anyio.Event()
            while to_bridge:
                call, wait = to_bridge.popleft()
                if call.state != CANCELLED:
                    tg.start_soon(self._bridge, call, wait)
            if stop.is_set():
                return

    async def _bridge(self, call: ThreadCall, wait: bool) -> None:
        # The keyed path counts this call as it goes; the call itself counts nothing.
        run, keyed = self.run, self.keyed
        assert run is not None
        assert keyed is not None
        scope = self.bridges[call] = anyio.CancelScope()
        try:
            with scope:
                call.out = await keyed(run, call, wait)
        except Exception as exc:
            call.err, call.err_tb = exc, exc.__traceback__
        finally:
            del self.bridges[call]
        if not scope.cancelled_caught:
            call.state = DONE
            call.wake()

    def abandon(self, call: ThreadCall) -> None:
        """Its caller left (cancelled, or interrupted): drop what still waits."""
        call.waiter = None
        scope = self.bridges.get(call)
        if scope is not None:
            scope.cancel()
            return
        if self.keyed is not None and call.state == ROOM:
            # Still queued for its bridge (it has not reached the batcher): drop it there.
            call.state = CANCELLED
            self.counts.left_early(call.n)
            return
        core = call.core
        if core is not None:  # None: refused before it reached a batcher, counted then
            core.abandon(call)
