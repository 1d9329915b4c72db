"""The cut: the next batch, by the rules, within ``batch_size`` and the length budget.

Rules, around any strategy: (1) overdue items (waited ``max_wait_ms``) leave before every
item that arrived after them; (2) items of small calls before items of large calls (the
core's two pools); (3) the strategy's order (each pool's own ``cut``). The length budget stops
the cut at the first item, in rule order, that does not fit: it stays first for the next
cut, which applies the rules afresh. An item over the whole budget travels alone.

Allowed sizes (``batched.inference``'s ``allowed_batch_sizes``, for compiled models that
run only at a few batch shapes): a batch is padded up to the next allowed size, so the cut
rounds how many ready items it takes to the nearest allowed size (``preferred_size``) and
counts the filler rows in a padded budget (``size_up``).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .queue import Core

__all__ = ["cut_padded", "cut_summed", "preferred_size", "size_up"]


def size_up(sizes: tuple[int, ...], n: int) -> int:
    """The batch size ``n`` items are padded up to: the smallest allowed size >= ``n``
    (``n`` itself past the largest, which a cut never takes)."""
    i = bisect_left(sizes, n)
    return sizes[i] if i < len(sizes) else n


def preferred_size(sizes: tuple[int, ...], n: int) -> int:
    """How many of ``n`` ready items to cut when batches are padded to ``sizes``.

    Round to the nearest allowed size: down when fewer items stay behind than filler rows
    rounding up would add, else up (all ``n``, padded; a tie pads, saving a call). The
    items left behind stay first in line, already due, and arrivals may fill their batch
    before it leaves. This is Triton's ``preferred_batch_size`` (cut the largest preferred
    size that can be formed) bounded by waste: with 21 ready and sizes (8, 16, 32), cut 16
    (5 wait) rather than pad 11 fillers; with 28, pad to 32 rather than leave 12 behind.
    Fewer than the smallest size: all of them, padded. More than the largest: the largest.
    """
    i = bisect_left(sizes, n)
    if i == len(sizes):
        return sizes[-1]
    if i == 0 or sizes[i] == n:
        return n
    down, up = sizes[i - 1], sizes[i]
    return down if n - down < up - n else n


def cut_summed(
    core: Core,
    now: float,
    room: int | None = None,
    budget: float | None = None,
    alone: bool = True,
) -> list[Any]:
    """The cut where the length budget counts summed lengths.

    ``room`` and ``budget`` default to the batcher's ``batch_size`` and
    ``max_batch_length``; a set of items that runs on (``Continuous``) passes what its
    members leave free, and ``alone=False`` while it has members: an item over the budget
    then waits for the set to empty instead of travelling alone.
    """
    if room is None:
        room = core.batch_size
    if budget is None:
        budget = core.max_len
    batch: list[Any] = []
    limit = now - core.max_wait
    while room:
        entry = core.oldest()
        if entry is None or entry.arrival > limit:
            break
        if entry.length > budget:
            if not batch and alone:
                batch.append(entry)  # oversize: it travels alone
                entry._pool.remove(entry)
            room = 0
            break
        entry._pool.remove(entry)
        batch.append(entry)
        room -= 1
        budget -= entry.length
    for pool in (core.small, core.bulk):
        if not room:
            break
        got = pool.cut(room, budget)
        batch += got
        room -= len(got)
        if budget != math.inf:
            budget -= sum(entry.length for entry in got)
        if room and len(pool):
            # The pool stopped on the budget; the whole cut stops with it.
            if not batch and alone:
                batch = pool.cut(1, math.inf)
            break
    for entry in batch:
        entry._pool = None
    core.waiting -= len(batch)
    if core.budget:
        core.waiting_len -= sum([entry.length for entry in batch])
    core.queued -= len(batch)
    return batch


def cut_padded(core: Core, now: float, room: int | None = None) -> list[Any]:
    """The cut where the length budget counts the padded size: longest x items (x the
    allowed batch size they are padded to, when sizes are set: fillers cost too).

    An item fits when the batch with it stays within the budget: with ``k`` items
    taken and the longest ``m`` long, the next may be at most ``budget // (k + 1)``
    long, and none fits once ``m * (k + 1)`` exceeds the budget. Asking the pool for
    one entry within that length keeps its rule: the cut stops at the first item
    (in its order) that does not fit.
    """
    if room is None:
        room = core.batch_size
    budget, sizes = core.max_len, core.sizes
    batch: list[Any] = []
    longest = 0
    limit = now - core.max_wait
    stopped = False
    while room:
        entry = core.oldest()
        if entry is None or entry.arrival > limit:
            break
        k = len(batch) + 1
        if sizes:
            k = size_up(sizes, k)
        if longest * k > budget or entry.length * k > budget:
            if not batch:
                batch.append(entry)  # oversize: it travels alone
                entry._pool.remove(entry)
            stopped = True
            break
        entry._pool.remove(entry)
        batch.append(entry)
        longest = max(longest, entry.length)
        room -= 1
    if not stopped:
        for pool in (core.small, core.bulk):
            while room and len(pool):
                k = len(batch) + 1
                if sizes:
                    k = size_up(sizes, k)
                if longest * k > budget:
                    stopped = True
                    break
                got = pool.cut(1, budget // k)
                if not got:
                    if not batch:
                        batch = pool.cut(1, math.inf)  # oversize: it travels alone
                    stopped = True
                    break
                batch += got
                longest = max(longest, got[0].length)
                room -= 1
            if stopped or not room:
                break
    for entry in batch:
        entry._pool = None
    core.waiting -= len(batch)
    core.waiting_len -= sum([entry.length for entry in batch])
    core.queued -= len(batch)
    core.forget_lengths(batch)
    return batch
