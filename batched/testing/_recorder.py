"""What ``run_schedule`` writes down while a schedule plays, and the records it makes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ._records import BatchRecord, CallerOutcome, item_key

if TYPE_CHECKING:
    from collections.abc import Hashable

    from ._records import Arrival, BatchOutcome

__all__ = ["BatchNotes", "CallerNotes", "current_run", "freeze_batches", "running_tasks"]


def running_tasks() -> int:
    """How many tasks exist now, on asyncio or trio."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # not asyncio
        import trio.lowlevel

        return trio.lowlevel.current_statistics().tasks_living


def current_run() -> object:
    """What identifies the running event loop: asyncio's loop, or trio's run token."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # trio
        import trio.lowlevel

        return trio.lowlevel.current_trio_token()


class CallerNotes:
    """One caller, as it goes (times in µs)."""

    def __init__(self, index: int, arrival: Arrival) -> None:
        self.index, self.arrival = index, arrival
        self.kind = "missing"
        self.result: Any = None
        self.exception: BaseException | None = None
        self.submitted = -1  # µs
        self.done: int | None = None
        self.q_before = self.q_after = self.sent_seq = self.done_seq = -1
        self.lengths: tuple[int | None, ...] = ()
        self.task: int | None = None

    def freeze(self) -> CallerOutcome:
        return CallerOutcome(
            index=self.index,
            arrival=self.arrival,
            kind=self.kind,
            result=self.result,
            exception=self.exception,
            submitted_ms=self.submitted / 1000,
            done_ms=None if self.done is None else self.done / 1000,
            lengths=self.lengths,
            queue_size_before=self.q_before,
            queue_size_after=self.q_after,
            sent_seq=self.sent_seq,
            done_seq=self.done_seq,
            task=self.task,
        )


class BatchNotes:
    """One call of ``fn``, as it goes (times in µs)."""

    def __init__(
        self, index: int, items: tuple[Any, ...], outcome: BatchOutcome, start: int, seq: int
    ) -> None:
        self.index, self.items, self.outcome = index, items, outcome
        self.start, self.start_seq = start, seq  # µs
        self.end, self.end_seq = start, -1
        self.results: tuple[Any, ...] | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.q_start = self.q_end = -1
        self.task: int | None = None


def freeze_batches(batches: list[BatchNotes], isolate: bool) -> tuple[BatchRecord, ...]:
    records: list[BatchRecord] = []
    seen: dict[Hashable, int] = {}  # item -> the latest call that got it
    for rec in batches:
        keys = [item_key(item) for item in rec.items]
        retry_of = seen.get(keys[0]) if keys else None
        if retry_of is not None:
            prev = batches[retry_of]
            prev_keys = {item_key(item) for item in prev.items}
            legit = isolate and isinstance(prev.error, Exception) and len(prev.items) > 1
            if not (legit and prev_keys.issuperset(keys)):
                retry_of = None
        seen.update((key, rec.index) for key in keys)
        records.append(
            BatchRecord(
                index=rec.index,
                items=rec.items,
                start_ms=rec.start / 1000,
                end_ms=rec.end / 1000,
                outcome=rec.outcome,
                results=rec.results,
                error=rec.error,
                cancelled=rec.cancelled,
                retry_of=retry_of,
                queue_size_at_start=rec.q_start,
                queue_size_at_end=rec.q_end,
                start_seq=rec.start_seq,
                end_seq=rec.end_seq,
                task=rec.task,
            )
        )
    return tuple(records)
