"""Callers' deadlines in the core: expiry, early dispatch, the time a batch must leave by.

A caller's deadline is its own cancel scopes' effective deadline. It is not read on the
per-item path: reading it costs 0.1-1.5 us a call (asyncio finds the task from the
future, then anyio's table of its scopes), where the whole path costs 2-3 us. The driver
reads it for the calls accepted since its last look (``fresh``), when it asks whether a
batch is due and when it cuts one, and the finite ones go into a heap of ``(deadline,
seq, entry)``. It reads every one of them when the batch would wait (a partial batch: a
deadline may call for an early dispatch), and once any caller of this open batcher has
had a deadline; before that, a full batch reads only its newest caller's, so that a busy
batcher whose callers have no deadlines reads one per batch, not one per call. With
``batched.ByDeadline`` the pool orders by deadline as items arrive, so there it is read
at call time, in the caller's task.

From the heap the core learns (1) which waiting items have a deadline that has passed:
their callers are being cancelled by their own scopes, so they are dropped (counted
cancelled) and never reach ``fn``; (2) when a partial batch must leave so that its
earliest caller gets its result in time: that deadline, less what ``fn`` has recently
taken for a batch of that size (``Cost.estimate``) and a safety margin.
"""

from __future__ import annotations

import math
from heapq import heapify, heappop, heappush
from typing import TYPE_CHECKING, Any

from .calls import QUEUED, owner

if TYPE_CHECKING:
    from .queue import Core

__all__ = ["MARGIN_S", "MARGIN_SHARE", "compact", "dispatch_at", "look"]

# The safety margin of an early dispatch: the batch leaves this long before its
# earliest caller's deadline, beyond what fn is expected to take (and a share of that,
# for a run slower than the recent ones): the hand-back and the caller's wake-up.
MARGIN_S = 0.001
MARGIN_SHARE = 0.25


def look(core: Core, everyone: bool) -> None:
    """Read the deadlines of the calls accepted since the last look: of every one of
    them when ``everyone`` (a partial batch, which would wait), or once one has been
    seen; else of one, the newest (a full batch: only expiry matters, and no deadline
    has been seen yet)."""
    fresh = core.fresh
    if not fresh:
        return
    read = core.deadline_of
    if not (everyone or core.seen or core.edf):
        call = fresh[-1]
        if call.state != QUEUED or read(call) == math.inf:
            # The others are read if they still wait when the batch would wait (those
            # cut meanwhile are let go of as they outnumber what waits); when the cut
            # takes all that waits, none will.
            if core.waiting <= core.batch_size:
                fresh.clear()
            else:
                compact(core)
            return
        core.seen = True
    heap = core.dates
    edf = core.edf
    for call in fresh:
        if call.state != QUEUED:
            continue  # its caller left, or it is settled already
        deadline = call.deadline if edf else read(call)
        if deadline == math.inf:
            continue
        core.seen = True
        entries = call.entries
        if entries is None:
            if call._pool is not None:
                heappush(heap, (deadline, call.seq, call))
            continue
        for entry in entries:
            if entry._pool is not None:
                heappush(heap, (deadline, entry.seq, entry))
    fresh.clear()
    compact(core)


def compact(core: Core) -> None:
    """Let go of calls that left: those not looked at yet, and heap entries cut or
    dropped (they stay until they reach its top), once they outnumber what waits, so
    that memory follows what waits (callers cancelled while every slot is busy)."""
    limit = 2 * core.queued + 2
    fresh = core.fresh
    if fresh is not None and len(fresh) > limit:
        fresh[:] = [
            call
            for call in fresh
            if call.state == QUEUED and (call._pool is not None or call.entries is not None)
        ]
    heap = core.dates
    if len(heap) > limit:
        heap[:] = [node for node in heap if _waits(node[2])]
        heapify(heap)


def _waits(entry: Any) -> bool:
    return entry._pool is not None and owner(entry).state == QUEUED


def _expire(core: Core, now: float) -> None:
    """Drop the waiting items whose deadline has passed: their callers are being
    cancelled by their own scopes (the deadline is read again first: a scope's deadline
    may have moved since the call)."""
    heap = core.dates
    while heap and heap[0][0] <= now:
        _, seq, entry = heappop(heap)
        if not _waits(entry):
            continue
        call = owner(entry)
        deadline = core.deadline_of(call)
        if deadline > now:
            if deadline != math.inf:
                heappush(heap, (deadline, seq, entry))
            continue
        core.abandon(call)


def dispatch_at(core: Core, now: float, everyone: bool) -> float:
    """When the waiting items must leave for their earliest caller to get its result in
    time (``math.inf``: no waiting caller has a deadline); items whose deadline has
    passed are dropped first. ``everyone``: read every new caller's deadline."""
    look(core, everyone)
    heap = core.dates
    if not heap:
        return math.inf
    _expire(core, now)
    while heap and not _waits(heap[0][2]):
        heappop(heap)
    if not heap:
        return math.inf
    size = min(core.waiting, core.batch_size) or 1
    cost = core.counts.cost.estimate(size)
    return heap[0][0] - cost * (1.0 + MARGIN_SHARE) - MARGIN_S
