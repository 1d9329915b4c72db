"""``Continuous``: iteration-level (continuous) batching of a step function."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Generic, Literal, TypeVar, final

import anyio.lowlevel

from .._core.counts import Counts
from .._errors import Failure
from .._run.continuous import Stepper
from .._settings import make_settings
from .._step import Last, Next
from .._strategies import Fifo, PriorityStrategy, Strategy
from .steering import Steered
from .submit import closed

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

    from anyio.abc import ObjectReceiveStream

    from .._observe import BatchInfo
    from .._settings import Settings
    from .._stats import BatchStats

__all__ = ["Continuous", "StepFunction"]

S = TypeVar("S")
R = TypeVar("R")

StepOutcomes = Sequence[Next[S, R] | Last[R] | Failure]
StepFunction = (
    Callable[[list[S]], Awaitable[StepOutcomes[S, R]]] | Callable[[list[S]], StepOutcomes[S, R]]
)


def _check_step(step: object) -> None:
    if not callable(step):
        msg = f"'step' must be callable: {step!r}"
        raise TypeError(msg)
    if inspect.isasyncgenfunction(step) or inspect.isgeneratorfunction(step):
        msg = (
            f"'step' must return one outcome per state, not be a generator function: "
            f"{step!r} (return a list of batched.Next / batched.Last / batched.Failure)"
        )
        raise TypeError(msg)


@final
class Continuous(Steered, Generic[S, R]):
    """Iteration-level batching: run ``step`` over the active items again and again.

    ``step(states)`` gets the current state of every active item, in the order they
    joined, and returns one outcome per state: :class:`Next` ``(value, state)`` emits
    ``value`` and goes on from ``state``; :class:`Last` ``(value)`` emits ``value`` and
    ends the item; :class:`Failure` ``(exc)`` ends it with ``exc``. An item's first state
    is the item. Before every step waiting items join (up to ``batch_size`` active in
    all); after it, ended items leave. ``step`` may be an ``async def`` or a plain
    function, which runs in a worker thread. Use it inside ``async with``.

    :param batch_size: the most items active in one step
    :param timeout_ms: with nothing active, how long the first item waits for others
        (0: the first step starts at once; ``"auto"``: chosen from the measured arrival
        rate and cost of a step, as a ``Batcher`` does); while steps run, items join at the next
    :param max_batch_length: the most summed ``length_fn(state)`` of the active items
        when items join (e.g. a KV cache's tokens); an item longer alone runs alone
    :param length_fn: a state's length (default: ``len``; a mapping's first value's
        ``len``; else 1), read again after every step
    :param strategy: the order in which waiting items join (:class:`Fifo`, ...)
    :param max_queue_size: the most items waiting to join; further calls wait for room
        (or raise :exc:`QueueFull` with ``wait=False``)
    :param on_batch: a plain callable, called with a :class:`batched.BatchInfo` after
        each step, in the step loop's task (keep it quick); what it raises is logged

    :meth:`configure` changes ``batch_size``, ``timeout_ms``, ``max_batch_length`` and
    ``max_queue_size`` from the next join on; active items are never evicted.
    """

    __slots__ = ("_counts", "_run", "_settings")

    _tunable = ("batch_size", "timeout_ms", "max_batch_length", "max_queue_size")

    def __init__(
        self,
        step: StepFunction[S, R],
        *,
        batch_size: int = 32,
        timeout_ms: float | Literal["auto"] = 0.0,
        max_batch_length: int | None = None,
        length_fn: Callable[[S], int] | None = None,
        strategy: Strategy | PriorityStrategy = Fifo(),  # noqa: B008 - frozen, shared safely
        max_queue_size: int | None = None,
        on_batch: Callable[[BatchInfo], object] | None = None,
    ) -> None:
        _check_step(step)
        self._settings: Settings = make_settings(
            step,
            batch_size=batch_size,
            timeout_ms=timeout_ms,
            max_batch_length=max_batch_length,
            length_fn=length_fn,
            strategy=strategy,
            max_queue_size=max_queue_size,
            on_batch=on_batch,
        )
        self._run: Stepper | None = None
        self._counts = Counts()

    def __repr__(self) -> str:
        s = self._settings
        state = "open" if self._run is not None else "closed"
        return (
            f"<Continuous {getattr(s.fn, '__qualname__', s.fn)!r} {state} "
            f"batch_size={s.batch_size} timeout_ms={s.timeout_ms}>"
        )

    @property
    def stats(self) -> BatchStats:
        """A snapshot of the counters (see :class:`BatchStats`): ``total_batches`` counts
        steps, ``total_processed`` the states stepped, ``avg_batch_size`` the mean step."""
        run = self._run
        return self._counts.snapshot(run.core.queued if run is not None else 0)

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start the step loop's task group; blocks only until the loop runs.

        :raises RuntimeError: if it is already open
        """
        if self._run is not None:
            msg = "this Continuous is already open: enter it in one `async with` at a time"
            raise RuntimeError(msg)
        run = Stepper(self._settings, self._counts)
        await run.open()
        self._run = run
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Close it.

        On a normal exit this blocks until every accepted item has ended (waiting items
        still join, without waiting out ``timeout_ms``); calls waiting for queue room get
        :exc:`BatcherClosed`. On an exception or cancellation every stream ends with
        :exc:`BatcherClosed` at once (after the values already emitted), a running async
        step is cancelled, a running sync step is waited for, and the exception propagates
        unchanged.
        """
        run = self._run
        if run is None:
            msg = "this Continuous is not open"
            raise RuntimeError(msg)
        try:
            return await run.close(exc)
        finally:
            self._run = None

    # -- calls -------------------------------------------------------------------------

    def stream(self, item: S, *, priority: float = 0, wait: bool = True) -> ObjectReceiveStream[R]:
        """Queue ``item``; the stream of its values, as the steps emit them.

        The stream ends after the item's :class:`Last` value, or raises its error. Close
        it (``async with``, ``aclose()``) or drop it to stop: the item leaves before the
        next step. Its buffer is unbounded: the steps never wait for a slow reader.

        :param priority: lower is more urgent (read by :class:`ByPriority`)
        :param wait: when ``max_queue_size`` is full, raise :exc:`QueueFull` instead of
            waiting for room
        :raises BatcherClosed: if it is not open, or closing
        :raises QueueFull: with ``wait=False``, when there is no room
        """
        run = self._run
        if run is None:
            self._counts.refused_anywhere(1)
            raise closed(None)
        return run.stream(item, priority, wait)

    async def __call__(self, item: S, *, priority: float = 0, wait: bool = True) -> list[R]:
        """Queue ``item``; all of its values once it has ended.

        :raises BatcherClosed: if it is not open, or closes before the item ends
        :raises QueueFull: with ``wait=False``, when there is no room
        :raises Exception: the item's error (its ``Failure``, or the step's exception)
        """
        # A checkpoint on every call, refusals too; but once the call is counted (refused
        # or queued), its caller must get what was counted, not a cancellation.
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            self._counts.left_early(1)  # counted like a call whose caller left at once
            raise
        try:
            values = self.stream(item, priority=priority, wait=wait)
        except Exception:
            await anyio.lowlevel.cancel_shielded_checkpoint()
            raise
        async with values:
            return [value async for value in values]
