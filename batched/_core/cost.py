"""How long ``fn`` takes for a batch of ``n`` items, learned from its recent runs.

The model is a line, ``seconds = per_batch + per_item * n``, fitted by least squares
in which each run weighs ``DECAY`` times less than the next one: the estimate follows a
model whose speed changes (a warm-up, a shared GPU) within a few dozen batches, and one
slow run moves it only a little. It is fed once per run of ``fn`` (off the per-item
path) and read when a batch's wait is chosen: for a caller's deadline (issue 16) and for
``timeout_ms="auto"``.

While every run had (nearly) the same size the slope is unknown; the estimate then
takes the whole cost as per batch for fewer items and scales it up for more, which errs
on the slow side either way: a caller with a deadline is better served early than late.
"""

from __future__ import annotations

from typing import final

__all__ = ["Cost"]

# Weight of a run relative to the next one: about the last 1 / (1 - DECAY) = 32 runs count.
DECAY = 0.97


@final
class Cost:
    """An exponentially weighted least-squares line through (size, seconds) of ``fn``'s runs."""

    __slots__ = ("runs", "w", "wx", "wxx", "wxy", "wy")

    def __init__(self) -> None:
        self.runs = 0  # runs seen (not decayed): nothing is known before the first
        self.w = 0.0  # summed weights
        self.wx = 0.0  # weighted sums of size, seconds, size squared, size times seconds
        self.wy = 0.0
        self.wxx = 0.0
        self.wxy = 0.0

    def add(self, size: int, seconds: float) -> None:
        """``fn`` ran once over ``size`` items for ``seconds``."""
        if size <= 0 or not seconds >= 0.0:  # also NaN; a clock never runs backwards here
            return
        d = DECAY
        x = float(size)
        self.runs += 1
        self.w = self.w * d + 1.0
        self.wx = self.wx * d + x
        self.wy = self.wy * d + seconds
        self.wxx = self.wxx * d + x * x
        self.wxy = self.wxy * d + x * seconds

    def line(self) -> tuple[float, float]:
        """``(per_batch, per_item)`` seconds, each at least 0; ``(0.0, 0.0)`` before the
        first run. Sizes too alike to tell them apart give ``(mean seconds, 0.0)``."""
        w = self.w
        if w == 0.0:
            return 0.0, 0.0
        mx = self.wx / w
        my = self.wy / w
        var = self.wxx / w - mx * mx
        # Less than a tenth of an item of spread: no slope can be read from it.
        if var <= 0.01 * max(1.0, mx):
            return my, 0.0
        slope = (self.wxy / w - mx * my) / var
        if slope < 0.0:  # noise, or bigger batches ran on a warmer model: take it flat
            return my, 0.0
        intercept = my - slope * mx
        if intercept < 0.0:  # the line through the origin's side: all cost is per item
            return 0.0, my / mx
        return intercept, slope

    def estimate(self, size: int) -> float:
        """Seconds ``fn`` is expected to take for ``size`` items (0.0 before any run)."""
        w = self.w
        if w == 0.0:
            return 0.0
        per_batch, per_item = self.line()
        if per_item == 0.0:
            # No slope known: as slow as seen, and proportionally slower for more items
            # than the runs had.
            mx = self.wx / w
            return per_batch * max(1.0, size / mx)
        return per_batch + per_item * size
