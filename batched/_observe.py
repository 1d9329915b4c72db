"""``on_batch``: what a driver reports about each finished batch.

A driver calls :func:`report` once per batch, after its outcomes were handed back, and
only when ``on_batch`` is set: nothing here is on the per-item path, and a batcher
without ``on_batch`` pays one attribute test per batch. A callback that raises is
logged and batching goes on.
"""

from __future__ import annotations

import inspect
import logging
from contextvars import Context
from typing import TYPE_CHECKING, Any, final

import attrs

from ._core.calls import CANCELLED, DONE
from ._core.cut import size_up
from ._errors import Failure

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["BatchInfo", "OutcomeCounts", "notify", "report", "report_step", "tally"]

logger = logging.getLogger("batched")


@final
@attrs.frozen
class OutcomeCounts:
    """How a batch's items came out, counted by item.

    :ivar completed: items that got a result from the batch
    :ivar failed: items that got an error (``fn`` raised or returned a wrong shape, or a
        ``batched.Failure`` slot)
    :ivar cancelled: items whose caller had left by the time the batch was handed back
        (their result, if any, was dropped)
    """

    completed: int = 0
    failed: int = 0
    cancelled: int = 0


@final
@attrs.frozen
class BatchInfo:
    """One finished batch, as ``on_batch`` receives it.

    :ivar size: the items the batch function (or the consumer of a pulled batch) got
    :ivar reason: why the batch was cut: ``"full"``, ``"budget"``, ``"overdue"``,
        ``"deadline"``, ``"timeout"`` or ``"closing"`` (see :attr:`batched.Batch.reason`)
    :ivar started: when the batch started, in the clock of ``anyio.current_time()``
        (for a pulled batch: when it was cut)
    :ivar duration_s: seconds from ``started`` until its outcomes were handed back
    :ivar waits_s: each item's wait from its arrival until ``started``, in item order
    :ivar outcome: a :class:`OutcomeCounts`: completed, failed and cancelled items
    :ivar padded_size: ``batched.inference``: the padded size the model got, longest
        row x rows, each rounded up to the next of ``allowed_lengths`` and
        ``allowed_batch_sizes`` when set (filler rows included); None for other batchers
    :ivar waiting: items accepted and still waiting when the batch was cut
    :ivar contexts: each item's caller's :class:`contextvars.Context` at call time
        (as :attr:`batched.Batch.contexts`), to find its trace span or request id

    For :class:`batched.Continuous` a batch is a step: ``size`` items were stepped;
    ``waits_s`` holds only the items that joined at this step (each item's wait counts
    once); ``outcome`` counts the items that ended at it (the others go on); ``reason``
    is ``"full"`` (``batch_size`` items stepped), ``"budget"`` (items left waiting by the
    length budget), ``"closing"`` or ``"timeout"`` (the step did not wait for more).
    """

    size: int
    reason: str
    started: float
    duration_s: float
    waits_s: tuple[float, ...]
    outcome: OutcomeCounts
    padded_size: int | None = None
    waiting: int = 0
    contexts: tuple[Context, ...] = attrs.field(default=(), repr=False, eq=False)


def tally(entries: Sequence[Any], results: Sequence[Any] | None, error: object) -> list[int]:
    """``[completed, failed]`` among ``entries`` whose caller is still there, as handed
    back: ``results`` (checked: a list or tuple; a ``Failure`` slot fails its item) or
    ``error`` for all."""
    # Comprehensions, and no owner() call per entry: this runs once per batch, for every
    # item, whenever on_batch is set.
    present = [(entry._call or entry).state != CANCELLED for entry in entries]
    if results is None:
        return [0, sum(present) if error is not None else 0]
    failures = [type(result) is Failure for result in results]
    if not any(failures):
        return [sum(present), 0]
    failed = sum([here and failure for here, failure in zip(present, failures, strict=True)])
    return [sum(present) - failed, failed]


def report(
    on_batch: Callable[[BatchInfo], object],
    entries: Sequence[Any],
    reason: str,
    started: float,
    ended: float,
    waiting: int,
    padded: tuple[int, ...] | None,
    counted: list[int],
) -> None:
    """Call ``on_batch`` with the batch's :class:`BatchInfo`; log what it raises.

    ``padded``: None, or (``batched.inference``) the allowed batch sizes the rows are
    padded up to (empty: none); an entry's length is its row's allowed length already.
    """
    try:
        size = len(entries)
        completed, failed = counted
        info = BatchInfo(
            size=size,
            reason=reason,
            started=started,
            duration_s=ended - started,
            waits_s=tuple([started - entry.arrival for entry in entries]),
            outcome=OutcomeCounts(completed, failed, size - completed - failed),
            padded_size=(
                None
                if padded is None
                else max([entry.length for entry in entries]) * size_up(padded, size)
            ),
            waiting=waiting,
            contexts=_contexts(entries),
        )
    except Exception:
        logger.exception("on_batch not called: its BatchInfo could not be made")
        return
    notify(on_batch, info)


def report_step(
    on_batch: Callable[[BatchInfo], object],
    members: Sequence[Any],
    joined: Sequence[Any],
    reason: str,
    started: float,
    ended: float,
    waiting: int,
) -> None:
    """Call ``on_batch`` with a ``Continuous`` step's :class:`BatchInfo`: ``members``
    were stepped, ``joined`` (among them) joined for this step. Read after the step's
    hand-out: an item that ended at this step is DONE (with an error if it failed) or
    CANCELLED (its reader left); the others go on."""
    outcomes = [0, 0, 0]  # completed, failed, cancelled
    for member in members:
        state = member.state
        if state == DONE:
            outcomes[member.err is not None] += 1
        elif state == CANCELLED:
            outcomes[2] += 1
    info = BatchInfo(
        size=len(members),
        reason=reason,
        started=started,
        duration_s=ended - started,
        waits_s=tuple([started - member.arrival for member in joined]),
        outcome=OutcomeCounts(*outcomes),
        waiting=waiting,
        contexts=_contexts(members),
    )
    notify(on_batch, info)


def _contexts(entries: Sequence[Any]) -> tuple[Context, ...]:
    return tuple([(entry._call or entry).ctx or Context() for entry in entries])


def notify(on_batch: Callable[[BatchInfo], object], info: BatchInfo) -> None:
    """``on_batch(info)``; what it raises (or an awaitable it returns) is logged."""
    try:
        out = on_batch(info)
        if inspect.isawaitable(out):
            if inspect.iscoroutine(out):
                out.close()  # never awaited: say so once, not as a RuntimeWarning
            msg = f"on_batch returned an awaitable, which is not awaited: {on_batch!r}"
            raise TypeError(msg)
    except Exception:
        logger.exception("on_batch raised (batching goes on): %r", on_batch)
