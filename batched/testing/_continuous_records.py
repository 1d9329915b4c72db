"""What :func:`run_continuous` plays and records: plans in, records out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, final

import attrs

from ._records import CLOSE_KINDS

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._stats import BatchStats

__all__ = [
    "LEAVE_KINDS",
    "ContinuousResult",
    "ContinuousSchedule",
    "ReaderOutcome",
    "ReaderPlan",
    "StepRecord",
    "StepState",
]

#: How a reader stops reading early: ``close`` its stream (``aclose``), ``break`` out of
#: ``async for`` and drop the stream, or read through ``call`` (``await c(item)``).
LEAVE_KINDS: Final = ("close", "break")


def _to_tuple(values: Any) -> tuple[Any, ...]:
    return tuple(values)


def _to_frozenset(values: Any) -> frozenset[int]:
    return frozenset(values)


@final
@attrs.frozen
class StepState:
    """An item's state in :func:`run_continuous`: reader ``reader`` after ``k`` values;
    ``len()`` is ``length``."""

    reader: int
    k: int
    length: int

    def __len__(self) -> int:
        return self.length


@final
@attrs.frozen
class ReaderPlan:
    """One reader in a :class:`ContinuousSchedule`.

    :ivar at_ms: when it calls ``c.stream(...)`` (or ``c(...)``), in ms after the start
    :ivar values: how many values its item emits; the last comes with ``Last``
    :ivar length: its first state's length; each value emitted adds ``growth``
    :ivar fail_at: its item ends with a ``Failure`` at this step of its own (0-based)
    :ivar leave_after: it stops after reading this many values (``None``: reads all)
    :ivar leave_by: how it stops: one of :data:`LEAVE_KINDS`
    :ivar cancel_after_ms: it is cancelled this long after it calls (``None``: never)
    :ivar call: it awaits ``c(item)`` (all values at once) instead of reading a stream
    :ivar priority: the call's ``priority``
    :ivar wait: ``False`` calls with ``wait=False``
    """

    at_ms: float
    values: int = 1
    length: int = 1
    growth: int = 0
    fail_at: int | None = None
    leave_after: int | None = None
    leave_by: str = attrs.field(default="close", validator=attrs.validators.in_(LEAVE_KINDS))
    cancel_after_ms: float | None = None
    call: bool = False
    priority: float = 0
    wait: bool = True


@final
@attrs.frozen
class ContinuousSchedule:
    """What :func:`run_continuous` plays.

    :ivar readers: the readers, each a :class:`ReaderPlan`
    :ivar step_ms: how long each successive step takes (steps beyond: 1 ms)
    :ivar step_raises: the steps (by index) that raise ``PlannedError(step)``
    :ivar close_at_ms: when the owner ends its block early (``None``: once every reader
        has its outcome); ``close_by``: ``exit``, ``cancel`` or ``raise``
    """

    readers: tuple[ReaderPlan, ...] = attrs.field(converter=_to_tuple)
    step_ms: tuple[float, ...] = attrs.field(default=(), converter=_to_tuple)
    step_raises: frozenset[int] = attrs.field(default=frozenset(), converter=_to_frozenset)
    close_at_ms: float | None = None
    close_by: str = attrs.field(default="exit", validator=attrs.validators.in_(CLOSE_KINDS))


@final
@attrs.frozen
class StepRecord:
    """One call of the step function.

    :ivar readers: the reader of each state, in the order the states came
    :ivar lengths: each state's length
    :ivar ends: per state, ``"next"``, ``"last"`` or ``"failure"`` (empty: it raised or
        was cancelled)
    :ivar start_seq: the order of its start among the recorded events; ``end_seq`` of
        its end (its outcomes are handed out then)
    """

    index: int
    readers: tuple[int, ...]
    lengths: tuple[int, ...]
    start_ms: float
    end_ms: float
    ends: tuple[str, ...]
    raised: bool
    cancelled: bool
    start_seq: int
    end_seq: int


@final
@attrs.frozen
class ReaderOutcome:
    """What one reader got.

    :ivar kind: ``"end"`` (read to the end), ``"error"``, ``"left"`` (stopped reading
        by plan), ``"cancelled"``, or ``"missing"`` (no outcome: a hang)
    :ivar got: the values it read, in order
    :ivar sent_seq: when it called; ``left_seq``: when it stopped reading (-1: never)
    """

    index: int
    plan: ReaderPlan
    kind: str
    got: tuple[Any, ...]
    exception: BaseException | None
    sent_seq: int
    left_seq: int


@final
@attrs.frozen
class ContinuousResult:
    """Everything :func:`run_continuous` saw; :func:`check_continuous` judges it.

    :ivar emitted: per reader, the values the step emitted for its item, in order
    :ivar block_ended_seq: when ``async with`` was over, among the recorded events
    :ivar escaped: what left ``async with``, else ``None``
    :ivar close_seq: when the owner's block body ended (-1: never recorded)
    :ivar closed_abnormally: the owner left its block by an exception or a cancellation
    """

    schedule: ContinuousSchedule
    backend: str
    settings: Mapping[str, Any]
    readers: tuple[ReaderOutcome, ...]
    steps: tuple[StepRecord, ...]
    emitted: tuple[tuple[Any, ...], ...]
    stats: BatchStats
    hung: bool
    escaped: BaseException | None
    tasks_left: int
    loop_errors: tuple[str, ...]
    close_seq: int
    block_ended_seq: int
    closed_abnormally: bool
