"""What a run of :func:`run_schedule` plays and records: plans in, records out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, final

import attrs

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable, Mapping

    from .._stats import BatchStats

__all__ = [
    "OUTCOME_KINDS",
    "Arrival",
    "BatchOutcome",
    "BatchRecord",
    "CallerOutcome",
    "PlannedError",
    "Schedule",
    "ScheduleResult",
    "item_key",
]


#: What one call of the batch function may do in :func:`run_schedule`: return a result
#: per item (``ok``), raise :exc:`PlannedError` (``raise``), return one result too few
#: (``short``) or too many (``long``), return a mapping, set, iterator or ``None``
#: (``wrong_type``), or return ``batched.Failure(PlannedError)`` for the items at even
#: positions of the batch (``item_failure``).
OUTCOME_KINDS: Final = ("ok", "raise", "short", "long", "wrong_type", "item_failure")


# -- plans -----------------------------------------------------------------------------


def _to_tuple(values: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(values)


@final
class PlannedError(Exception):
    """What a planned ``raise`` batch raises, or what ``item_failure`` gives an item.

    :ivar batch: the index of the batch function call
    :ivar position: the failing item's position in that batch (``None``: the whole batch)
    """

    def __init__(self, batch: int, position: int | None = None) -> None:
        where = "" if position is None else f", item at position {position}"
        super().__init__(f"planned failure of batch {batch}{where}")
        self.batch = batch
        self.position = position


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
    """The callers :func:`run_schedule` plays, each an :class:`Arrival`."""

    arrivals: tuple[Arrival, ...] = attrs.field(converter=_to_tuple)


@final
@attrs.frozen
class BatchOutcome:
    """What one call of the batch function does: wait ``duration_ms``, then ``kind``.

    :ivar kind: one of :data:`OUTCOME_KINDS`
    """

    duration_ms: float = 1.0
    kind: str = attrs.field(default="ok", validator=attrs.validators.in_(OUTCOME_KINDS))


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


@final
@attrs.frozen
class ScheduleResult:
    """Everything :func:`run_schedule` saw; :func:`check_invariants` judges it.

    :ivar settings: the batcher's settings (``batch_size``, ``timeout_ms``, ...)
    :ivar escaped: what left ``async with batcher``, else ``None``
    :ivar hung: the virtual one-hour hang guard fired
    :ivar tasks_left: tasks still running after the block, beyond those before it
    :ivar loop_errors: reports to asyncio's exception handler and ``ResourceWarning``\\ s
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


def item_key(item: Any) -> Hashable:
    """What tells items apart: the item if hashable, else its type and repr."""
    try:
        hash(item)
    except TypeError:
        return (1, type(item).__qualname__, repr(item))
    return (0, item)
