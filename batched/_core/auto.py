"""``timeout_ms="auto"``: how long a free slot waits for more items, from what is measured.

Two things are measured, both off the per-item path: the arrival rate ``r`` (items per
second: the core's arrival counter read at each cut, smoothed over about ``TAU``
seconds), and ``fn``'s cost ``a + b·n`` (``a`` per batch, ``b`` per item: ``Cost``, fed
by every run of ``fn``).

The trade-off. A slot is free and ``q`` items wait. Sent now, they finish at ``a + b·q``.
Waiting ``w`` more costs each of them ``w`` (and ``b`` per item that joins): about
``q·w`` in all. What it buys: the ``r·w`` items that arrive meanwhile ride this batch.
Sent now instead, they find the slot busy and wait for it (``a + b·q``, or less if
another slot frees up sooner, in ``f``), then pay a batch's cost of their own: each
saves about ``s - w``, where ``s = min(a, f - b·q)``. Waiting is worth it while
``r·w·(s - w) > q·w·(1 + r·b)``, which gives

- wait only while ``q < r·s / (1 + r·b)``: fewer items wait than arrive during one
  batch's fixed cost. At low load (``r·a < 1``: the next item is not expected before a
  batch would be done) a lone call leaves at once;
- for ``w = (s - q·(1/r + b)) / 2`` (the best ``w`` of that balance), counted from the
  oldest item's arrival, and shorter as more items wait;
- only while this is the last free slot: with another slot free, an item that arrives
  meanwhile starts a batch of its own at once, so waiting buys nothing (``f``: when
  the first other slot is expected to free up, from when its batch was cut and what a
  batch of its size costs);
- not before ``fn`` has run once: with nothing measured, nothing is worth waiting for.

With several slots a second rule, on every free slot (``fill``): batches must keep up.
``k`` slots serve batches of ``n`` at ``k·n / (a + b·n)`` items per second, which keeps
up with ``r`` only for ``n ≥ need = r·a / (k - r·b)`` (every batch, once ``k ≤ r·b``).
Sending fewer spends a slot's fixed cost ``a`` on too few items: under a large ``a`` the
slots all go busy with small batches, and arrivals then queue behind them. So while
fewer than ``need`` items wait, a free slot waits for the ``(need - q) / r`` seconds the
rest take to arrive, counted from the last arrival (so that a wake-up with nothing new
finds the wait over instead of pushing it back). On one slot this rule is not used: the
slot is busy ``a + b·q`` after every cut, and the items arriving meanwhile make the next
batch by themselves.
In a simulation with no batcher cost (Poisson arrivals, 2-8 slots of 10-20 ms, 10-95 %
of the bound) it lowered p50 by up to a fifth against the first rule alone, throughput
within 0.4 %.

Under load the batches fill anyway: while every slot is busy items accumulate, and a
slot that frees up takes them all. The rule decides only the margin, and with one slot
it rarely waits at all (an item that arrives before a batch would end was mostly
queued behind the running batch already): on one slot, sending whenever the slot is
free is close to the best any rule does for latency (in a simulation of the open-loop
benchmark's device, no rule of a grid of waiting rules had a p50 more than about 1 %
lower). With several slots the second rule does the waiting that pays there (see
docs/adaptive-waiting.md for figures).

The cap: never more than ``CAP`` (10 ms) from the oldest item's arrival; the first rule's
wait is also below half of ``fn``'s per-batch cost ``a`` (from the formula). ``max_wait_ms`` and
a full batch act as with a fixed timeout.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from .cost import Cost

__all__ = ["CAP", "TAU", "Auto"]

CAP = 0.010  # seconds: the longest wait "auto" ever chooses
TAU = 0.1  # seconds: the arrival rate follows a change of load within about this


@final
class Auto:
    """The measured arrival rate, and the wait it and ``fn``'s cost give a batch."""

    __slots__ = ("fill_from", "fill_seen", "rate", "seen", "since")

    def __init__(self) -> None:
        self.rate = 0.0  # items per second, smoothed
        self.since: float | None = None  # when the rate was last brought up to date
        self.seen = 0  # the core's arrival count then
        # ``fill`` counts the rest's arrival from the last arrival it saw (at most this
        # late): a wake-up with nothing new finds its wait over, not pushed back.
        self.fill_from = 0.0
        self.fill_seen = -1

    def _rate(self, now: float, seen: int) -> float:
        """The smoothed rate, with what arrived since the last update weighed in by how
        long ago that was (after a long quiet spell, the quiet dominates)."""
        since = self.since
        if since is None:  # before the first cut: nothing measured yet
            return 0.0
        elapsed = now - since
        if elapsed <= 0.0:
            return self.rate
        recent = (seen - self.seen) / elapsed
        return self.rate + (recent - self.rate) * -math.expm1(-elapsed / TAU)

    def observe(self, now: float, seen: int) -> None:
        """Bring the rate up to date (once per cut)."""
        since = self.since
        if since is None or now > since:
            self.rate = self._rate(now, seen)
            self.since = now
            self.seen = seen

    def wait(self, now: float, seen: int, waiting: int, cost: Cost, free_in: float) -> float:
        """Seconds the oldest of ``waiting`` items may wait from its arrival (0: at once),
        when the slot taking them is the last free one and another frees up in
        ``free_in`` seconds (``math.inf``: none runs)."""
        if not cost.runs:
            return 0.0
        per_batch, per_item = cost.line()
        # What an item arriving meanwhile saves by riding along: the wait for a slot
        # (this one, busy a + b·q; or the next to free up) less the per-item part.
        saved = min(per_batch, free_in - per_item * waiting)
        rate = self._rate(now, seen)
        if rate * saved <= waiting * (1.0 + rate * per_item):
            return 0.0
        wait = 0.5 * (saved - waiting * (1.0 / rate + per_item))
        return wait if wait < CAP else CAP

    def fill(
        self, now: float, seen: int, waiting: int, cost: Cost, slots: int, size: int, oldest: float
    ) -> float:
        """Seconds the oldest of ``waiting`` items (arrived at ``oldest``) may wait from
        its arrival so that batches of at most ``size`` keep up with the arrival rate on
        ``slots`` slots (0: they do already). The rest are expected ``(need - q) / r``
        after the last arrival: first seen at ``now`` while ``seen`` (the core's arrival
        count) was new."""
        if not cost.runs:
            return 0.0
        rate = self._rate(now, seen)
        if rate <= 0.0:
            return 0.0
        per_batch, per_item = cost.line()
        spare = slots - rate * per_item  # slot-seconds per second left for fixed costs
        need = float(size) if spare <= 0.0 else min(float(size), rate * per_batch / spare)
        if waiting >= need:
            return 0.0
        if seen != self.fill_seen:
            self.fill_seen = seen
            self.fill_from = now
        wait = self.fill_from - oldest + (need - waiting) / rate
        return wait if wait < CAP else CAP
