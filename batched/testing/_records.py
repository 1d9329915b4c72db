"""What a run of :func:`run_schedule` plays and records: plans in, records out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, final

import attrs

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable, Mapping

    from .._stats import BatchStats

__all__ = [
    "CLOSE_KINDS",
    "OUTCOME_KINDS",
    "Arrival",
    "BatchOutcome",
    "BatchRecord",
    "CallerOutcome",
    "PlannedError",
    "PlannedInterrupt",
    "Schedule",
    "ScheduleResult",
    "item_key",
]


#: What one call of the batch function may do in :func:`run_schedule`: return a result
#: per item (``ok``), raise :exc:`PlannedError` (``raise``), return one result too few
#: (``short``) or too many (``long``), return a mapping, set, iterator or ``None``
#: (``wrong_type``), or return ``batched.Failure(PlannedError)`` for the items at even
#: positions of the batch (``item_failure``). A :class:`BatchOutcome` may also be
#: ``base_exception``, which :func:`fn_outcomes` draws only when asked: raise a
#: ``BaseException`` that is not a cancellation (as ``KeyboardInterrupt`` is), which
#: closes the batcher and leaves ``async with``.
OUTCOME_KINDS: Final = ("ok", "raise", "short", "long", "wrong_type", "item_failure")
_ALL_KINDS = (*OUTCOME_KINDS, "base_exception")

# How the owner of the batcher may end its ``async with`` block early (see Schedule).
CLOSE_KINDS: Final = ("exit", "cancel", "raise")


# -- plans -----------------------------------------------------------------------------


def _to_tuple(values: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(values)


@final
class PlannedError(Exception):
    """What a planned ``raise`` batch raises, or what ``item_failure`` gives an item, or
    what the owner's block raises when a :class:`Schedule` closes it by ``raise``.

    :ivar batch: the index of the batch function call (``None``: the owner's block)
    :ivar position: the failing item's position in that batch (``None``: the whole batch)
    """

    def __init__(self, batch: int | None, position: int | None = None) -> None:
        where = "" if position is None else f", item at position {position}"
        what = "the owner's block" if batch is None else f"batch {batch}{where}"
        super().__init__(f"planned failure of {what}")
        self.batch = batch
        self.position = position


@final
class PlannedInterrupt(BaseException):
    """What a planned ``base_exception`` batch raises: not an ``Exception``, not a
    cancellation, as ``KeyboardInterrupt`` is.

    :ivar batch: the index of the batch function call
    """

    def __init__(self, batch: int) -> None:
        super().__init__(f"planned interrupt from batch {batch}")
        self.batch = batch


@final
@attrs.frozen
class Arrival:
    """One caller in a :class:`Schedule`.

    :ivar at_ms: when it calls, in milliseconds after the start
    :ivar items: what it sends: one item calls ``b(item)``; ``many=True`` calls
        ``b.many(items)``. Items must be distinct across a schedule.
    :ivar many: send ``items`` with ``b.many``
    :ivar priority: the ``priority`` of the call
    :ivar cancel_after_ms: cancel the caller this long after it calls (``None``: never)
    :ivar wait: ``False`` calls with ``wait=False`` (``QueueFull`` when there is no room)
    """

    at_ms: float
    items: tuple[Any, ...] = attrs.field(converter=_to_tuple)
    many: bool = False
    priority: float = 0
    cancel_after_ms: float | None = None
    wait: bool = True

    def __attrs_post_init__(self) -> None:
        if not self.many and len(self.items) != 1:
            msg = f"'items' must hold exactly one item unless many=True: {self.items!r}"
            raise ValueError(msg)

    def describe(self) -> str:
        """The call as code, e.g. ``b.many([1, 2]) at 3 ms, cancelled after 2 ms``."""
        call = f"b.many({list(self.items)!r}" if self.many else f"b({self.items[0]!r}"
        extra = "".join(
            [
                f", priority={self.priority!r}" if self.priority else "",
                "" if self.wait else ", wait=False",
            ]
        )
        cancel = (
            "" if self.cancel_after_ms is None else f", cancelled after {self.cancel_after_ms} ms"
        )
        return f"{call}{extra}) at {self.at_ms} ms{cancel}"


@final
@attrs.frozen
class Schedule:
    """The callers :func:`run_schedule` plays, each an :class:`Arrival`.

    :ivar close_at_ms: when the owner ends its ``async with`` block early (``None``: once
        every caller has its outcome); callers may still call afterwards
    :ivar close_by: how: ``exit`` leaves the block normally
        (accepted items are finished), ``cancel`` cancels the owner, ``raise`` raises
        ``PlannedError(None)`` in the block
    """

    arrivals: tuple[Arrival, ...] = attrs.field(converter=_to_tuple)
    close_at_ms: float | None = None
    close_by: str = attrs.field(default="exit", validator=attrs.validators.in_(CLOSE_KINDS))


@final
@attrs.frozen
class BatchOutcome:
    """What one call of the batch function does: wait ``duration_ms``, then ``kind``.

    :ivar kind: one of :data:`OUTCOME_KINDS`, or ``base_exception``
    """

    duration_ms: float = 1.0
    kind: str = attrs.field(default="ok", validator=attrs.validators.in_(_ALL_KINDS))


# -- records ---------------------------------------------------------------------------


@final
@attrs.frozen
class CallerOutcome:
    """What one caller got in a run of :func:`run_schedule`. Times in ms from the start.

    :ivar kind: ``"result"``, ``"error"`` (``QueueFull`` included), ``"cancelled"`` (its
        own cancellation), or ``"missing"`` (no outcome: a hang, or it never called)
    :ivar result: its result (a list for ``many``), else ``None``
    :ivar exception: the exception it got, else ``None``
    :ivar lengths: its items' lengths as the batcher measures them (``None``: length_fn raised)
    :ivar queue_size_before: ``stats.queue_size`` just before the call
    :ivar queue_size_after: ``stats.queue_size`` just after its outcome (-1: not read)
    :ivar sent_seq: the order of the call among the recorded events (see ``ScheduleResult``)
    :ivar done_seq: the order of its outcome among them (-1: none)
    :ivar task: the id of the task it called from (``anyio.get_current_task().id``)
    """

    index: int
    arrival: Arrival
    kind: str
    result: Any
    exception: BaseException | None
    submitted_ms: float
    done_ms: float | None
    lengths: tuple[int | None, ...]
    queue_size_before: int
    queue_size_after: int = -1
    sent_seq: int = -1
    done_seq: int = -1
    task: int | None = None

    @property
    def cancelled(self) -> bool:
        """Whether its own cancellation ended the call."""
        return self.kind == "cancelled"


@final
@attrs.frozen
class BatchRecord:
    """One call of the batch function in a run of :func:`run_schedule`.

    :ivar items: the items it got, in order
    :ivar outcome: the :class:`BatchOutcome` it played
    :ivar results: what it returned per item for ``ok`` and ``item_failure`` (a
        ``batched.Failure`` in a failing slot), else ``None``
    :ivar error: what it raised, else ``None``
    :ivar cancelled: it was cancelled while it ran
    :ivar retry_of: with ``isolate_errors``, the failed call whose items this retries
    :ivar queue_size_at_start: ``stats.queue_size`` as it started
    :ivar queue_size_at_end: ``stats.queue_size`` as it returned or raised (-1: not read)
    :ivar start_seq: the order of its start among the recorded events
    :ivar end_seq: the order of its end among them
    :ivar task: the id of the task that ran it
    """

    index: int
    items: tuple[Any, ...]
    start_ms: float
    end_ms: float
    outcome: BatchOutcome
    results: tuple[Any, ...] | None
    error: BaseException | None
    cancelled: bool
    retry_of: int | None
    queue_size_at_start: int = -1
    queue_size_at_end: int = -1
    start_seq: int = -1
    end_seq: int = -1
    task: int | None = None

    @property
    def finished(self) -> bool:
        """``fn`` returned or raised an ``Exception``: its callers' outcomes follow from it.

        (Not: it was cancelled, or it raised a ``BaseException`` that closes the batcher.)
        """
        return not self.cancelled and (self.error is None or isinstance(self.error, Exception))


@final
@attrs.frozen
class ScheduleResult:
    """Everything :func:`run_schedule` saw; :func:`check_invariants` judges it.

    Times are in milliseconds from the start (any unit will do, if the settings' times
    use it too). Events that share an instant are ordered by their sequence numbers
    (``sent_seq``, ``start_seq``, ...): one counter, read where each was recorded.

    :ivar settings: the batcher's settings (``batch_size``, ``timeout_ms``, ...)
    :ivar escaped: what left ``async with batcher``, else ``None``
    :ivar hung: the virtual one-hour hang guard fired
    :ivar tasks_left: tasks still running after the block, beyond those before it
    :ivar loop_errors: reports to asyncio's exception handler and ``ResourceWarning``\\ s
    :ivar driven: the callers drove a decorated function themselves (no ``async with``)
    :ivar closed_ms: when the owner's block body ended normally and the batcher began to
        drain (``None``: it never did)
    :ivar block_ended_ms: when ``async with`` was over
    :ivar close_seq: the order of the close (normal, or by the owner's error or
        cancellation) among the recorded events (-1: none recorded)
    :ivar owner_cancelled: the owner's cancellation propagated out of ``async with``
    :ivar loop_released: nothing kept the run's event loop alive once the run was over
        (``None``: not known, as after any exception: its traceback keeps the run's
        frames, and they the loop)
    :ivar queue_sizes: ``(seq, ms, stats.queue_size)`` read while every task waited, in
        order; :func:`check_invariants` replays the queue bound's admission rule up to
        each and compares (a stepping driver records them; ``run_schedule`` does not)
    """

    schedule: Schedule
    backend: str
    settings: Mapping[str, Any]
    callers: tuple[CallerOutcome, ...]
    batches: tuple[BatchRecord, ...]
    stats: BatchStats
    hung: bool
    escaped: BaseException | None
    tasks_left: int
    loop_errors: tuple[str, ...]
    driven: bool = False
    closed_ms: float | None = None
    block_ended_ms: float | None = None
    close_seq: int = -1
    owner_cancelled: bool = False
    loop_released: bool | None = None
    queue_sizes: tuple[tuple[int, float, int], ...] = ()


def item_key(item: Any) -> Hashable:
    """What tells items apart: the item if hashable, else its type and repr."""
    try:
        hash(item)
    except TypeError:
        return (1, type(item).__qualname__, repr(item))
    return (0, item)
