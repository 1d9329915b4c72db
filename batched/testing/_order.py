"""The order of the cut (invariant 7): overdue items, small calls, the strategy, arrival.

Only for the built-in strategies (``Fifo``, ``ByLength``, ``ByPriority``), whose keys the
checks know. Arrival order is the order of the calls (``sent_seq``): a call waiting for
room is granted in that order and makes later calls wait too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._records import item_key
from ._view import fail, us

if TYPE_CHECKING:
    from ._records import BatchRecord
    from ._view import View

__all__ = ["check_arrival_order", "check_rule_order"]


def check_rule_order(v: View) -> None:
    """7 (the rules of the cut): overdue first, then small calls, then the strategy.

    For a batch starting at ``d`` and an item x certainly in the pool at the cut
    (accepted when sent, sent before ``d``, in no batch started by ``d``, its caller
    still there after ``d``, not dropped for its deadline by then), no item y of the
    batch may come after x in rule order:

    - x had waited more than ``max_wait_ms`` (overdue) and y arrived after x;
    - y had not waited ``max_wait_ms`` even counted from its sending (so it was cut by
      the strategy, not as overdue) and x ranks before y: a small call's item before a
      larger call's, then the strategy's key, then arrival.

    A cut never skips an item: it stops at the first that does not fit. Only before an
    abnormal close.
    """
    if not v.ordered:
        return
    for batch in v.top:
        d = us(batch.start_ms)
        if v.t_abn is not None and d >= v.t_abn:
            continue
        pool = [
            (c, j)
            for c in v.r.callers
            if v.accepted_at_once(c)
            and c.done_ms is not None
            and us(c.submitted_ms) < d < us(c.done_ms)
            for j, item in enumerate(c.arrival.items)
            if not v.dispatched_by(item, d) and not v.dropped_by(c, item, d)
        ]
        for y in batch.items:
            yc, yj = v.owner[item_key(y)]
            y_sent = us(yc.submitted_ms)
            y_rank = v.rank(yc, yj)
            y_fresh = d - y_sent < v.max_wait
            for xc, xj in pool:
                x = xc.arrival.items[xj]
                x_sent = us(xc.submitted_ms)
                if d - x_sent > v.max_wait and (xc.sent_seq, xj) < (yc.sent_seq, yj):
                    fail(
                        f"batch {batch.index} at {batch.start_ms} ms took item {y!r} (sent "
                        f"at {y_sent / 1000} ms) over the overdue item {x!r} sent at "
                        f"{x_sent / 1000} ms"
                    )
                if y_fresh and v.rank(xc, xj) < y_rank:
                    fail(
                        f"batch {batch.index} at {batch.start_ms} ms took item {y!r} (rank "
                        f"{y_rank}) before item {x!r} (rank {v.rank(xc, xj)}) that waited"
                    )


def check_arrival_order(v: View) -> None:
    """7: items with one key leave in arrival order, also after a budget deferral.

    The key is (small call or not, strategy key): the small-call rule orders the two
    classes, the strategy orders keys, overdue items go in arrival order and are older
    than every item with the same key behind them, and a cut stops at (never skips) an
    item over the budget. Batches that start at one instant were cut in an order the
    record cannot show: they are put in the order of their earliest item, which a
    correct sequence of cuts satisfies.
    """
    if not v.ordered:
        return
    groups: dict[Any, list[tuple[BatchRecord, tuple[int, int]]]] = {}
    for batch in v.top:
        for item in batch.items:
            c, j = v.owner[item_key(item)]
            groups.setdefault(v.key(c, j), []).append((batch, (c.sent_seq, j)))
    for key, members in groups.items():
        per_batch: dict[int, list[tuple[int, int]]] = {}
        starts: dict[int, float] = {}
        for batch, order in members:
            per_batch.setdefault(batch.index, []).append(order)
            starts[batch.index] = batch.start_ms
        sequence: list[tuple[int, int]] = []
        for index in sorted(per_batch, key=lambda i: (starts[i], min(per_batch[i]))):
            sequence += per_batch[index]
        if sequence != sorted(sequence):
            fail(
                f"key {key}: items left out of arrival order: "
                f"{[(index, per_batch[index]) for index in sorted(per_batch)]}"
            )
