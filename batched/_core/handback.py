"""The hand-back: each caller of a finished batch gets its outcome, through the core.

A call of one item is settled here, counted in bulk for the whole batch; a call of many
items is settled when its last item is. These are methods of ``Core`` (assigned there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import Failure
from .calls import DONE, QUEUED, owner

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .queue import Core, Cut

__all__ = ["close_batch", "deliver", "fail", "live"]


def live(core: Core, batch: Cut) -> list[Any]:
    """The batch's entries whose callers are still there."""
    entries = batch.entries
    if batch.abandons != core.abandons:  # a caller left since the cut
        return [entry for entry in entries if owner(entry).state == QUEUED]
    return entries

def deliver(core: Core, entries: list[Any], results: Sequence[Any]) -> None:
    """Hand each entry's caller its result (a ``Failure`` fails that caller alone).

    The calls of one item that get a result are counted in bulk, before the first is
    woken: a caller in another thread (the sync front) may read the stats at once. The
    entries that turn out otherwise are taken back from the count before their caller
    can wake (a call of many items counts itself as its last item settles): a reader
    never sees them counted twice.
    """
    counts = None if core.keyed else core.counts
    if counts is not None:
        counts.completed += len(entries)
    for entry, value in zip(entries, results, strict=True):
        call = entry._call
        if call is None:  # a call of one item: settled here, counted above
            if entry.state == QUEUED:
                if type(value) is Failure:
                    if counts is not None:
                        counts.completed -= 1
                    exc = value.exception
                    entry.put_error(0, exc, exc.__traceback__)
                else:
                    entry.state = DONE
                    entry.deliver(value)
            elif counts is not None:
                counts.completed -= 1
        else:
            if counts is not None:
                counts.completed -= 1
            if call.state == QUEUED:
                if type(value) is Failure:
                    exc = value.exception
                    call.put_error(entry._index, exc, exc.__traceback__)
                else:
                    call.put_result(entry._index, value)


def fail(core: Core, entries: list[Any], error: BaseException) -> None:
    """Every caller of ``entries`` gets ``error``."""
    tb = error.__traceback__
    for entry in entries:
        call = entry._call or entry
        if call.state == QUEUED:
            call.put_error(entry._index, error, tb)

def close_batch(core: Core, batch: Cut) -> None:
    """A batch that cannot finish (its slot was cancelled): ``BatcherClosed``. A call
    of many items is settled whole: its items elsewhere are dropped (those waiting
    leave the pools, those in other running batches are skipped)."""
    withdrawn = False
    for entry in batch.entries:
        call = owner(entry)
        if call.state == QUEUED:
            call.fail_closed()
            if call.entries is not None:
                core.withdraw(call)
                withdrawn = True
    if withdrawn:
        core.abandons += 1
        if core.room and core.accepting:
            core.grant_room()
